/** Shared by the core tests: reference tensors, tolerance checks, a default policy. */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { expect } from 'vitest';
import { testConfig, type Config } from '../shared/config';
import { loadModel, type LoadedModel } from '../shared/engine';
import { VlmError } from '../shared/errors';
import type { Logger } from '../shared/log';
import type { ReductionPolicy } from '../shared/methods/policy';
import { f32, i64, type HostTensor } from '../shared/tensor/host-tensor';

export const ROOT = path.resolve(__dirname, '..');
export const RANDOM_BUNDLE = path.join(ROOT, 'test/fixtures/random-bundle');

export interface RefTensor {
  dtype: 'float32' | 'int64';
  shape: number[];
  data: string;
}

export function decodeRef(t: RefTensor): HostTensor {
  const buf = Buffer.from(t.data, 'base64');
  const bytes = new Uint8Array(buf.byteLength);
  bytes.set(buf);
  return t.dtype === 'int64' ? i64(t.shape, new BigInt64Array(bytes.buffer)) : f32(t.shape, new Float32Array(bytes.buffer));
}

export function readJson<T>(file: string): T {
  return JSON.parse(readFileSync(file, 'utf8')) as T;
}

/** The golden rule: max|a-b| <= tol x max|expected|, with a message naming the tensor and both sides. */
export function expectClose(name: string, actual: Float32Array, expected: Float32Array, tol = 1e-4): void {
  expect(actual.length, `${name}: length`).toBe(expected.length);
  let maxRef = 0;
  let maxDiff = 0;
  let at = 0;
  for (let i = 0; i < expected.length; i++) {
    maxRef = Math.max(maxRef, Math.abs(expected[i]!));
    const d = Math.abs(actual[i]! - expected[i]!);
    if (!(d <= maxDiff)) {
      maxDiff = d;
      at = i;
    }
  }
  expect(maxDiff, `${name}: max|a-b| ${maxDiff} at ${at} (got ${actual[at]}, want ${expected[at]}), allowed ${tol} x ${maxRef}`).toBeLessThanOrEqual(tol * maxRef);
}

export function policy(over: Partial<ReductionPolicy> = {}): ReductionPolicy {
  return { vision: 'none', language: 'none', budget: null, mode: 'clean', params: {}, seed: 0, ...over };
}

/** The VlmError a promise rejects with (fails the test if it resolves or rejects with anything else). */
export async function failure(p: Promise<unknown>): Promise<VlmError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(VlmError);
  return err as VlmError;
}

/** A bundle loaded in-process with the test configuration (one intra-op thread). */
export function loadTestModel(model: Partial<Config['model']>): Promise<LoadedModel> {
  const config = testConfig({ model });
  return loadModel({ model: config.model, runtime: config.runtime, limits: config.limits });
}

export type LogLine = Record<string, unknown>;

/** Records every line at every level, so tests can read (and grep) what the services and the pool log. */
export function recordingLogger(lines: LogLine[], component: string): Logger {
  const rec = (level: string) => (msg: string, fields?: Record<string, unknown>) => void lines.push({ level, component, msg, ...fields });
  return { debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error'), child: (c) => recordingLogger(lines, `${component}.${c}`) };
}

/**
 * The pool's line for a job that ended early (shared/worker/pool.ts): 'job stopped early' with the
 * tokens its worker had generated when it stopped. Waits up to `timeoutMs` for the worker's answer;
 * fails naming what was logged instead ('aborted job ran to completion' from a worker that ignored
 * the abort).
 */
export async function stoppedJob(lines: readonly LogLine[], requestId: string, timeoutMs = 10_000): Promise<LogLine & { decode_steps: number; code: string; aborted: boolean; ms_after_abort?: number }> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const line = lines.find((l) => l['msg'] === 'job stopped early' && l['requestId'] === requestId);
    if (line) return line as LogLine & { decode_steps: number; code: string; aborted: boolean; ms_after_abort?: number };
    const completed = lines.find((l) => l['msg'] === 'aborted job ran to completion' && l['requestId'] === requestId);
    if (completed) throw new Error(`the job of request ${requestId} was aborted but ran to completion: ${JSON.stringify(completed)}`);
    if (Date.now() > until) {
      const seen = lines.filter((l) => l['requestId'] === requestId);
      throw new Error(`no 'job stopped early' line for request ${requestId} within ${timeoutMs} ms; its lines: ${JSON.stringify(seen)}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}
