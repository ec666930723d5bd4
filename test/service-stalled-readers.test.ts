/**
 * Clients that stop reading. grpc-js sends a call's status only after the responses buffered before
 * it, which a client whose HTTP/2 window stays shut never takes: without a bound the call would keep
 * its place in flight and its buffered responses until the connection ages out. A call not over a
 * grace period after its deadline has its stream reset; reflection streams are also bounded in number
 * and lifetime (services/common/stalled-calls.ts, Admission.reflectionCall).
 */
import { connect, constants as h2, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { credentials, Metadata, status as GrpcCode } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { GrpcServer } from '../services/common/grpc-server';
import { REFLECTION_STREAMS_MAX, REFLECTION_STREAMS_PER_PEER } from '../services/common/admission';
import { serverStream, unary } from '../services/common/server-stream';
import { VisionServiceClient, VisionServiceService, type EncodeResponse, type VisionServiceServer } from '../gen/vlm/v1/vision_service';
import { connectFrom, eventually, rawCall } from './service-helpers';
import { recordingLogger, type LogLine } from './reliability-helpers';

const MiB = 1 << 20;
const REFLECTION = '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo';
/** A ServerReflectionRequest asking list_services (field 7, empty), framed. */
const LIST_SERVICES = Buffer.from([0, 0, 0, 0, 2, 0x3a, 0x00]);
/** An empty EncodeRequest, framed. */
const EMPTY_REQUEST = Buffer.alloc(5);

/** A vision shell whose Encode answers 20 chunks of 1 MiB: far more than an HTTP/2 window holds. */
function startServer(options: { deadlineMs: number; maxDeadlineMs?: number; graceMs?: number; reflectionLifetimeMs?: number }) {
  const lines: LogLine[] = [];
  const log = recordingLogger(lines, 'shell');
  const deps = { log, defaultDeadlineMs: options.deadlineMs, maxDeadlineMs: options.maxDeadlineMs };
  const implementation: VisionServiceServer = {
    encode: serverStream(async function* () {
      for (let i = 0; i < 20; i++) yield { part: { $case: 'chunk', chunk: { index: i, rowOffset: 0, rowCount: 0, data: Buffer.alloc(MiB) } } } as EncodeResponse;
    }, deps),
    getModelInfo: unary(async () => ({ model: undefined }), deps),
  };
  const server = new GrpcServer({
    serviceName: 'vlm.v1.VisionService',
    definition: VisionServiceService,
    implementation,
    protoFiles: ['vlm/v1/vision_service.proto'],
    log,
    maxReceiveMessageBytes: 8 * MiB,
    maxSendMessageBytes: 4 * MiB,
    auth: null,
    shutdownGraceMs: 1000,
    defaultDeadlineMs: options.deadlineMs,
    maxDeadlineMs: options.maxDeadlineMs,
    stalledStatusGraceMs: options.graceMs ?? 300,
    reflectionLifetimeMs: options.reflectionLifetimeMs,
  });
  return { server, lines };
}

/** An Encode whose responses the client never reads (its stream paused: the window stays shut). */
function unreadEncode(session: ClientHttp2Session, headers: Record<string, string> = {}): ClientHttp2Stream {
  const stream = session.request({ ':method': 'POST', ':path': '/vlm.v1.VisionService/Encode', 'content-type': 'application/grpc', te: 'trailers', ...headers });
  stream.on('error', () => undefined);
  stream.pause();
  stream.end(EMPTY_REQUEST);
  return stream;
}

function closed(stream: ClientHttp2Stream): Promise<number> {
  return new Promise((resolve) => (stream.closed ? resolve(stream.rstCode ?? -1) : stream.once('close', () => resolve(stream.rstCode ?? -1))));
}

async function getModelInfo(address: string): Promise<number> {
  const client = new VisionServiceClient(address, credentials.createInsecure());
  try {
    return await new Promise((resolve) => client.getModelInfo({}, new Metadata(), (err) => resolve(err?.code ?? GrpcCode.OK)));
  } finally {
    client.close();
  }
}

describe('a client that stops reading its responses', () => {
  it.each([
    ['the service\'s default deadline (the call carries none)', {}, 60_000],
    ['its own deadline (grpc-js\'s deadline status waits behind the same data)', { 'grpc-timeout': '1000m' }, 60_000],
    // Its handler is ended at the service's longest deadline, and so must its stream be.
    ["the service's longest deadline (--max-deadline-ms; the call carries a longer one)", { 'grpc-timeout': '40S' }, 1000],
  ])('has its call reset once %s and the grace have passed: it no longer counts in flight, and the next call is answered', async (_, headers, maxDeadlineMs) => {
    const { server, lines } = startServer({ deadlineMs: 1000, maxDeadlineMs });
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    const session = connect(`http://127.0.0.1:${port}`);
    try {
      const started = performance.now();
      const stream = unreadEncode(session, headers);
      await eventually(() => server.activeCalls === 1, 2000);
      expect(await closed(stream)).toBe(h2.NGHTTP2_CANCEL);
      // Not before the deadline and the grace: a client that is merely slow gets its whole answer.
      expect(performance.now() - started).toBeGreaterThanOrEqual(1000 + 300 - 50);
      await eventually(() => server.activeCalls === 0, 2000);
      expect(lines.some((l) => l.level === 'warn' && /past its deadline and its status cannot go out/.test(String(l.msg)) && l['method'] === '/vlm.v1.VisionService/Encode')).toBe(true);
      expect(await getModelInfo(`127.0.0.1:${port}`)).toBe(GrpcCode.OK);
    } finally {
      session.destroy();
      await server.stop();
    }
  }, 20_000);

  it.each([
    ['10 s', 10_000],
    ['the longest a timer holds (2^31 - 1 ms: a later reset time is reached in steps, not fired at once)', 2 ** 31 - 1],
  ])('is not reset while it reads, however late it starts, under a default deadline of %s: all 20 MiB and OK', async (_, deadlineMs) => {
    const { server } = startServer({ deadlineMs });
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    const session = connect(`http://127.0.0.1:${port}`);
    try {
      const stream = unreadEncode(session);
      let bytes = 0;
      stream.on('data', (d: Buffer) => (bytes += d.length));
      const status = new Promise<string | undefined>((resolve) => stream.on('trailers', (t) => resolve(t['grpc-status'] as string | undefined)));
      await new Promise((r) => setTimeout(r, 500));
      stream.resume();
      expect(await status).toBe('0');
      expect(bytes).toBeGreaterThanOrEqual(20 * MiB);
      expect(await closed(stream)).toBe(h2.NGHTTP2_NO_ERROR);
    } finally {
      session.destroy();
      await server.stop();
    }
  }, 20_000);
});

describe('reflection streams', () => {
  it(`are open ${REFLECTION_STREAMS_PER_PEER} at a time per client address and ${REFLECTION_STREAMS_MAX} in all (one more is refused at its headers), closed after their lifetime, and answer again after`, async () => {
    const { server } = startServer({ deadlineMs: 10_000, reflectionLifetimeMs: 3000 });
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    // Three clients, told apart by their addresses on the loopback network.
    const [a, b, c] = ['127.0.0.1', '127.0.0.2', '127.0.0.3'].map((localAddress) => connectFrom(port, localAddress));
    try {
      // A stream has been admitted once it has answered its first request.
      const answered = (calls: ReturnType<typeof rawCall>[]) => Promise.all(calls.map((call) => new Promise((resolve) => call.stream.once('data', resolve))));
      const open = Array.from({ length: REFLECTION_STREAMS_PER_PEER }, () => rawCall(a!, REFLECTION, { write: LIST_SERVICES }));
      await answered(open);
      expect(await rawCall(a!, REFLECTION, { write: LIST_SERVICES }).status).toEqual({ code: GrpcCode.RESOURCE_EXHAUSTED, message: `${REFLECTION_STREAMS_PER_PEER} reflection streams from this address are open already; retry later` });
      const fromB = Array.from({ length: REFLECTION_STREAMS_MAX - REFLECTION_STREAMS_PER_PEER }, () => rawCall(b!, REFLECTION, { write: LIST_SERVICES }));
      await answered(fromB);
      open.push(...fromB);
      expect(await rawCall(c!, REFLECTION, { write: LIST_SERVICES }).status).toEqual({ code: GrpcCode.RESOURCE_EXHAUSTED, message: `${REFLECTION_STREAMS_MAX} reflection streams are open already; retry later` });
      for (const { status } of open) expect(await status).toEqual({ code: GrpcCode.DEADLINE_EXCEEDED, message: 'reflection streams are closed after 3 s; open another for more requests' });
      const again = rawCall(a!, REFLECTION, { write: LIST_SERVICES });
      const answer = await new Promise<Buffer>((resolve) => again.stream.once('data', resolve));
      expect(answer.toString('latin1')).toContain('vlm.v1.VisionService');
      again.stream.close();
    } finally {
      for (const session of [a, b, c]) session!.destroy();
      await server.stop();
    }
  }, 20_000);

  it.each([
    ['', {}],
    [', whatever deadline they claim', { 'grpc-timeout': '1H' }],
  ])('that keep asking without reading the answers are reset after their lifetime and the grace%s, and no longer count', async (_, headers) => {
    const { server } = startServer({ deadlineMs: 10_000, reflectionLifetimeMs: 1000 });
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    const session = connect(`http://127.0.0.1:${port}`);
    try {
      const started = performance.now();
      const stream = session.request({ ':method': 'POST', ':path': REFLECTION, 'content-type': 'application/grpc', te: 'trailers', ...headers }, { endStream: false });
      stream.on('error', () => undefined);
      stream.pause();
      // 5,000 questions: their answers overflow the window many times over.
      stream.write(Buffer.concat(Array.from({ length: 5000 }, () => LIST_SERVICES)));
      expect(await closed(stream)).toBe(h2.NGHTTP2_CANCEL);
      expect(performance.now() - started).toBeLessThan(10_000);
      // Its place is free again: this address's share may open.
      const next = Array.from({ length: REFLECTION_STREAMS_PER_PEER }, () => rawCall(session, REFLECTION, { write: LIST_SERVICES }));
      for (const { stream: s } of next) await new Promise((resolve) => s.once('data', resolve));
      for (const { stream: s } of next) s.close();
    } finally {
      session.destroy();
      await server.stop();
    }
  }, 20_000);
});
