/**
 * Must show: a burst larger than the language pool's places is refused before its vision encodes.
 * A request holds its place in the pool (a worker or the queue) from before its vision hop until its
 * job takes it, so the calls that arrive while the places are held are refused at their headers with
 * QUEUE_FULL, and vision encodes exactly the images of the requests that are answered: none is
 * encoded only to be refused once it comes back (and then again on another replica by the client's retry).
 */
import { credentials, status as GrpcCode } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LanguageServiceClient } from '../gen/vlm/v1/language_service';
import type { RunningService } from '../services/common/lifecycle';
import { decodeStatusDetails } from '../services/common/status';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import { ask, pairConfig, recordingLogger, request, shapesImage, type LogLine } from './reliability-helpers';

describe('a burst at a language replica with one worker and a queue of one', () => {
  let vision: RunningService;
  let language: RunningService;
  let client: LanguageServiceClient;
  const visionLog: LogLine[] = [];

  beforeAll(async () => {
    vision = await startVisionService(pairConfig(), { port: 0, log: recordingLogger(visionLog, 'vision') });
    language = await startLanguageService(pairConfig({ visionTarget: vision.address, queueSize: 1 }), { port: 0, log: recordingLogger([], 'language') });
    client = new LanguageServiceClient(language.address, credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    await language?.stop();
    await vision?.stop();
  });

  it('has at least its two places answered, the rest refused QUEUE_FULL, and costs vision one encode per answer', async () => {
    const image = await shapesImage();
    const outcomes = await Promise.all(Array.from({ length: 8 }, () => ask(client, request(image))));
    const answered = outcomes.filter((o) => o.error === null);
    const refused = outcomes.filter((o) => o.error !== null);
    expect(answered.length).toBeGreaterThanOrEqual(2);
    expect(refused.length).toBeGreaterThan(0);
    for (const o of refused) expect([o.error!.code, decodeStatusDetails(o.error!.metadata).reason]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'QUEUE_FULL']);
    const encodes = visionLog.filter((l) => l['msg'] === 'call' && l['method'] === '/vlm.v1.VisionService/Encode');
    expect(encodes.length).toBe(answered.length);
  });
});
