import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SpanKind, SpanStatusCode, context, trace } from '@opentelemetry/api';
import { CompressionAlgorithm } from '@opentelemetry/otlp-exporter-base';
import { OTLPTraceExporter as ProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
// The JSON exporter is the one sdk-node picks for OTEL_EXPORTER_OTLP_PROTOCOL=http/json.
import { OTLPTraceExporter as JsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, SimpleSpanProcessor, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { running } from '../cli/child-running';
import { startTraceReceiver, type TraceReceiver } from '../shared/telemetry/collector';
import { parseTraceText, type SpanRecord } from '../shared/telemetry/analysis';

type SentTimes = Map<string, { start: bigint; end: bigint }>;

/** Sends one parent with a child (attributes of every type, an event, an error) through `exporter`. */
async function sendSampleTrace(exporter: SpanExporter, service: string): Promise<{ traceId: string; parentId: string; childId: string; sent: SentTimes }> {
  // The times each span left with, to check the receiver keeps them to the nanosecond.
  const sent: SentTimes = new Map();
  const nanos = ([s, ns]: readonly [number, number]) => BigInt(s) * 1_000_000_000n + BigInt(ns);
  const recording: SpanExporter = {
    export: (spans, done) => {
      for (const s of spans) sent.set(s.spanContext().spanId, { start: nanos(s.startTime), end: nanos(s.endTime) });
      exporter.export(spans, done);
    },
    shutdown: () => exporter.shutdown(),
  };
  const provider = new BasicTracerProvider({ resource: resourceFromAttributes({ 'service.name': service }), spanProcessors: [new SimpleSpanProcessor(recording)] });
  const tracer = provider.getTracer('trace-collect-test');
  const parent = tracer.startSpan('vlm.request', { kind: SpanKind.SERVER, attributes: { 'vlm.reduction.method': 'ficoco-vl', 'vlm.reduction.budget': 64, 'vlm.flops': 1.5e9, 'vlm.cached': true, 'vlm.layers': [1, 2, 3] } });
  const child = tracer.startSpan('vlm.decode', { attributes: { 'vlm.tokens.out': 3 } }, trace.setSpan(context.active(), parent));
  child.addEvent('vlm.token', { 'vlm.token.index': 0 });
  child.setStatus({ code: SpanStatusCode.ERROR, message: 'stopped' });
  child.end();
  parent.end();
  await provider.forceFlush();
  await provider.shutdown();
  return { traceId: parent.spanContext().traceId, parentId: parent.spanContext().spanId, childId: child.spanContext().spanId, sent };
}

function expectSample(spans: SpanRecord[], ids: { traceId: string; parentId: string; childId: string; sent: SentTimes }, service: string): void {
  expect(spans).toHaveLength(2);
  const parent = spans.find((s) => s.spanId === ids.parentId)!;
  const child = spans.find((s) => s.spanId === ids.childId)!;
  expect(parent).toMatchObject({ traceId: ids.traceId, parentSpanId: '', name: 'vlm.request', service, kind: 'SERVER' });
  expect(parent.attributes).toEqual({ 'vlm.reduction.method': 'ficoco-vl', 'vlm.reduction.budget': 64, 'vlm.flops': 1.5e9, 'vlm.cached': true, 'vlm.layers': [1, 2, 3] });
  expect(child).toMatchObject({ traceId: ids.traceId, parentSpanId: ids.parentId, name: 'vlm.decode', kind: 'INTERNAL', status: { code: 'ERROR', message: 'stopped' } });
  expect(child.events).toHaveLength(1);
  expect(child.events[0]).toMatchObject({ name: 'vlm.token', attributes: { 'vlm.token.index': 0 } });
  // Nanosecond times arrive as decimal strings, exactly as sent. (Not "children inside parents": the
  // SDK anchors each span on Date.now() and times it with performance.now(), and on a loaded machine
  // the two clocks drift apart by milliseconds between a parent and its child.)
  for (const span of [parent, child]) {
    expect({ start: BigInt(span.startTimeUnixNano), end: BigInt(span.endTimeUnixNano) }).toEqual(ids.sent.get(span.spanId));
  }
  expect(Math.abs(Number(BigInt(parent.startTimeUnixNano) / 1_000_000n) - Date.now())).toBeLessThan(60_000);
}

describe('OTLP/HTTP trace receiver', () => {
  let receiver: TraceReceiver;
  const received: SpanRecord[][] = [];
  beforeAll(async () => {
    receiver = await startTraceReceiver({ port: 0, host: '127.0.0.1', onSpans: (s) => received.push(s) });
  });
  afterAll(() => receiver.close());

  it.each([
    ['protobuf', () => new ProtoExporter({ url: `${receiver.url}/v1/traces` })],
    ['protobuf, gzip', () => new ProtoExporter({ url: `${receiver.url}/v1/traces`, compression: CompressionAlgorithm.GZIP })],
    ['JSON', () => new JsonExporter({ url: `${receiver.url}/v1/traces` })],
  ])('takes the SDK exporter\'s %s body', async (_kind, makeExporter) => {
    received.length = 0;
    const ids = await sendSampleTrace(makeExporter(), 'vlm-test');
    expectSample(received.flat(), ids, 'vlm-test');
  });

  it('answers bad bodies and other paths with the HTTP status that says why', async () => {
    const post = (path: string, type: string, body: string | Uint8Array) => fetch(`${receiver.url}${path}`, { method: 'POST', headers: { 'content-type': type }, body });
    expect((await post('/v1/traces', 'application/json', 'not json')).status).toBe(400);
    expect((await post('/v1/traces', 'application/x-protobuf', new Uint8Array([0x0a, 0xff]))).status).toBe(400);
    expect((await post('/v1/traces', 'text/plain', 'x')).status).toBe(415);
    expect((await post('/v2/traces', 'application/json', '{}')).status).toBe(404);
    expect((await post('/v1/metrics', 'application/x-protobuf', new Uint8Array())).status).toBe(200);
    expect((await fetch(`${receiver.url}/v1/traces`)).status).toBe(405);
  });
});

describe('vlm trace collect (the CLI, as a process)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trace-collect-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  let collector: ChildProcess | undefined;
  // A failed test leaves no collector listening.
  afterEach(() => {
    if (collector && running(collector)) collector.kill('SIGKILL');
  });

  it('leaves an earlier file as it was when it cannot listen (a collector already on the port)', async () => {
    const out = join(dir, 'kept.jsonl');
    writeFileSync(out, '{"earlier":"spans"}\n');
    const holder = await startTraceReceiver({ port: 0, onSpans: () => undefined });
    try {
      const child = (collector = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '..', 'cli', 'trace-collect.ts'), '--port', String(holder.port), '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] }));
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
      expect(code).not.toBe(0);
      expect(stderr).toMatch(/EADDRINUSE/);
      expect(readFileSync(out, 'utf8')).toBe('{"earlier":"spans"}\n');
    } finally {
      await holder.close();
    }
  });

  it('writes one span per line and flushes on SIGTERM', async () => {
    const out = join(dir, 'spans.jsonl');
    const child = (collector = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '..', 'cli', 'trace-collect.ts'), '--port', '0', '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] }));
    let stderr = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /OTLP\/HTTP on (http:\/\/[^ ]+)\/v1\/traces/.exec(stderr);
        if (m) resolve(m[1]!);
      });
      child.once('exit', (code) => reject(new Error(`collector exited (${code}): ${stderr}`)));
    });
    const ids = await sendSampleTrace(new ProtoExporter({ url: `${url}/v1/traces` }), 'vlm-vision');
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/2 spans written/);
    const lines = readFileSync(out, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(2);
    const first = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(Object.keys(first)).toEqual(expect.arrayContaining(['traceId', 'spanId', 'parentSpanId', 'name', 'service', 'startTimeUnixNano', 'endTimeUnixNano', 'attributes']));
    const { format, spans } = parseTraceText(readFileSync(out, 'utf8'));
    expect(format).toBe('span-lines');
    expectSample(spans, ids, 'vlm-vision');
  });
});
