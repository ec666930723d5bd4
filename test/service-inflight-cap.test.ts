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
import { collect, eventually, partialMessage, rawCall } from './service-helpers';
import type { RunningService } from '../services/common/lifecycle';

function capped(cap: number) {
  const base = pairConfig({ visionTarget: '127.0.0.1:1' });
  return { ...base, rpc: { ...base.rpc, maxInFlightCalls: cap } };
}

/** Opens a call of `path` whose 1000-byte request never finishes arriving; it holds a place until closed. */
function halfSent(address: string, path: string): () => void {
  const session = connect(`http://${address}`);
  rawCall(session, path, { write: partialMessage(1000, 10) });
  return () => session.destroy();
}

/** What the test asks of one service: its own method, GetModelInfo, and closing the client. */
interface Side {
  readonly start: () => Promise<RunningService>;
  readonly path: string;
  readonly connect: (address: string) => { ownCall(): Promise<ServiceError | null>; modelInfo(): Promise<ServiceError | null>; close(): void };
}

const modelInfoOf = (client: { getModelInfo(req: object, cb: (err: ServiceError | null) => void): unknown }) => new Promise<ServiceError | null>((resolve) => client.getModelInfo({}, (err) => resolve(err)));

const SIDES: Record<'vision' | 'language', Side> = {
  vision: {
    start: () => startVisionService(capped(1), { port: 0 }),
    path: '/vlm.v1.VisionService/Encode',
    connect: (address) => {
      const client = new VisionServiceClient(address, credentials.createInsecure());
      return {
        ownCall: async () => (await collect(client.encode({ image: await shapesImage(), policy: undefined, limits: undefined }))).error,
        modelInfo: () => modelInfoOf(client),
        close: () => client.close(),
      };
    },
  },
  language: {
    start: () => startLanguageService(capped(1), { port: 0 }),
    path: '/vlm.v1.LanguageService/Generate',
    connect: (address) => {
      const client = new LanguageServiceClient(address, credentials.createInsecure());
      return {
        ownCall: async () => (await ask(client, request(await shapesImage()))).error,
        modelInfo: () => modelInfoOf(client),
        close: () => client.close(),
      };
    },
  },
};

describe('the in-flight cap of the services', () => {
  it.each(['vision', 'language'] as const)('%s: refuses a second call of its own method past a cap of 1, and still answers GetModelInfo up to twice the cap', async (name) => {
    const side = SIDES[name];
    const service = await side.start();
    const client = side.connect(service.address);
    const close = halfSent(service.address, side.path);
    try {
      await eventually(() => service.activeCalls() === 1);
      const refused = await client.ownCall();
      expect([refused?.code, refused?.details]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'this replica is at its limit of 1 calls in flight (--max-inflight-calls); retry later']);
      expect(await client.modelInfo()).toBeNull();
      // GetModelInfo passes the cap only up to twice it: a second one still arriving holds that place.
      const closeInfo = halfSent(service.address, side.path.replace(/\/[A-Za-z]+$/, '/GetModelInfo'));
      try {
        await eventually(() => service.activeCalls() === 2);
        expect((await client.modelInfo())?.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
      } finally {
        closeInfo();
      }
    } finally {
      close();
      client.close();
      await service.stop();
    }
  });
});
