/**
 * A service that has lost every inference worker says so through grpc.health.v1, so Kubernetes
 * takes it out of its Service and, if no replacement starts, restarts it; it serves again once one does.
 */
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { startVisionService } from '../services/vision/server';
import { eventually, healthStatus } from './service-helpers';
import { pairConfig, recordingLogger, type LogLine } from './reliability-helpers';

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
      expect(lines.some((l) => l.level === 'error' && String(l.msg).startsWith('no inference worker is running'))).toBe(false);
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
      expect(lines.some((l) => l.level === 'error' && l.msg === 'no inference worker is running and its replacement failed: NOT_SERVING until one starts')).toBe(true);
      await cp(RANDOM_BUNDLE, dir, { recursive: true });
      await eventually(async () => (await healthStatus(service.address)) === 'SERVING', 40_000, 250);
    } finally {
      await service.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
