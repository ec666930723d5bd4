import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { context } from '@opentelemetry/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTraceText, type SpanRecord } from '../shared/telemetry/analysis';
import { startTraceReceiver, type TraceReceiver } from '../shared/telemetry/collector';
import { otlpMetricExporter, startTelemetry, shutdownTelemetry, telemetryResource, telemetrySettings } from '../shared/telemetry/sdk';
import { tracingEnabled } from '../shared/telemetry/state';
import { replaySpans, type SpanTiming } from '../shared/telemetry/span-recorder';
import { withSpan } from '../shared/telemetry/with-span';
import { extractTraceparent, injectTraceparent } from '../shared/telemetry/propagation';
import { freePort } from '../cli/free-port';

describe('telemetrySettings: on only when the OTEL_* environment asks', () => {
  it.each([
    [{}, 0, { tracing: false, otlpMetrics: false, prometheusPort: 0 }],
    [{}, 9464, { tracing: false, otlpMetrics: false, prometheusPort: 9464 }],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }, 0, { tracing: true, otlpMetrics: true, prometheusPort: 0 }],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces' }, 0, { tracing: true, otlpMetrics: false }],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_METRICS_EXPORTER: 'none' }, 9464, { tracing: true, otlpMetrics: false, prometheusPort: 9464 }],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_EXPORTER: 'none' }, 0, { tracing: false, otlpMetrics: true }],
    [{ OTEL_TRACES_EXPORTER: 'console' }, 0, { tracing: true, otlpMetrics: false, consoleMetrics: false }],
    [{ OTEL_METRICS_EXPORTER: 'console,otlp', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }, 0, { otlpMetrics: true, consoleMetrics: true }],
    [{ OTEL_METRICS_EXPORTER: 'prometheus', OTEL_EXPORTER_PROMETHEUS_PORT: '9999' }, 0, { tracing: false, prometheusPort: 9999 }],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }, 9464, { tracing: false, otlpMetrics: false, prometheusPort: 0 }],
  ])('%j, metrics port %d -> %j', (env, port, expected) => {
    expect(telemetrySettings(env, port)).toMatchObject(expected);
  });

  it.each([
    [{}, 'http/protobuf'],
    [{ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, 'grpc'],
    [{ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json' }, 'http/json'],
    [{ OTEL_EXPORTER_OTLP_PROTOCOL: 'carrier-pigeon' }, 'http/protobuf'],
  ])('metrics follow the OTLP protocol setting: %j -> %s', (env, protocol) => {
    expect(telemetrySettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4317', ...env }).metricsProtocol).toBe(protocol);
  });

  it.each([
    [{ OTEL_METRICS_EXPORTER: 'prometheus', OTEL_EXPORTER_PROMETHEUS_PORT: 'abc' }, { prometheusPort: 9464 }, 'OTEL_EXPORTER_PROMETHEUS_PORT="abc" is not an integer in [1, 65535]; using 9464'],
    [{ OTEL_METRICS_EXPORTER: 'prometheus', OTEL_EXPORTER_PROMETHEUS_PORT: '70000' }, { prometheusPort: 9464 }, 'OTEL_EXPORTER_PROMETHEUS_PORT="70000" is not an integer in [1, 65535]; using 9464'],
    // Past setTimeout's range Node fires after 1 ms: metrics would be exported without pause.
    [{ OTEL_METRIC_EXPORT_INTERVAL: '3000000000' }, { metricIntervalMs: 60_000 }, 'OTEL_METRIC_EXPORT_INTERVAL="3000000000" is not an integer in [1, 2147483647]; using 60000'],
    [{ OTEL_METRIC_EXPORT_INTERVAL: '-5' }, { metricIntervalMs: 60_000 }, 'OTEL_METRIC_EXPORT_INTERVAL="-5" is not an integer in [1, 2147483647]; using 60000'],
    [{ OTEL_METRIC_EXPORT_INTERVAL: '15000' }, { metricIntervalMs: 15_000, metricTimeoutMs: 15_000 }, null],
    [{ OTEL_METRIC_EXPORT_TIMEOUT: '5000' }, { metricIntervalMs: 60_000, metricTimeoutMs: 5_000 }, null],
    [{ OTEL_METRIC_EXPORT_TIMEOUT: '0' }, { metricTimeoutMs: 30_000 }, 'OTEL_METRIC_EXPORT_TIMEOUT="0" is not an integer in [1, 2147483647]; using 30000'],
  ])('ignores an invalid numeric setting with a warning, as the OpenTelemetry specification asks: %j', (env, expected, warning) => {
    const warnings: string[] = [];
    expect(telemetrySettings(env, 0, (m) => warnings.push(m))).toMatchObject(expected);
    expect(warnings).toEqual(warning === null ? [] : [warning]);
  });

  it('builds the exporter of each protocol from its own package', async () => {
    const packages = { grpc: '@opentelemetry/exporter-metrics-otlp-grpc', 'http/json': '@opentelemetry/exporter-metrics-otlp-http', 'http/protobuf': '@opentelemetry/exporter-metrics-otlp-proto' } as const;
    for (const [protocol, pkg] of Object.entries(packages)) {
      const exporter = otlpMetricExporter(protocol as keyof typeof packages);
      try {
        expect(exporter).toBeInstanceOf(((await import(pkg)) as { OTLPMetricExporter: new () => unknown }).OTLPMetricExporter);
      } finally {
        await exporter.shutdown();
      }
    }
  });
});

describe('captureContent: token ids on spans only when tracing and OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT asks', () => {
  it.each([
    [undefined, false],
    ['', false],
    ['false', false],
    ['yes', false],
    ['true', true],
    ['TRUE', true],
    [' 1 ', true],
  ])('%j -> %s', (value, expected) => {
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', ...(value === undefined ? {} : { OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: value }) };
    expect(telemetrySettings(env).captureContent).toBe(expected);
  });

  it('is off while spans are not exported, whatever the variable says', () => {
    expect(telemetrySettings({ OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: 'true' }).captureContent).toBe(false);
  });
});

describe('the resource: which process a span or metric came from', () => {
  const attributesWith = async (resourceAttributes: string | undefined) => {
    const saved = process.env.OTEL_RESOURCE_ATTRIBUTES;
    if (resourceAttributes === undefined) delete process.env.OTEL_RESOURCE_ATTRIBUTES;
    else process.env.OTEL_RESOURCE_ATTRIBUTES = resourceAttributes;
    try {
      const resource = telemetryResource('vlm-vision');
      await resource.waitForAsyncAttributes?.();
      return resource.attributes;
    } finally {
      if (saved === undefined) delete process.env.OTEL_RESOURCE_ATTRIBUTES;
      else process.env.OTEL_RESOURCE_ATTRIBUTES = saved;
    }
  };

  it("has the code's version as service.version (the model's goes in vlm.model.version)", async () => {
    const { version } = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
    expect((await attributesWith(undefined))['service.version']).toBe(version);
    expect(await attributesWith('vlm.model.version=llava-1.5-7b-r1')).toMatchObject({ 'service.version': version, 'vlm.model.version': 'llava-1.5-7b-r1' });
  });

  it('has a service.instance.id: a random UUID per process unless OTEL_RESOURCE_ATTRIBUTES names one', async () => {
    const a = await attributesWith(undefined);
    const b = await attributesWith(undefined);
    expect(a['service.instance.id']).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(b['service.instance.id']).not.toBe(a['service.instance.id']);
    const pod = await attributesWith('k8s.pod.uid=6f1c,service.instance.id=6f1c,service.name=other');
    expect(pod).toMatchObject({ 'service.instance.id': '6f1c', 'k8s.pod.uid': '6f1c', 'service.name': 'vlm-vision' });
  });
});

/** Runs the record worker (a real thread without an SDK) and returns what it recorded. */
function recordInWorker(): Promise<{ spans: SpanTiming[]; error: string }> {
  const file = join(__dirname, 'fixtures', 'traces', 'record-worker.ts');
  const worker = new Worker(`require('tsx/cjs'); require(${JSON.stringify(file)});`, { eval: true });
  return new Promise((resolve, reject) => {
    worker.once('message', (m: { spans: SpanTiming[]; error: string }) => {
      void worker.terminate();
      resolve(m);
    });
    worker.once('error', reject);
    worker.postMessage('go');
  });
}

describe('the SDK in a service process', () => {
  let receiver: TraceReceiver;
  const spans: SpanRecord[] = [];
  let grpc: typeof import('@grpc/grpc-js');

  beforeAll(async () => {
    receiver = await startTraceReceiver({ port: 0, onSpans: (s) => spans.push(...s) });
    // The SDK's exporters read process.env themselves; this file runs in its own process.
    Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_METRICS_EXPORTER: 'none' });
    // No Prometheus endpoint: what is under test here is the spans.
    const telemetry = startTelemetry({ serviceName: 'vlm-language', metricsPort: 0 });
    await telemetry.ready;
    // After the SDK: the grpc instrumentation patches grpc-js as it is required.
    grpc = createRequire(__filename)('@grpc/grpc-js') as typeof import('@grpc/grpc-js');
  });
  let server: import('@grpc/grpc-js').Server | undefined;
  // Also when the test failed before its own shutdown (both are idempotent).
  afterAll(async () => {
    server?.forceShutdown();
    await shutdownTelemetry();
    receiver.close();
  });

  it('links client and server spans over gRPC and replays worker spans under the request', async () => {
    expect(tracingEnabled()).toBe(true);
    const passthrough = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
    const definition = { Echo: { path: '/test.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: passthrough.serialize, requestDeserialize: passthrough.deserialize, responseSerialize: passthrough.serialize, responseDeserialize: passthrough.deserialize } };
    server = new grpc.Server();
    let worker: { spans: SpanTiming[]; error: string } | undefined;
    server.addService(definition, {
      Echo: (call: { request: Buffer }, callback: (err: null, res: Buffer) => void) => {
        void withSpan('vlm.request', { 'vlm.reduction.method': 'ficoco-l' }, async () => {
          const parent = context.active();
          worker = await recordInWorker();
          replaySpans(worker.spans, parent);
          return call.request;
        }).then((res) => callback(null, res));
      },
    });
    const port = await new Promise<number>((resolve, reject) => server!.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    const Client = grpc.makeGenericClientConstructor(definition, 'Echo');
    const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as { Echo: (req: Buffer, cb: (err: Error | null, res: Buffer) => void) => void; close(): void };
    const reply = await withSpan('caller', {}, (span) => {
      // more events than the SDK's default of 128: a long answer keeps every token event
      for (let i = 0; i < 300; i++) span.addEvent('vlm.token', { 'vlm.token.index': i });
      return new Promise<Buffer>((resolve, reject) => client.Echo(Buffer.from('hi'), (err, res) => (err ? reject(err) : resolve(res))));
    });
    expect(reply.toString()).toBe('hi');
    client.close();
    server.forceShutdown();
    await shutdownTelemetry();

    const byName = (name: string) => spans.filter((s) => s.name === name);
    const clientSpan = spans.find((s) => s.kind === 'CLIENT')!;
    const serverSpan = spans.find((s) => s.kind === 'SERVER')!;
    expect(clientSpan.name).toBe('grpc.test.Echo/Echo');
    expect(clientSpan.parentSpanId).toBe(byName('caller')[0]!.spanId);
    expect(byName('caller')[0]!.events).toHaveLength(300);
    expect(serverSpan.parentSpanId).toBe(clientSpan.spanId);
    expect(serverSpan.attributes['rpc.system']).toBe('grpc');
    const request = byName('vlm.request')[0]!;
    expect(request.parentSpanId).toBe(serverSpan.spanId);
    expect(new Set(spans.map((s) => s.traceId)).size).toBe(1);
    expect(new Set(spans.map((s) => s.service))).toEqual(new Set(['vlm-language']));

    // the worker's spans: same tree, same times, attributes and events, error marked
    expect(worker!.error).toBe('decode failed on purpose');
    const prefill = byName('vlm.prefill')[0]!;
    expect(prefill.parentSpanId).toBe(request.spanId);
    expect(prefill.attributes).toEqual({ 'vlm.tokens.in': 40, 'vlm.tokens.out': 16, 'error.type': 'INTERNAL' });
    const layers = byName('vlm.prefill.layer');
    expect(layers.map((l) => l.attributes['vlm.layer'])).toEqual([0, 1]);
    expect(layers.every((l) => l.parentSpanId === prefill.spanId)).toBe(true);
    expect(byName('vlm.reduce')[0]).toMatchObject({ parentSpanId: layers[1]!.spanId, attributes: { 'vlm.tokens.out': 8 } });
    expect(layers[1]!.events.map((e) => e.name)).toEqual(['vlm.token']);
    expect(byName('vlm.decode')[0]!.status.code).toBe('ERROR');
    const recordedLayer0 = worker!.spans.find((s) => s.name === 'vlm.prefill.layer')!;
    const ms = (ns: string) => Number(BigInt(ns) / 1000n) / 1000;
    expect(ms(layers[0]!.startTimeUnixNano)).toBeCloseTo(recordedLayer0.startMs, 2);
    expect(ms(layers[0]!.endTimeUnixNano) - ms(layers[0]!.startTimeUnixNano)).toBeGreaterThanOrEqual(4);
    // inside the request span, on the one clock of every span (2 ms for two threads' readings of it)
    const slack = 2_000_000n;
    for (const s of [prefill, ...layers]) {
      expect(BigInt(s.startTimeUnixNano) + slack >= BigInt(request.startTimeUnixNano)).toBe(true);
      expect(BigInt(s.endTimeUnixNano) <= BigInt(request.endTimeUnixNano) + slack).toBe(true);
    }
    // and the report reads it as one trace
    const lines = spans.map((s) => JSON.stringify(s)).join('\n');
    expect(parseTraceText(lines).spans).toHaveLength(spans.length);
  });

  it('carries trace context as plain data', () => {
    // The SDK is shut down above, but its propagator stays registered.
    const carrier = { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' };
    const ctx = extractTraceparent(carrier);
    expect(injectTraceparent(ctx)).toEqual(carrier);
  });
});

describe('shutdown with the collector down', () => {
  it('gives up on the flush after about 3 s, saying spans may be lost, instead of waiting out the exporter (10 s)', async () => {
    const { createServer: createTcpServer } = await import('node:net');
    const { execFile } = await import('node:child_process');
    // Takes connections and never answers: an exporter waits its whole timeout on it.
    const sockets: import('node:net').Socket[] = [];
    const blackHole = createTcpServer((socket) => void sockets.push(socket));
    await new Promise<void>((resolve) => blackHole.listen(0, '127.0.0.1', resolve));
    const { port } = blackHole.address() as { port: number };
    const script = `
      const { startTelemetry, shutdownTelemetry } = require('./shared/telemetry/sdk');
      const { trace } = require('@opentelemetry/api');
      (async () => {
        startTelemetry({ serviceName: 'vlm-language' });
        trace.getTracer('test').startSpan('never exported').end();
        const t0 = Date.now();
        await shutdownTelemetry();
        // as the services' signal handler does (lifecycle.ts): the abandoned export must not hold the process
        process.stdout.write(String(Date.now() - t0), () => process.exit(0));
      })();`;
    const env = { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`, OTEL_EXPORTER_OTLP_TIMEOUT: '', OTEL_METRICS_EXPORTER: 'none', VLM_LOG_LEVEL: 'warn' };
    try {
      const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) =>
        execFile(process.execPath, ['--import', 'tsx', '-e', script], { cwd: join(__dirname, '..'), env, timeout: 20_000 }, (err, stdout, stderr) => (err ? reject(err) : resolve({ stdout, stderr }))),
      );
      expect(Number(stdout)).toBeGreaterThanOrEqual(2900);
      // The exporter's own timeout (10 s) is what must not be waited for.
      expect(Number(stdout)).toBeLessThan(9000);
      expect(stderr).toMatch(/"msg":"telemetry shutdown gave up waiting for the exporters; spans and metrics not yet exported may be lost"/);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => blackHole.close(() => resolve()));
    }
  });
});

/**
 * What /metrics shows after `calls` (statements over `m`, the metrics module) ran in a fresh process
 * with a metrics-only SDK: this file's SDK was shut down, and a process starts one SDK at most.
 */
async function scrapeAfter(calls: string): Promise<string> {
  const { execFileSync } = await import('node:child_process');
  const port = await freePort();
  const script = `
    const { startTelemetry, shutdownTelemetry } = require('./shared/telemetry/sdk');
    const m = require('./shared/telemetry/metrics');
    (async () => {
      const t = startTelemetry({ serviceName: 'vlm-vision', metricsPort: ${port}, metricsHost: '127.0.0.1' });
      await t.ready;
      ${calls}
      const res = await fetch('http://127.0.0.1:${port}/metrics');
      process.stdout.write(await res.text());
      await shutdownTelemetry();
    })();`;
  return execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { cwd: join(__dirname, '..'), encoding: 'utf8', timeout: 30_000, env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: '', OTEL_METRICS_EXPORTER: '' } });
}

describe('metrics on the Prometheus endpoint', () => {
  it('has the in-flight series at 0 on a service that has served nothing (the autoscalers read it on every pod)', async () => {
    const text = await scrapeAfter('m.publishInFlightAtZero();');
    expect(text).toMatch(/^vlm_inflight_requests(?:\{[^}]*\})? 0$/m);
  });

  it('exposes queue depth, in-flight requests, stage latency, request and encode histograms, TLS expiry and token use', async () => {
    const text = await scrapeAfter(`
      m.observeQueueDepth(() => 3);
      m.observeTlsExpiry(() => Date.now() + 86400e3, 'server');
      m.observeTlsExpiry(() => null, 'vision-client');
      m.trackInFlight();
      const done = m.trackInFlight(); done(); done();
      m.recordStage('vlm.prefill', 0.004, { 'vlm.reduction.method': 'fastv' });
      m.recordStage('vlm.prefill', 0.2, { 'vlm.reduction.method': 'fastv' });
      m.recordStageTokens('vlm.reduce', 64);
      m.recordRequest(1.5);
      m.recordRequest(0.5, { 'error.type': 'INVALID_ARGUMENT' });
      m.recordEncode(0.7);
      m.recordGeneration({ timeToFirstTokenSeconds: 0.3, decodeSteps: 10, decodeSeconds: 1.0 }); m.recordGeneration({ timeToFirstTokenSeconds: 0.2, decodeSteps: 0, decodeSeconds: 0.001 });
      m.recordAuth('accepted', 'old'); m.recordAuth('accepted', 'new'); m.recordAuth('accepted', 'new'); m.recordAuth('invalid');
    `);
    const value = (re: RegExp) => Number(re.exec(text)?.[1]);
    expect(value(/^vlm_queue_depth(?:\{[^}]*\})? (\S+)/m)).toBe(3);
    expect(value(/^vlm_inflight_requests(?:\{[^}]*\})? (\S+)/m)).toBe(1);
    // A day left, in seconds; a set with nothing to expire reports nothing.
    expect(value(/^vlm_tls_expiry\{[^}]*vlm_tls_set="server"[^}]*\} (\S+)/m)).toBeCloseTo(86400, -1);
    expect(text).not.toMatch(/^vlm_tls_expiry\{[^}]*vision-client/m);
    // buckets are cumulative: 0.004 s falls in le=0.005, 0.2 s first in le=0.25
    expect(value(/^vlm_stage_duration_bucket\{[^}]*vlm_stage="vlm.prefill"[^}]*le="0.005"\} (\S+)/m)).toBe(1);
    expect(value(/^vlm_stage_duration_bucket\{[^}]*vlm_stage="vlm.prefill"[^}]*le="0.25"\} (\S+)/m)).toBe(2);
    expect(value(/^vlm_stage_duration_count\{[^}]*vlm_stage="vlm.prefill"[^}]*\} (\S+)/m)).toBe(2);
    expect(value(/^vlm_stage_tokens_bucket\{[^}]*le="64"\} (\S+)/m)).toBe(1);
    expect(value(/^gen_ai_server_request_duration_sum(?:\{[^}]*\})? (\S+)/m)).toBeCloseTo(1.5, 9);
    expect(value(/^gen_ai_server_request_duration_sum\{[^}]*error_type="INVALID_ARGUMENT"[^}]*\} (\S+)/m)).toBeCloseTo(0.5, 9);
    expect(value(/^vlm_encode_duration_sum(?:\{[^}]*\})? (\S+)/m)).toBeCloseTo(0.7, 9);
    expect(value(/^gen_ai_server_time_to_first_token_sum(?:\{[^}]*\})? (\S+)/m)).toBeCloseTo(0.5, 9);
    // 10 decode steps in 1 s: 10 tokens/s and 0.1 s per token, one the inverse of the other; an answer
    // of one token had no decode step and records neither rate
    expect(value(/^vlm_decode_tokens_per_second_count(?:\{[^}]*\})? (\S+)/m)).toBe(1);
    expect(value(/^vlm_decode_tokens_per_second_sum(?:\{[^}]*\})? (\S+)/m)).toBeCloseTo(10, 9);
    expect(value(/^gen_ai_server_time_per_output_token_sum(?:\{[^}]*\})? (\S+)/m)).toBeCloseTo(0.1, 9);
    // Per token name, so a token being rotated out can be removed once its count stops growing.
    expect(value(/^vlm_auth_calls_total\{[^}]*vlm_auth_credential="new"[^}]*\} (\S+)/m)).toBe(2);
    expect(value(/^vlm_auth_calls_total\{[^}]*vlm_auth_credential="old"[^}]*\} (\S+)/m)).toBe(1);
    expect(value(/^vlm_auth_calls_total\{[^}]*vlm_auth_outcome="invalid"[^}]*\} (\S+)/m)).toBe(1);
  });
});
