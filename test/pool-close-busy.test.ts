/**
 * Closing the inference pool while a worker is decoding (a service's shutdown after its grace period)
 * ends the job with UNAVAILABLE and the process carries on: the worker is aborted and allowed to reach
 * its next check before it is terminated. Terminated inside an ONNX Runtime call, it would abort the
 * whole process (exit 134), losing the drain's telemetry flush and whatever else was in flight.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '..');
const FIXTURE = path.join(ROOT, 'test/fixtures/pool/close-while-running.ts');

describe('closing the pool while a job runs', () => {
  it.each([1, 2, 3])('stops the worker cleanly (run %i)', () => {
    // 20 ms into an answer that takes well over 100 ms here: the worker is inside or between ONNX Runtime calls.
    const r = spawnSync(process.execPath, ['--require', require.resolve('tsx/cjs'), FIXTURE, '20'], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, VLM_LOG_LEVEL: 'warn' },
    });
    expect(r.stderr).not.toMatch(/terminate called/);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe('closed UNAVAILABLE {"stuckWorkers":0}');
  }, 70_000);

  it('leaves a worker still in a model call 5 s after the abort, and terminates it once the call returns: an in-process caller (vlm eval) can exit', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'vlm-slow-'));
    const modeFile = path.join(dir, 'mode');
    writeFileSync(modeFile, 'slow');
    try {
      const started = performance.now();
      // Closed 200 ms into the first model call, which takes 7 s.
      const r = spawnSync(process.execPath, ['--require', require.resolve('tsx/cjs'), FIXTURE, '200'], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 60_000,
        env: { ...process.env, VLM_LOG_LEVEL: 'warn', NODE_OPTIONS: `--require ${path.join(ROOT, 'test/fixtures/fault/ort-fault.cjs')}`, VLM_TEST_ORT_FAULT: modeFile },
      });
      expect(r.stdout.trim()).toBe('closed UNAVAILABLE {"stuckWorkers":1}');
      expect(r.stderr).toMatch(/the pool closes without it/);
      // Ended by itself (a worker left idle would keep it up until spawnSync's timeout kills it).
      expect([r.status, r.signal]).toEqual([0, null]);
      expect(performance.now() - started).toBeLessThan(45_000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 70_000);
});
