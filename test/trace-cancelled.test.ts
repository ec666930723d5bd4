/**
 * Must show: a call that grpc-js ends without a status from us (the client cancelled, or its deadline
 * passed) still exports its gRPC server span, ended with the code it ended with, so the trace keeps
 * its root; and the call's log lines carry the ids of that span. The SDK and the grpc instrumentation
 * are the services' own (startTelemetry), the handlers small generators behind the real adapters.
 */
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { analyseTraces, type SpanRecord } from '../shared/telemetry/analysis';
import { startTraceReceiver, type TraceReceiver } from '../shared/telemetry/collector';
import { shutdownTelemetry, startTelemetry } from '../shared/telemetry/sdk';
import { throwIfAborted } from '../shared/errors';
import { recordingLogger, type LogLine } from './core-helpers';
import { eventually, sleep } from './service-helpers';

type Grpc = typeof import('@grpc/grpc-js');
type Modules = {
  server: typeof import('../services/common/grpc-server');
  adapters: typeof import('../services/common/server-stream');
  traced: typeof import('../shared/telemetry/traced-stream');
  vision: typeof import('../gen/vlm/v1/vision_service');
};

describe('the server span of a call that ended without our status', () => {
  let receiver: TraceReceiver;
  const spans: SpanRecord[] = [];
  const lines: LogLine[] = [];
  let grpc: Grpc;
  let server: InstanceType<Modules['server']['GrpcServer']>;
  let client: InstanceType<Modules['vision']['VisionServiceClient']>;

  beforeAll(async () => {
    receiver = await startTraceReceiver({ port: 0, onSpans: (s) => spans.push(...s) });
    Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_METRICS_EXPORTER: 'none', OTEL_BSP_SCHEDULE_DELAY: '50' });
    startTelemetry({ serviceName: 'vlm-vision' });
    // After the SDK, and grpc-js first: the instrumentation patches it as it is required.
    grpc = createRequire(__filename)('@grpc/grpc-js') as Grpc;
    const m: Modules = {
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
        // Sends one chunk, then works until the call ends, like a decode loop checking its signal.
        encode: m.adapters.serverStream(
          m.traced.tracedStream({}, () => undefined, async function* (_req, ctx) {
            ctx.log.info('encoding');
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
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
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
    expect(span).toMatchObject({ name: 'grpc.vlm.v1.VisionService/Encode', kind: 'SERVER', attributes: { 'rpc.grpc.status_code': grpc.status.CANCELLED, 'error.type': 'CANCELLED' } });
    expect(span.status.code).toBe('UNSET');
    const request = spans.find((s) => s.parentSpanId === span.spanId && s.name === 'vlm.request')!;
    expect(request.attributes['error.type']).toBe('CANCELLED');
    await eventually(() => spans.some((s) => s.traceId === span.traceId && s.kind === 'CLIENT'));
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
    expect(span).toMatchObject({ kind: 'SERVER', attributes: { 'rpc.grpc.status_code': grpc.status.DEADLINE_EXCEEDED } });
    expect(span.status.code).toBe('ERROR');
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
