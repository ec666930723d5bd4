/**
 * `vlm bench latency` measures each method from the services' own traces: both services run as
 * processes exporting OTLP to a receiver in the bench, requests go one at a time, and the warm-up
 * request of each policy is left out of the figures.
 */
import { describe, expect, it } from 'vitest';
import { testConfig } from '../shared/config';
import { formatLatency, latencyPolicies, runLatency, type LatencyRow } from '../cli/bench-latency';
import { BUNDLE } from './reliability-helpers';
import type { SpanRecord } from '../shared/telemetry/analysis';

describe('vlm bench latency', () => {
  it('covers every method alone and every preset, each named as its traces name it', () => {
    expect(latencyPolicies({ percent: 25 }).map((p) => p.method)).toEqual([
      'none', 'ficoco-v', 'tome', 'random (vision)', 'sparsevlm', 'ficoco-l', 'fastv', 'random (language)', 'ficoco-vl',
    ]);
  });

  it('reports each policy from its own traces, warm-ups left out, and marks a budget the model cannot give', async () => {
    const config = testConfig({ model: { dir: BUNDLE } });
    // 4 tokens: reachable by vision random, below fastv's feasible range on this 16-token bundle.
    const policies = latencyPolicies({ tokens: 4 }).filter((p) => ['none', 'random (vision)', 'fastv'].includes(p.method));
    // A shell's own trace settings must not take the spans elsewhere (they win over the generic ones).
    const shell = { ...process.env, OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:9/v1/traces', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc' };
    let written: readonly SpanRecord[] = [];
    const result = await runLatency({ config, limit: 2, budget: { tokens: 4 }, maxNewTokens: 4, serveFlags: ['--workers', '1'], serviceEnv: shell, policies, onSpans: (s) => (written = s) });
    const [none, random, fastv] = result.rows;
    expect(fastv).toEqual({ method: 'fastv', infeasible: expect.stringMatching(/feasible range is \[4\.75, 16\]/) });
    for (const row of [none, random] as LatencyRow[]) {
      expect(row.requests).toBe(2);
      expect(row.client.count).toBe(2);
      expect(row.outputTokens).toBeGreaterThan(0);
      for (const stage of ['visionRequest', 'preprocess', 'tower', 'streamReceive', 'prefill', 'decode'] as const) expect(row.stages[stage], stage).toBeGreaterThan(0);
      // The stages sit inside the request: their means cannot add up past the longest request.
      expect(row.stages.visionRequest + row.stages.prefill + row.stages.decode).toBeLessThanOrEqual(row.endToEnd.max);
      // The caller waits for at least what the service spent.
      expect(row.client.p50).toBeGreaterThanOrEqual(row.endToEnd.p50 * 0.9);
    }
    // The methods' own steps, from their vlm.reduce spans: vision random makes one cut, nothing else reduces.
    expect((random as LatencyRow).reduce.vision.stepsPerRequest).toBe(1);
    expect((random as LatencyRow).reduce.vision.msPerStep).toBeGreaterThan(0);
    expect((random as LatencyRow).reduce.language).toEqual({ stepsPerRequest: 0, msPerStep: 0 });
    expect((none as LatencyRow).reduce).toEqual({ vision: { stepsPerRequest: 0, msPerStep: 0 }, language: { stepsPerRequest: 0, msPerStep: 0 } });
    expect((none as LatencyRow).budget).toBe('full');
    expect((random as LatencyRow).budget).toBe('4');
    expect(result.spans.analysed).toBeLessThan(result.spans.received);
    // What --spans keeps is what the table was made of: no warm-up, so `vlm trace report` agrees.
    expect(written).toHaveLength(result.spans.analysed);
    expect(written.some((s) => String(s.attributes['vlm.request_id'] ?? '').startsWith('warm-up-'))).toBe(false);
    const table = formatLatency(result);
    expect(table).toMatch(/^\| random \(vision\) \| [\d.]+ \|.* \| [\d.]+ x 1 \| - \|$/m);
    expect(table).toMatch(/^\| fastv \| infeasible: /m);
  }, 120_000);
});
