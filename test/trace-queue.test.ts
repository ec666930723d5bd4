/**
 * The wait for a worker is in the request's trace whether or not a worker ever took the job: a job
 * whose deadline passes in the queue (the case an operator looks into) shows a `vlm.queue` span
 * ending at that deadline with its error, not a request with nothing inside to explain its time.
 */
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testConfig } from '../shared/config';
import { VlmError } from '../shared/errors';
import { InferencePool } from '../shared/worker';
import type { SpanRecord } from '../shared/telemetry/analysis';
import { startTraceReceiver, type TraceReceiver } from '../shared/telemetry/collector';
import { shutdownTelemetry, startTelemetry } from '../shared/telemetry/sdk';
import { withSpan } from '../shared/telemetry/with-span';
import { failure, policy, RANDOM_BUNDLE } from './core-helpers';
import { eventually, sleep } from './service-helpers';

describe('the queue span of a job that never reached a worker', () => {
  let receiver: TraceReceiver;
  const spans: SpanRecord[] = [];
  let pool: InferencePool;

  beforeAll(async () => {
    receiver = await startTraceReceiver({ port: 0, onSpans: (s) => spans.push(...s) });
    // The SDK's exporters read process.env themselves; this file runs in its own process.
    Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_METRICS_EXPORTER: 'none' });
    await startTelemetry({ serviceName: 'vlm-language', metricsPort: 0 }).ready;
    const config = testConfig({ model: { dir: RANDOM_BUNDLE }, runtime: { workers: 1 }, limits: { queueSize: 1 } });
    pool = await InferencePool.start(config);
  });
  // Also when the test failed before its own close (both are idempotent): no worker or exporter left behind.
  afterAll(async () => {
    await pool?.close();
    await shutdownTelemetry();
    receiver.close();
  });

  it('records the wait until the job left the queue, with the error that ended it, under the request', async () => {
    const image = await sharp({ create: { width: 48, height: 40, channels: 3, background: '#fc0' } }).png().toBuffer();
    const sampling = { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 200 };
    const controller = new AbortController();
    let heldMs = 0;
    const [, queuedError] = await Promise.all([
      withSpan('running request', {}, () => pool.ask(image, 'what color is it?', sampling, policy())),
      withSpan('queued request', {}, async () => {
        const submitted = performance.now();
        const queued = pool.ask(image, 'what color is it?', sampling, policy(), { signal: controller.signal });
        // Aborted while it still waits behind the running job (200 tokens: far longer than this).
        await eventually(() => pool.stats.busy === 1 && pool.stats.queued === 1, 5000, 1);
        await sleep(20);
        expect(pool.stats.queued, 'the second job still waits in the queue').toBe(1);
        heldMs = performance.now() - submitted;
        controller.abort(new VlmError('DEADLINE_EXCEEDED', 'the deadline passed in the queue'));
        return failure(queued);
      }),
    ]);
    expect(queuedError.code).toBe('DEADLINE_EXCEEDED');
    await pool.close();
    await shutdownTelemetry();

    const parentOf = (name: string) => spans.find((s) => s.name === name)!;
    const queueUnder = (name: string) => spans.filter((s) => s.name === 'vlm.queue' && s.parentSpanId === parentOf(name).spanId);
    const [waited] = queueUnder('queued request');
    expect(queueUnder('queued request')).toHaveLength(1);
    expect(waited!.attributes['error.type']).toBe('DEADLINE_EXCEEDED');
    expect(waited!.status.code).toBe('ERROR');
    const ms = (ns: string) => Number(BigInt(ns) / 1_000_000n);
    // (whole milliseconds at both ends, and the span starts just after the submission)
    expect(ms(waited!.endTimeUnixNano) - ms(waited!.startTimeUnixNano)).toBeGreaterThanOrEqual(Math.floor(heldMs) - 2);
    // The job a worker ran keeps its ordinary queue span, with no error on it.
    expect(queueUnder('running request')).toHaveLength(1);
    expect(queueUnder('running request')[0]!.attributes['error.type']).toBeUndefined();
  }, 60_000);
});
