/**
 * The in-flight cap as both services wire it (--max-inflight-calls): a call counts from its headers,
 * so one whose request is still arriving holds a place; past the cap the service's own method is
 * refused at its headers, while GetModelInfo, which clients call to learn what to send, is answered.
 */
import { connect } from 'node:http2';
import { credentials, status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import { LanguageServiceClient } from '../gen/vlm/v1/language_service';
import { VisionServiceClient } from '../gen/vlm/v1/vision_service';
import { ask, pairConfig, request, shapesImage } from './reliability-helpers';
import { collect, eventually } from './service-helpers';

function capped(cap: number) {
  const base = pairConfig({ visionTarget: '127.0.0.1:1' });
  return { ...base, rpc: { ...base.rpc, maxInFlightCalls: cap } };
}

/** Opens a call of `path` whose 1000-byte request never finishes arriving; it holds a place until closed. */
function halfSent(address: string, path: string): () => void {
  const session = connect(`http://${address}`);
  const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' });
  const frame = Buffer.alloc(15);
  frame.writeUInt32BE(1000, 1);
  stream.write(frame);
  stream.on('error', () => undefined);
  return () => session.destroy();
}

describe('the in-flight cap of the services', () => {
  it('vision: refuses a second Encode past a cap of 1, and still answers GetModelInfo', async () => {
    const vision = await startVisionService(capped(1), { port: 0 });
    const client = new VisionServiceClient(vision.address, credentials.createInsecure());
    const close = halfSent(vision.address, '/vlm.v1.VisionService/Encode');
    try {
      await eventually(() => vision.activeCalls() === 1);
      const refused = (await collect(client.encode({ image: await shapesImage(), policy: undefined, limits: undefined }))).error;
      expect([refused?.code, refused?.details]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'this replica is at its limit of 1 calls in flight (--max-inflight-calls); retry later']);
      const info = await new Promise<ServiceError | null>((resolve) => client.getModelInfo({}, (err) => resolve(err)));
      expect(info).toBeNull();
    } finally {
      close();
      client.close();
      await vision.stop();
    }
  });

  it('language: refuses a second Generate past a cap of 1, and still answers GetModelInfo', async () => {
    const language = await startLanguageService(capped(1), { port: 0 });
    const client = new LanguageServiceClient(language.address, credentials.createInsecure());
    const close = halfSent(language.address, '/vlm.v1.LanguageService/Generate');
    try {
      await eventually(() => language.activeCalls() === 1);
      const refused = (await ask(client, request(await shapesImage()))).error;
      expect([refused?.code, refused?.details]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'this replica is at its limit of 1 calls in flight (--max-inflight-calls); retry later']);
      const info = await new Promise<ServiceError | null>((resolve) => client.getModelInfo({}, (err) => resolve(err)));
      expect(info).toBeNull();
    } finally {
      close();
      client.close();
      await language.stop();
    }
  });
});
