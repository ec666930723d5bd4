/**
 * Must show: a call that grpc-js ends without a status from us (the client cancelled, or its deadline
 * passed, even after the handler returned) still exports its gRPC server span, ended with the code it
 * ended with, so the trace keeps its root; a call the handler fails has the status's code name as
 * `error.type` and its message on the server span, which is ERROR only for the service's faults; and
 * the call's log lines carry the ids of that span. The SDK and the grpc instrumentation
 * are the services' own (startTelemetry), the handlers small generators behind the real adapters.
 */
import { createRequire } from 'node:module';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { analyseTraces, type SpanRecord } from '../shared/telemetry/analysis';
import { startTraceReceiver, type TraceReceiver } from '../shared/telemetry/collector';
import { shutdownTelemetry, startTelemetry } from '../shared/telemetry/sdk';
import { VlmError, throwIfAborted } from '../shared/errors';
import { recordingLogger, type LogLine } from './core-helpers';
import { eventually, sleep } from './service-helpers';

type Grpc = typeof import('@grpc/grpc-js');
type Modules = {
  server: typeof import('../services/common/grpc-server');
  adapters: typeof import('../services/common/server-stream');
  traced: typeof import('../shared/telemetry/traced-stream');
  vision: typeof import('../gen/vlm/v1/vision_service');
};

/** A TCP proxy to `target` that, once held, stops reading what the server sends (the client's bytes still pass). */
async function holdingProxy(target: string): Promise<{ address: string; hold(): void; close(): void }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const upstreams: net.Socket[] = [];
  let held = false;
  const proxy = net.createServer((downstream) => {
    const upstream = net.connect(port, host);
    upstreams.push(upstream);
    downstream.pipe(upstream);
    upstream.on('data', (data) => {
      if (!held) downstream.write(data);
    });
    const close = () => (upstream.destroy(), downstream.destroy());
    upstream.on('error', close).on('close', close);
    downstream.on('error', close).on('close', close);
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(proxy.address() as net.AddressInfo).port}`,
    hold: () => {
      held = true;
      for (const u of upstreams) u.pause();
    },
    close: () => {
      for (const u of upstreams) u.destroy();
      proxy.close();
    },
  };
}

describe('the server span of a call that ended without our status', () => {
  let receiver: TraceReceiver;
  const spans: SpanRecord[] = [];
  const lines: LogLine[] = [];
  let grpc: Grpc;
  let server: InstanceType<Modules['server']['GrpcServer']>;
  let client: InstanceType<Modules['vision']['VisionServiceClient']>;
  let m: Modules;
  let address: string;

  beforeAll(async () => {
    receiver = await startTraceReceiver({ port: 0, onSpans: (s) => spans.push(...s) });
    Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_METRICS_EXPORTER: 'none', OTEL_BSP_SCHEDULE_DELAY: '50' });
    startTelemetry({ serviceName: 'vlm-vision' });
    // After the SDK, and grpc-js first: the instrumentation patches it as it is required.
    grpc = createRequire(__filename)('@grpc/grpc-js') as Grpc;
    m = {
      server: await import('../services/common/grpc-server.js'),
      adapters: await import('../services/common/server-stream.js'),
      traced: await import('../shared/telemetry/traced-stream.js'),
      vision: await import('../gen/vlm/v1/vision_service.js'),
    };
    const log = recordingLogger(lines, 'test');
    const deps = { log, defaultDeadlineMs: 30_000 };
    server = new m.server.GrpcServer({
      serviceName: 'vlm.v1.VisionService',
      definition: m.vision.VisionServiceService,
      implementation: {
        // By the image's first byte: 1 sends a chunk every 10 ms until the call ends, like a decode
        // loop checking its signal; 2 writes fifteen large chunks and returns, whatever the client
        // reads; 3 and 4 fail, the caller's fault and the service's; 5 writes past the send limit.
        encode: m.adapters.serverStream(
          m.traced.tracedStream({}, () => undefined, async function* (req, ctx) {
            ctx.log.info('encoding');
            if (req.image[0] === 2) {
              // Fewer messages than the stream's buffer holds, so every write is accepted at once.
              for (let i = 0; i < 15; i++) yield { part: { $case: 'chunk', chunk: { index: i, rowOffset: i, rowCount: 1, data: Buffer.alloc(1_000_000) } } };
              return;
            }
            if (req.image[0] === 5) {
              // Past the server's 1 MiB send limit: grpc-js ends the call itself while this still runs.
              yield { part: { $case: 'chunk', chunk: { index: 0, rowOffset: 0, rowCount: 1, data: Buffer.alloc(2_000_000) } } };
              for (;;) {
                throwIfAborted(ctx.signal);
                await sleep(10);
              }
            }
            if (req.image[0] === 3) throw new VlmError('INVALID_ARGUMENT', 'image: not a PNG, JPEG or WebP');
            if (req.image[0] === 4) throw new VlmError('UNAVAILABLE', 'the model is reloading');
            for (let i = 0; ; i++) {
              throwIfAborted(ctx.signal);
              yield { part: { $case: 'chunk', chunk: { index: i, rowOffset: i, rowCount: 1, data: Buffer.alloc(8) } } };
              await sleep(10);
            }
          }),
          deps,
        ),
        getModelInfo: m.adapters.unary(async (_req, ctx) => {
          await new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)));
          return { model: undefined };
        }, deps),
      },
      protoFiles: ['vlm/v1/vision_service.proto'],
      log,
      maxReceiveMessageBytes: 1 << 20,
      maxSendMessageBytes: 1 << 20,
      auth: null,
      shutdownGraceMs: 1000,
    });
    address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    client = new m.vision.VisionServiceClient(address, grpc.credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    await server?.stop();
    await shutdownTelemetry();
    await receiver?.close();
  });

  /** The server span above the `vlm.request` span of the call with this request id, once exported. */
  const serverSpan = async (requestId: string): Promise<SpanRecord> => {
    const find = () => {
      const request = spans.find((s) => s.name === 'vlm.request' && s.attributes['vlm.request_id'] === requestId);
      return request && spans.find((s) => s.spanId === request.parentSpanId);
    };
    await eventually(() => find() !== undefined, 5000);
    return find()!;
  };

  it('a stream the client cancels: the server span ends with CANCELLED (status UNSET: the caller did it), the trace has one root', async () => {
    const metadata = new grpc.Metadata();
    metadata.set('x-request-id', 'cancel-1');
    const call = client.encode({ image: Buffer.from([1]), policy: undefined, limits: undefined }, metadata);
    call.on('error', () => undefined);
    await new Promise((resolve) => call.once('data', resolve));
    call.cancel();

    const span = await serverSpan('cancel-1');
    expect(span).toMatchObject({ name: 'grpc.vlm.v1.VisionService/Encode', kind: 'SERVER', attributes: { 'rpc.grpc.status_code': grpc.status.CANCELLED, 'error.type': 'CANCELLED', 'grpc.error_name': 'CANCELLED', 'grpc.error_message': 'the client cancelled the request' } });
    expect(span.status.code).toBe('UNSET');
    const request = spans.find((s) => s.parentSpanId === span.spanId && s.name === 'vlm.request')!;
    expect(request.attributes['error.type']).toBe('CANCELLED');
    // Ended after the handler's own spans, not at the cancel while they still ran.
    expect(BigInt(request.endTimeUnixNano) <= BigInt(span.endTimeUnixNano)).toBe(true);
    await eventually(() => spans.some((s) => s.traceId === span.traceId && s.kind === 'CLIENT'));
    // The caller's side of the call names its outcome too (and stays ERROR: a client span fails on any code).
    expect(spans.find((s) => s.traceId === span.traceId && s.kind === 'CLIENT')).toMatchObject({ attributes: { 'rpc.grpc.status_code': grpc.status.CANCELLED, 'error.type': 'CANCELLED' }, status: { code: 'ERROR' } });
    const { report, trees } = analyseTraces(spans.filter((s) => s.traceId === span.traceId));
    expect(trees[0]!.root.span.kind).toBe('CLIENT');
    expect(report.warnings).toEqual([]);
  });

  it("a stream whose deadline passes: the server span ends with DEADLINE_EXCEEDED and status ERROR (the service did not finish in time)", async () => {
    const metadata = new grpc.Metadata();
    metadata.set('x-request-id', 'deadline-1');
    const call = client.encode({ image: Buffer.from([1]), policy: undefined, limits: undefined }, metadata, { deadline: Date.now() + 300 });
    call.on('error', () => undefined);
    await new Promise((resolve) => call.on('status', resolve));

    const span = await serverSpan('deadline-1');
    expect(span).toMatchObject({ kind: 'SERVER', attributes: { 'rpc.grpc.status_code': grpc.status.DEADLINE_EXCEEDED, 'error.type': 'DEADLINE_EXCEEDED', 'grpc.error_name': 'DEADLINE_EXCEEDED' } });
    expect(span.attributes['grpc.error_message']).toMatch(/deadline/i);
    expect(span.status.code).toBe('ERROR');
  });

  it('a call that succeeds: OK, and its spans nest on one sub-millisecond clock (the request inside its server span)', async () => {
    const metadata = new grpc.Metadata();
    metadata.set('x-request-id', 'ok-1');
    const call = client.encode({ image: Buffer.from([2]), policy: undefined, limits: undefined }, metadata);
    call.on('data', () => undefined);
    await new Promise((resolve) => call.on('status', resolve));
    const span = await serverSpan('ok-1');
    const request = spans.find((s) => s.parentSpanId === span.spanId && s.name === 'vlm.request')!;
    expect(span.attributes['rpc.grpc.status_code']).toBe(grpc.status.OK);
    const [start, end] = [BigInt(span.startTimeUnixNano), BigInt(span.endTimeUnixNano)];
    expect(start <= BigInt(request.startTimeUnixNano) && BigInt(request.endTimeUnixNano) <= end).toBe(true);
    // The SDK started the server span at a whole millisecond of Date.now(); it is restarted on the workers' clock.
    expect([start, BigInt(request.startTimeUnixNano)].some((t) => t % 1_000_000n !== 0n)).toBe(true);
  });

  it('a stream the client cancels after the handler returned, its last messages still unsent: the server span still ends, CANCELLED', async () => {
    // Through a proxy that stops passing the server's bytes on: the 15 MB the handler wrote wait on the
    // network after it has returned and the call has been ended, until the client's cancel gets through.
    const held = await holdingProxy(address);
    const slow = new m.vision.VisionServiceClient(held.address, grpc.credentials.createInsecure());
    try {
      await new Promise<void>((resolve, reject) => slow.waitForReady(Date.now() + 5000, (err) => (err ? reject(err) : resolve())));
      held.hold();
      const metadata = new grpc.Metadata();
      metadata.set('x-request-id', 'late-cancel-1');
      const call = slow.encode({ image: Buffer.from([2]), policy: undefined, limits: undefined }, metadata);
      call.on('error', () => undefined);
      await eventually(() => spans.some((s) => s.name === 'vlm.request' && s.attributes['vlm.request_id'] === 'late-cancel-1'), 5000);
      await sleep(100);
      call.cancel();

      const span = await serverSpan('late-cancel-1');
    expect(span).toMatchObject({ kind: 'SERVER', attributes: { 'rpc.grpc.status_code': grpc.status.CANCELLED, 'error.type': 'CANCELLED' } });
      expect(span.status.code).toBe('UNSET');
    } finally {
      slow.close();
      held.close();
    }
  });

  it.each([
    [3, 'INVALID_ARGUMENT', 'image: not a PNG, JPEG or WebP', 'UNSET'],
    [4, 'UNAVAILABLE', 'the model is reloading', 'ERROR'],
  ] as const)('a stream the handler fails (%i): the server span carries error.type %s and the message, ERROR only for the service\'s fault', async (first, code, message, status) => {
    const metadata = new grpc.Metadata();
    metadata.set('x-request-id', `failed-${first}`);
    const call = client.encode({ image: Buffer.from([first]), policy: undefined, limits: undefined }, metadata);
    const received = await new Promise<{ code: number; details: string }>((resolve) => call.on('error', resolve));
    expect(received).toMatchObject({ code: grpc.status[code], details: message });

    const span = await serverSpan(`failed-${first}`);
    expect(span.attributes).toMatchObject({ 'rpc.grpc.status_code': grpc.status[code], 'error.type': code, 'grpc.error_message': message, 'grpc.error_name': code });
    expect(span.status.code).toBe(status);
  });

  it('a stream grpc-js ends itself while the handler runs (a response past the send limit): the server span records that status', async () => {
    const metadata = new grpc.Metadata();
    metadata.set('x-request-id', 'too-large-1');
    const call = client.encode({ image: Buffer.from([5]), policy: undefined, limits: undefined }, metadata);
    call.on('data', () => undefined);
    const received = await new Promise<{ code: number }>((resolve) => call.on('error', resolve));
    expect(received.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    const span = await serverSpan('too-large-1');
    expect(span.attributes).toMatchObject({ 'rpc.grpc.status_code': grpc.status.RESOURCE_EXHAUSTED, 'error.type': 'RESOURCE_EXHAUSTED' });
  });

  it('a unary call the client cancels: its server span is exported too', async () => {
    const before = spans.length;
    const call = client.getModelInfo({}, (err) => err);
    // Cancelled once the handler runs: a cancel that beats the call to the server makes no server span.
    await eventually(() => server.activeCalls === 1, 5000, 2);
    call.cancel();
    await eventually(() => spans.slice(before).some((s) => s.kind === 'SERVER' && s.name === 'grpc.vlm.v1.VisionService/GetModelInfo'), 5000);
    const span = spans.slice(before).find((s) => s.kind === 'SERVER' && s.name === 'grpc.vlm.v1.VisionService/GetModelInfo')!;
    expect(span.attributes).toMatchObject({ 'rpc.grpc.status_code': grpc.status.CANCELLED, 'error.type': 'CANCELLED' });
  });

  it("a call's log lines carry the trace and span ids of its server span", async () => {
    const span = await serverSpan('cancel-1');
    const line = lines.find((l) => l['msg'] === 'encoding' && l['requestId'] === 'cancel-1');
    expect(line).toMatchObject({ trace_id: span.traceId, span_id: span.spanId });
    // The access log's line too, though it is written when the status goes out, outside the span.
    await eventually(() => lines.some((l) => l['msg'] === 'call' && l['requestId'] === 'cancel-1'));
    expect(lines.find((l) => l['msg'] === 'call' && l['requestId'] === 'cancel-1')).toMatchObject({ code: 'CANCELLED', trace_id: span.traceId, span_id: span.spanId });
  });
});
