/**
 * A service that has lost every inference worker says so through grpc.health.v1, so Kubernetes
 * takes it out of its Service and, if no replacement starts, restarts it; it serves again once one does.
 * A worker that dies mid-request fails only that request.
 */
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { startVisionService } from '../services/vision/server';
import { credentials, status as GrpcCode } from '@grpc/grpc-js';
import { VisionServiceClient } from '../gen/vlm/v1/vision_service';
import { decodeStatusDetails } from '../services/common/status';
import { collect, eventually, healthStatus } from './service-helpers';
import { pairConfig, recordingLogger, shapesImage, type LogLine } from './reliability-helpers';

const RANDOM_BUNDLE = path.resolve(__dirname, 'fixtures/random-bundle');

describe('a service whose only worker dies', () => {
  it('stays SERVING while the replacement starts (a restart can take minutes on a GPU: liveness must not fire)', async () => {
    const lines: LogLine[] = [];
    const service = await startVisionService({ ...pairConfig({}) }, { port: 0, log: recordingLogger(lines, 'vision') });
    try {
      const { slots } = service.backend.pool as unknown as { slots: Array<{ worker: Worker }> };
      await slots[0]!.worker.terminate();
      await eventually(() => service.backend.pool.stats.workers === 0, 5000, 5);
      // Asked again and again until the replacement has loaded.
      const statuses: string[] = [];
      for (const until = Date.now() + 45_000; service.backend.pool.stats.workers === 0 && Date.now() < until; ) statuses.push(await healthStatus(service.address));
      expect(service.backend.pool.stats.workers).toBe(1);
      expect(statuses.length).toBeGreaterThan(0);
      expect(new Set(statuses)).toEqual(new Set(['SERVING']));
      expect(lines.some((l) => l.level === 'error' && l.msg === 'the inference pool cannot run requests: NOT_SERVING')).toBe(false);
    } finally {
      await service.stop();
    }
  }, 60_000);
});

describe('a service whose only worker dies and cannot be replaced', () => {
  it('reports NOT_SERVING while no worker runs, and SERVING again once a replacement starts', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'vlm-worker-loss-'));
    await cp(RANDOM_BUNDLE, dir, { recursive: true });
    const lines: LogLine[] = [];
    const config = pairConfig({});
    const service = await startVisionService({ ...config, model: { ...config.model, dir } }, { port: 0, log: recordingLogger(lines, 'vision') });
    try {
      expect(await healthStatus(service.address)).toBe('SERVING');
      // The bundle goes away, so the replacement cannot load; then the worker dies.
      await rm(dir, { recursive: true, force: true });
      const { slots } = service.backend.pool as unknown as { slots: Array<{ worker: Worker }> };
      await slots[0]!.worker.terminate();
      await eventually(async () => (await healthStatus(service.address)) === 'NOT_SERVING', 10_000, 100);
      expect(lines.some((l) => l.level === 'error' && l.msg === 'the inference pool cannot run requests: NOT_SERVING' && String(l['why']).startsWith('no inference worker is running'))).toBe(true);
      await cp(RANDOM_BUNDLE, dir, { recursive: true });
      await eventually(async () => (await healthStatus(service.address)) === 'SERVING', 40_000, 250);
    } finally {
      await service.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('a worker that dies while it runs a request', () => {
  it('fails that request with INTERNAL WORKER_LOST (it may be what killed the worker, so it is not retried elsewhere), and serves the one queued behind it from the replacement', async () => {
    const lines: LogLine[] = [];
    const service = await startVisionService({ ...pairConfig({}) }, { port: 0, log: recordingLogger(lines, 'vision') });
    const client = new VisionServiceClient(service.address, credentials.createInsecure());
    try {
      const { slots } = service.backend.pool as unknown as { slots: Array<{ worker: Worker }> };
      const worker = slots[0]!.worker;
      const post = worker.postMessage.bind(worker);
      let killed = false;
      // The worker dies with the first job handed to it, deterministically before it can answer.
      worker.postMessage = (msg: { type?: string }, transfer?: Parameters<Worker['postMessage']>[1]) => {
        if (msg.type === 'run' && !killed) {
          killed = true;
          void worker.terminate();
        }
        post(msg, transfer);
      };
      const image = await shapesImage();
      const encode = () => collect(client.encode({ image, policy: undefined, limits: undefined }));
      const [first, queued] = await Promise.all([encode(), encode()]);
      expect(killed).toBe(true);
      // Unlike other INTERNAL errors (a fixed "internal error"), this one says what happened, with a
      // reason a client can branch on (send it once more at most); no retry delay is offered.
      expect([first.error?.code, first.error?.details]).toEqual([GrpcCode.INTERNAL, 'the inference worker exited (code 1) while running this request; it is being replaced']);
      const details = decodeStatusDetails(first.error!.metadata);
      expect([details.reason, details.retryDelayMs]).toEqual(['WORKER_LOST', undefined]);
      expect(lines.some((l) => l.msg === 'internal error' && JSON.stringify(l['error']).includes('the inference worker exited (code 1)'))).toBe(true);
      expect(queued.error).toBeNull();
      expect(queued.messages.some((m) => m.part?.$case === 'header')).toBe(true);
      expect(lines.some((l) => l.level === 'error' && l.msg === 'inference worker exited; starting a replacement')).toBe(true);
      expect(await healthStatus(service.address)).toBe('SERVING');
      expect((await encode()).error).toBeNull();
    } finally {
      client.close();
      await service.stop();
    }
  }, 60_000);
});
