/**
 * A drain whose grace period runs out mid-answer: the call ends with UNAVAILABLE SHUTTING_DOWN and a
 * retry delay of 0 (clients repeat it on another replica at once), not the transport's CANCELLED,
 * which a client takes for its own cancel; the request id still comes back, and the worker stops.
 */
import { credentials, Metadata, status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import { LanguageServiceClient } from '../gen/vlm/v1/language_service';
import { decodeStatusDetails } from '../services/common/status';
import { pairConfig, recordingLogger, request, shapesImage, type LogLine } from './reliability-helpers';

describe('a drain that runs out while a call is answered', () => {
  it('ends the call UNAVAILABLE SHUTTING_DOWN after the deltas it sent, with its request id', async () => {
    const vision = await startVisionService(pairConfig({}), { port: 0 });
    const base = pairConfig({ visionTarget: vision.address });
    const lines: LogLine[] = [];
    const language = await startLanguageService({ ...base, rpc: { ...base.rpc, shutdownGraceMs: 0 } }, { port: 0, log: recordingLogger(lines, 'language') });
    const client = new LanguageServiceClient(language.address, credentials.createInsecure());
    try {
      const metadata = new Metadata();
      metadata.set('x-request-id', 'drained-mid-answer');
      const call = client.generate(request(await shapesImage(), { maxTokens: 200 }), metadata);
      let deltas = 0;
      let stopped: Promise<unknown> | undefined;
      const error = await new Promise<ServiceError | null>((resolve) => {
        call.on('data', (m: { part?: { $case: string } }) => {
          if (m.part?.$case !== 'delta') return;
          deltas++;
          stopped ??= language.stop(); // mid-answer, with no grace at all: the rest cannot be answered
        });
        call.on('error', (e: ServiceError) => resolve(e));
        call.on('end', () => resolve(null));
      });
      await stopped;
      expect(deltas).toBeGreaterThan(0);
      expect(error?.code).toBe(GrpcCode.UNAVAILABLE);
      expect(decodeStatusDetails(error!.metadata)).toMatchObject({ reason: 'SHUTTING_DOWN', retryDelayMs: 0 });
      expect(error?.metadata.get('x-request-id')).toEqual(['drained-mid-answer']);
      expect(lines.some((l) => l.msg === 'grace period over; ending calls still in flight' && l['ended'] === 1)).toBe(true);
    } finally {
      client.close();
      await language.stop();
      await vision.stop();
    }
  }, 30_000);
});
