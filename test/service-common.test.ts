/**
 * The shell both services share, over real gRPC on loopback: the stream adapter (backpressure,
 * cancellation, deadlines, exactly one status), the error mapping with BadRequest details, the
 * interceptors, health, reflection and the graceful stop. The handlers here are small generators
 * written for the test; the services' own handlers are tested in service-pair.test.ts.
 */
import { EventEmitter } from 'node:events';
import { connect } from 'node:http2';
import { Client, credentials, Metadata, Server, status as GrpcCode, type ClientReadableStream, type ServerWritableStream, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VlmError, throwIfAborted } from '../shared/errors';
import { createLogger, type Logger } from '../shared/log';
import { deadlineOf, type CallContext } from '../services/common/call-context';
import { GrpcServer } from '../services/common/grpc-server';
import { boundedTimeoutHeader } from '../services/common/grpc-timeout';
import { BearerTokens } from '../services/common/bearer-tokens';
import { singleToken } from '../shared/auth-tokens';
import { ACCESS_LOG_REFUSALS_PER_SECOND } from '../services/common/interceptors';
import { Admission, peerHost, SharedPlaces } from '../services/common/admission';
import { LineRate } from '../services/common/log-rate';
import { ActiveCalls } from '../services/common/active-calls';
import { drainedOrLast, serverStream, StreamComplete, unary } from '../services/common/server-stream';
import { decodeStatusDetails, decodeViolations, fromServiceError } from '../services/common/status';
import {
  VisionServiceClient,
  VisionServiceService,
  type EncodeRequest,
  type EncodeResponse,
  type VisionServiceServer,
} from '../gen/vlm/v1/vision_service';
import { bindLoopback, collect, eventually, healthClient, healthStatus, metadataWith, partialMessage, rawCall, reflectedServices, sleep, rateWindowsSince } from './service-helpers';
import { recordingLogger, type LogLine } from './core-helpers';
import { filesWithImports, reflectionDefinition } from '../services/common/reflection';
import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';

const log = createLogger('test');
const CHUNK_BYTES = 1 << 20;

/** What the test handlers observed, keyed by the request's first image byte. */
const observed = new Map<number, { aborted?: string; finished?: boolean; produced: number }>();
/** Mode 7 answers only once released: set when its handler has started, cleared by release(). */
let releaseHeld: (() => void) | undefined;

/** Lets the mode-7 call in flight answer, once its handler has started (its headers alone count as in flight). */
async function release(): Promise<void> {
  await eventually(() => releaseHeld !== undefined, 5000, 2);
  const r = releaseHeld!;
  releaseHeld = undefined;
  r();
}

function chunk(index: number, data: Buffer): EncodeResponse {
  return { part: { $case: 'chunk', chunk: { index, rowOffset: index, rowCount: 1, data } } };
}

/** The test's "encode": behaviour chosen by image[0]. */
async function* behaviour(req: EncodeRequest, ctx: CallContext): AsyncGenerator<EncodeResponse> {
  const mode = req.image[0] ?? 0;
  const seen = { produced: 0 } as { aborted?: string; finished?: boolean; produced: number };
  observed.set(mode, seen);
  ctx.signal.addEventListener('abort', () => (seen.aborted = (ctx.signal.reason as VlmError).code));
  try {
    switch (mode) {
      case 1: // 32 chunks of 1 MiB: more than any socket buffer, so write() must report backpressure.
        for (let i = 0; i < 32; i++) {
          seen.produced++;
          yield chunk(i, Buffer.alloc(CHUNK_BYTES, i));
        }
        return;
      case 2:
        throw new VlmError('INVALID_ARGUMENT', 'image: 3 bytes is not an image', {
          violations: [{ field: 'image', description: 'not a PNG, JPEG, WebP, GIF, TIFF or AVIF image' }],
        });
      case 3:
        throw new Error('ENOENT: /secret/path/weights.onnx');
      case 4: // runs until cancelled, like a long decode loop checking the signal between steps
        for (let i = 0; ; i++) {
          throwIfAborted(ctx.signal);
          seen.produced++;
          yield chunk(i, Buffer.alloc(16));
          await sleep(10);
        }
      case 5: // silent work that only stops on the signal
        await new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)));
        return;
      case 6: // a stream that has sent data, then fails
        yield chunk(0, Buffer.alloc(8));
        throw new VlmError('RESOURCE_EXHAUSTED', 'the queue is full (16 waiting); retry later');
      case 7: // held until the test releases it
        await new Promise<void>((resolve) => (releaseHeld = resolve));
        yield chunk(0, Buffer.alloc(8));
        return;
      default:
        yield chunk(0, Buffer.from(ctx.requestId));
    }
  } finally {
    seen.finished = true;
  }
}

function startServer(options: { authToken?: string | null; tokens?: BearerTokens; defaultDeadlineMs?: number; maxDeadlineMs?: number; graceMs?: number; maxInFlightCalls?: number; log?: Logger } = {}) {
  const calls = new ActiveCalls();
  const deps = { log, defaultDeadlineMs: options.defaultDeadlineMs ?? 30_000, maxDeadlineMs: options.maxDeadlineMs, calls };
  const implementation: VisionServiceServer = {
    encode: serverStream(behaviour, deps),
    getModelInfo: unary(async (_req, ctx) => {
      if (ctx.metadata.get('fail')[0] === 'yes') throw VlmError.invalid('model', 'no such model');
      return { model: undefined };
    }, deps),
  };
  return new GrpcServer({
    serviceName: 'vlm.v1.VisionService',
    definition: VisionServiceService,
    implementation,
    protoFiles: ['vlm/v1/vision_service.proto'],
    log: options.log ?? log,
    maxReceiveMessageBytes: 8 << 20,
    maxSendMessageBytes: 4 << 20,
    auth: options.tokens ?? (options.authToken ? new BearerTokens(singleToken(options.authToken)!, log) : null),
    shutdownGraceMs: options.graceMs ?? 5000,
    maxInFlightCalls: options.maxInFlightCalls,
    lightMethods: [VisionServiceService.getModelInfo.path],
    activeCalls: calls,
  });
}

/** A server started with `options` on a loopback port and a client of it, both closed once `use` is done. */
async function withServer<T>(options: Parameters<typeof startServer>[0], use: (s: { port: number; client: VisionServiceClient }) => Promise<T>): Promise<T> {
  const server = startServer(options);
  const port = await server.listen('127.0.0.1', 0);
  const client = new VisionServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
  try {
    return await use({ port, client });
  } finally {
    client.close();
    await server.stop();
  }
}

function encode(client: VisionServiceClient, mode: number, options: { deadlineMs?: number; metadata?: Metadata } = {}) {
  const deadline = options.deadlineMs === undefined ? undefined : Date.now() + options.deadlineMs;
  return client.encode({ image: Buffer.from([mode]), policy: undefined, limits: undefined }, options.metadata ?? new Metadata(), { deadline });
}

describe('the service shell over loopback gRPC', () => {
  let server: GrpcServer;
  let address: string;
  let client: VisionServiceClient;

  beforeAll(async () => {
    server = startServer();
    address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    client = new VisionServiceClient(address, credentials.createInsecure());
  });
  afterAll(async () => {
    client.close();
    await server.stop();
  });

  it('reports NOT_SERVING until the owner says it is ready, then SERVING for "" and the service', async () => {
    expect(await healthStatus(address)).toBe('NOT_SERVING');
    server.setServing(true);
    expect(await healthStatus(address)).toBe('SERVING');
    expect(await healthStatus(address, 'vlm.v1.VisionService')).toBe('SERVING');
  });

  it('lists the API, health and reflection through server reflection', async () => {
    const names = await reflectedServices(address);
    expect(names).toEqual(expect.arrayContaining(['vlm.v1.VisionService', 'grpc.health.v1.Health']));
  });

  it('still describes the API, without comments and with a warning, when the built descriptor set is missing', () => {
    const lines: LogLine[] = [];
    const def = reflectionDefinition(['vlm/v1/vision_service.proto'], recordingLogger(lines, 'server'), '/nonexistent/descriptors.binpb');
    const names = Object.values(def).flatMap((d) => ((d as { fileDescriptorProtos?: Buffer[] }).fileDescriptorProtos ?? []).map((b) => fromBinary(FileDescriptorProtoSchema, b).name));
    expect(new Set(names)).toEqual(new Set(['vlm_v1.proto', 'grpc_health_v1.proto']));
    expect(lines).toEqual([expect.objectContaining({ level: 'warn', msg: 'reflection serves the API without its comments', reason: expect.stringContaining('/nonexistent/descriptors.binpb does not exist') })]);
  });

  it('refuses to describe an import the descriptor set lacks, naming it', () => {
    expect(() => filesWithImports([], ['vlm/v1/vision_service.proto'])).toThrow('vlm/v1/vision_service.proto is not in the descriptor set');
  });

  it('streams 32 MiB to a slow reader in order, waiting for drain instead of buffering', async () => {
    const stream = encode(client, 1);
    const indices: number[] = [];
    let bytes = 0;
    let producedWhenFirstRead = 0;
    stream.on('data', (m: EncodeResponse) => {
      if (indices.length === 0) producedWhenFirstRead = observed.get(1)!.produced;
      if (m.part?.$case === 'chunk') {
        indices.push(m.part.chunk.index);
        bytes += m.part.chunk.data.length;
      }
      stream.pause();
      setTimeout(() => stream.resume(), 5);
    });
    // 'end' (not 'status'): a paused stream still holds data when the status arrives.
    await new Promise<void>((resolve, reject) => {
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    expect(indices).toEqual([...Array(32).keys()]);
    expect(bytes).toBe(32 * CHUNK_BYTES);
    // With backpressure the producer cannot run far ahead of the first read.
    expect(producedWhenFirstRead).toBeLessThan(32);
  });

  it('sends INVALID_ARGUMENT with the message and google.rpc.BadRequest field violations', async () => {
    const { messages, error } = await collect(encode(client, 2));
    expect(messages).toEqual([]);
    expect(error?.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(error?.details).toBe('image: 3 bytes is not an image');
    expect(decodeViolations(error?.metadata)).toEqual([{ field: 'image', description: 'not a PNG, JPEG, WebP, GIF, TIFF or AVIF image' }]);
    const relayed = fromServiceError(error!);
    expect(relayed.code).toBe('INVALID_ARGUMENT');
    expect(relayed.violations).toHaveLength(1);
  });

  it('turns an unknown error into INTERNAL "internal error" without leaking its message', async () => {
    const { error } = await collect(encode(client, 3));
    expect(error?.code).toBe(GrpcCode.INTERNAL);
    expect(error?.details).toBe('internal error');
    expect(JSON.stringify(error?.metadata.getMap())).not.toContain('secret');
  });

  it('ends a stream that already sent data with the error status, after that data', async () => {
    const { messages, error } = await collect(encode(client, 6));
    expect(messages).toHaveLength(1);
    expect(error?.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    expect(error?.details).toBe('the queue is full (16 waiting); retry later');
  });

  it('stops the handler when the client cancels', async () => {
    const stream = encode(client, 4);
    stream.on('error', () => undefined);
    await eventually(() => (observed.get(4)?.produced ?? 0) >= 3);
    stream.cancel();
    await eventually(() => observed.get(4)?.finished === true, 2000);
    expect(observed.get(4)!.aborted).toBe('CANCELLED');
  });

  it("aborts the handler's work with DEADLINE_EXCEEDED when the client's deadline passes", async () => {
    const { error } = await collect(encode(client, 5, { deadlineMs: 300 }));
    expect(error?.code).toBe(GrpcCode.DEADLINE_EXCEEDED);
    // The handler only ends when its signal aborts: its reason says the deadline did it.
    await eventually(() => observed.get(5)?.finished === true, 2000);
    expect(observed.get(5)!.aborted).toBe('DEADLINE_EXCEEDED');
  });

  it('echoes a well-formed x-request-id and gives the handler the same id', async () => {
    const stream = encode(client, 0, { metadata: metadataWith({ 'x-request-id': 'req-42' }) });
    const header = new Promise<Metadata>((r) => stream.on('metadata', r));
    const { messages } = await collect(stream);
    expect((await header).get('x-request-id')).toEqual(['req-42']);
    expect(messages[0]?.part?.$case === 'chunk' && messages[0].part.chunk.data.toString()).toBe('req-42');
  });

  it('keeps a malformed x-request-id with its other characters turned into dashes, and generates one when none is sent', async () => {
    const stream = encode(client, 0, { metadata: metadataWith({ 'x-request-id': 'bad id/with spaces' }) });
    const header = new Promise<Metadata>((r) => stream.on('metadata', r));
    await collect(stream);
    expect((await header).get('x-request-id')).toEqual(['bad-id-with-spaces']);
    const none = encode(client, 0, { metadata: metadataWith({ 'x-request-id': '  ' }) });
    const generated = new Promise<Metadata>((r) => none.on('metadata', r));
    await collect(none);
    expect(String((await generated).get('x-request-id')[0])).toMatch(/^[0-9a-f-]{36}$/);
    // nothing but refused characters would leave '-', which unrelated callers would share
    const junk = encode(client, 0, { metadata: metadataWith({ 'x-request-id': '???' }) });
    const replaced = new Promise<Metadata>((r) => junk.on('metadata', r));
    await collect(junk);
    expect(String((await replaced).get('x-request-id')[0])).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('returns the request id with an error sent before any message, in the trailers', async () => {
    const err = await new Promise<ServiceError | null>((resolve) =>
      client.getModelInfo({}, metadataWith({ fail: 'yes', 'x-request-id': 'req-err-7' }), (e) => resolve(e)),
    );
    expect(err?.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(err?.metadata.get('x-request-id')).toEqual(['req-err-7']);
  });

  it('maps errors of unary calls the same way', async () => {
    const err = await new Promise<ServiceError | null>((resolve) =>
      client.getModelInfo({}, metadataWith({ fail: 'yes' }), (e) => resolve(e)),
    );
    expect(err?.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(decodeViolations(err?.metadata)[0]?.field).toBe('model');
  });
});

describe('deadlines', () => {
  it("a call's own deadline holds even when longer than the service default; one past a timer's range never fires early", () => {
    const now = 1_000_000;
    expect(deadlineOf({ getDeadline: () => Infinity }, 200, now)).toBe(now + 200);
    expect(deadlineOf({ getDeadline: () => new Date(now + 5000) }, 200, now)).toBe(now + 5000);
    expect(deadlineOf({ getDeadline: () => now + 50 }, 200, now)).toBe(now + 50);
    const month = deadlineOf({ getDeadline: () => now + 30 * 86_400_000 }, 200, now);
    expect(month - now).toBe(2 ** 31 - 1);
  });

  it("a call's own deadline is cut to the service's longest (--max-deadline-ms), which the default never exceeds", () => {
    const now = 1_000_000;
    expect(deadlineOf({ getDeadline: () => new Date(now + 5000) }, 200, now, 3000)).toBe(now + 3000);
    expect(deadlineOf({ getDeadline: () => now + 2000 }, 200, now, 3000)).toBe(now + 2000);
    expect(deadlineOf({ getDeadline: () => Infinity }, 200, now, 3000)).toBe(now + 200);
  });

  it('a call whose deadline is past the longest ends there, told it was the service that cut it', () =>
    withServer({ defaultDeadlineMs: 200, maxDeadlineMs: 600 }, async ({ client }) => {
      const t0 = Date.now();
      const { error } = await collect(encode(client, 5, { deadlineMs: 5000 }));
      expect(error?.code).toBe(GrpcCode.DEADLINE_EXCEEDED);
      expect(error?.details).toBe("the request did not finish within 600 ms, the longest this service lets a call run (--max-deadline-ms; the call's own deadline was longer); lower max_tokens");
      expect(Date.now() - t0).toBeLessThan(4000);
    }));

  it('a deadline of 24.8 days or more (grpc-go sends 30 days as 2592000S) is cut to the longest, not ended at once', () =>
    withServer({ defaultDeadlineMs: 200, maxDeadlineMs: 600 }, async ({ port, client }) => {
      const session = connect(`http://127.0.0.1:${port}`);
      // Encode of the one-byte image [5]: silent work until the deadline.
      const silent = Buffer.from([0, 0, 0, 0, 3, 0x0a, 0x01, 5]);
      try {
        const cut = "the request did not finish within 600 ms, the longest this service lets a call run (--max-deadline-ms; the call's own deadline was longer); lower max_tokens";
        const t0 = Date.now();
        const { error } = await collect(encode(client, 5, { deadlineMs: 30 * 86_400_000 }));
        expect(error?.details).toBe(cut);
        expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
        // Over the protocol's 8 digits: grpc-js alone reads the last 8 (0 s here).
        for (const header of ['2592000S', '35791H', '100000000S']) {
          const { stream, status } = rawCall(session, VisionServiceService.encode.path, { headers: { 'grpc-timeout': header }, write: silent });
          stream.end();
          expect(await status, header).toEqual({ code: GrpcCode.DEADLINE_EXCEEDED, message: cut });
        }
      } finally {
        session.close();
      }
    }));

  it('a client that gives up at its deadline, just before the service does, is logged and counted as the deadline, as its span says', async () => {
    const lines: LogLine[] = [];
    const server = startServer({ log: recordingLogger(lines, 'vision') });
    const port = await server.listen('127.0.0.1', 0);
    const session = connect(`http://127.0.0.1:${port}`);
    try {
      // 1 s deadline; the cancel (RST_STREAM) comes at 0.9 s, within the 0.2 s the handler reads as the deadline.
      const { stream } = rawCall(session, VisionServiceService.encode.path, { headers: { 'grpc-timeout': '1000m', 'x-request-id': 'at-deadline' }, write: Buffer.from([0, 0, 0, 0, 3, 0x0a, 0x01, 5]) });
      stream.end();
      await sleep(900);
      stream.close(0x8);
      await eventually(() => lines.some((l) => l.component === 'vision.access' && l['requestId'] === 'at-deadline'), 5000);
      expect(lines.find((l) => l.component === 'vision.access' && l['requestId'] === 'at-deadline')).toMatchObject({ code: 'DEADLINE_EXCEEDED' });
      // A cancel well before the deadline stays a cancel.
      const early = rawCall(session, VisionServiceService.encode.path, { headers: { 'grpc-timeout': '5000m', 'x-request-id': 'early' }, write: Buffer.from([0, 0, 0, 0, 3, 0x0a, 0x01, 5]) });
      early.stream.end();
      await sleep(200);
      early.stream.close(0x8);
      await eventually(() => lines.some((l) => l.component === 'vision.access' && l['requestId'] === 'early'), 5000);
      expect(lines.find((l) => l.component === 'vision.access' && l['requestId'] === 'early')).toMatchObject({ code: 'CANCELLED' });
    } finally {
      session.close();
      await server.stop();
    }
  });

  it('reads every grpc-timeout grpc-js gets right as it is, and the rest as the time they mean, within the longest timer', () => {
    for (const header of ['1S', '99999999m', '2147483S', '596H', '5 S', 'abc', '', '-1S', '1.5S']) expect(boundedTimeoutHeader(header), header).toBe(header);
    expect(boundedTimeoutHeader('2147484S')).toBe('2147483S');
    expect(boundedTimeoutHeader('35791H')).toBe('2147483S');
    expect(boundedTimeoutHeader('99999999H')).toBe('2147483S');
    expect(boundedTimeoutHeader('100000000S')).toBe('2147483S');
    expect(boundedTimeoutHeader('100000000m')).toBe('100000S');
    expect(boundedTimeoutHeader('100000000u')).toBe('100000m');
    expect(boundedTimeoutHeader('999999999n')).toBe('1000m');
  });

  it('a client deadline past the default is served to its end over gRPC', () =>
    withServer({ defaultDeadlineMs: 200 }, async ({ client }) => {
      const t0 = Date.now();
      const { error } = await collect(encode(client, 5, { deadlineMs: 1500 }));
      expect(error?.code).toBe(GrpcCode.DEADLINE_EXCEEDED);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
    }));
});

describe('a call without a deadline', () => {
  it("gets the service's default deadline, answered with DEADLINE_EXCEEDED by the service", () =>
    withServer({ defaultDeadlineMs: 200 }, async ({ client }) => {
      const { error } = await collect(encode(client, 5));
      expect(error?.code).toBe(GrpcCode.DEADLINE_EXCEEDED);
      expect(error?.details).toMatch(/within its 200 ms deadline/);
    }));
});

describe('bearer-token authentication', () => {
  let server: GrpcServer;
  let client: VisionServiceClient;
  let address: string;
  beforeAll(async () => {
    server = startServer({ authToken: 's3cret-token' });
    address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    client = new VisionServiceClient(address, credentials.createInsecure());
  });
  afterAll(async () => {
    client.close();
    await server.stop();
  });

  it('refuses a call without a token or with a wrong one (UNAUTHENTICATED)', async () => {
    expect((await collect(encode(client, 0))).error?.code).toBe(GrpcCode.UNAUTHENTICATED);
    const wrong = await collect(encode(client, 0, { metadata: metadataWith({ authorization: 'Bearer nope', 'x-request-id': 'who-was-refused' }) }));
    expect(wrong.error?.code).toBe(GrpcCode.UNAUTHENTICATED);
    expect(wrong.error?.details).not.toContain('s3cret');
    expect(wrong.error?.metadata.get('x-request-id')).toEqual(['who-was-refused']);
  });

  it(`logs at most ${ACCESS_LOG_REFUSALS_PER_SECOND} refused calls of one code a second, and counts those left out within the second`, async () => {
    const lines: LogLine[] = [];
    const flooded = startServer({ authToken: 's3cret-token', log: recordingLogger(lines, 'vision') });
    const floodedClient = new VisionServiceClient(`127.0.0.1:${await flooded.listen('127.0.0.1', 0)}`, credentials.createInsecure());
    try {
      const calls = 5 * ACCESS_LOG_REFUSALS_PER_SECOND;
      const wrong = () => collect(encode(floodedClient, 0, { metadata: metadataWith({ authorization: 'Bearer nope' }) }));
      const started = performance.now();
      const refused = await Promise.all(Array.from({ length: calls }, wrong));
      const windows = rateWindowsSince(started);
      expect(refused.every((r) => r.error?.code === GrpcCode.UNAUTHENTICATED)).toBe(true);
      // An accepted call is never left out.
      expect((await collect(encode(floodedClient, 0, { metadata: metadataWith({ authorization: 'Bearer s3cret-token' }) }))).error).toBeNull();
      const access = (code: string, msg = 'call') => lines.filter((l) => l.component === 'vision.access' && l['code'] === code && l['msg'] === msg);
      // Every refusal is a line or counted once; with no refused call after the flood, the end of
      // its second says how many were left out.
      const accounted = () => {
        const logged = access('UNAUTHENTICATED');
        return logged.length + [...logged, ...access('UNAUTHENTICATED', 'calls not logged')].reduce((n, l) => n + Number(l['skipped'] ?? 0), 0);
      };
      await eventually(() => accounted() === calls, 3000, 20);
      await sleep(1100); // and nothing is counted twice by a later report
      expect(accounted()).toBe(calls);
      expect(access('UNAUTHENTICATED').length).toBeLessThanOrEqual(Math.min(calls, windows * ACCESS_LOG_REFUSALS_PER_SECOND));
      if (windows * ACCESS_LOG_REFUSALS_PER_SECOND < calls) expect(access('UNAUTHENTICATED', 'calls not logged').length).toBeGreaterThan(0);
      expect(access('OK')).toHaveLength(1);
    } finally {
      floodedClient.close();
      await flooded.stop();
    }
  });

  it("rates an INTERNAL that grpc-js sends for what the client sent (a malformed grpc-timeout), as a refusal, not as the service's fault", async () => {
    const lines: LogLine[] = [];
    const open = startServer({ log: recordingLogger(lines, 'vision') });
    const session = connect(`http://127.0.0.1:${await open.listen('127.0.0.1', 0)}`);
    session.on('error', () => undefined); // the server's stop ends the session
    try {
      const calls = 5 * ACCESS_LOG_REFUSALS_PER_SECOND;
      const started = performance.now();
      const statuses = await Promise.all(Array.from({ length: calls }, () => rawCall(session, '/vlm.v1.VisionService/GetModelInfo', { headers: { 'grpc-timeout': 'bogus' } }).status));
      expect(statuses.every((s) => s.code === GrpcCode.INTERNAL)).toBe(true);
      const access = () => lines.filter((l) => l.component === 'vision.access' && l['code'] === 'INTERNAL' && l['msg'] === 'call');
      // A line written says how many were left out before it; the end of a second reports the rest.
      const skipped = () => lines.filter((l) => l.component === 'vision.access' && l['code'] === 'INTERNAL').reduce((n, l) => n + Number(l['skipped'] ?? 0), 0);
      // Each line is written as grpc-js reports its stream closed; every call is then a line or counted.
      await eventually(() => access().length + skipped() === calls, 3000, 20);
      const windows = rateWindowsSince(started);
      expect(access().every((l) => l.level === 'info')).toBe(true);
      // Rated as refusals are: at most the rate in each one-second window the calls fell in.
      expect(access().length).toBeLessThanOrEqual(Math.min(calls, windows * ACCESS_LOG_REFUSALS_PER_SECOND));
    } finally {
      session.close();
      await open.stop();
    }
  });

  it('accepts the right token and leaves health checks open to probes', async () => {
    const ok = await collect(encode(client, 0, { metadata: metadataWith({ authorization: 'Bearer s3cret-token' }) }));
    expect(ok.error).toBeNull();
    expect(await healthStatus(address)).toBe('NOT_SERVING');
  });
});

describe('a port already taken', () => {
  it('fails the start with FAILED_PRECONDITION saying the port is taken, not an internal error', async () => {
    const first = startServer();
    const port = await first.listen('127.0.0.1', 0);
    const second = startServer();
    try {
      const err = await second.listen('127.0.0.1', port).then(() => null, (e: unknown) => e as VlmError);
      expect(err).toBeInstanceOf(VlmError);
      expect(err?.code).toBe('FAILED_PRECONDITION');
      expect(err?.message).toMatch(new RegExp(`^cannot listen on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE.*\\(the port is taken: is another vlm serve running\\? stop it, or choose another port\\)$`));
    } finally {
      await second.stop();
      await first.stop();
    }
  });
});

describe('a rate of log lines', () => {
  it('writes up to its rate of one kind a second, counts the rest, and reports them on the next line written or at the end of the second', () => {
    let now = 0;
    const reported: Array<[string, number]> = [];
    const timers: Array<{ at: number; fn: () => void }> = [];
    const rate = new LineRate(2, (kind, n) => reported.push([kind, n]), () => now, (fn, ms) => timers.push({ at: now + ms, fn }));
    const runTimers = () => timers.splice(0).forEach((t) => t.fn());
    expect([rate.admit('a'), rate.admit('a'), rate.admit('a'), rate.admit('a')]).toEqual([0, 0, null, null]);
    expect(timers.map((t) => t.at)).toEqual([1000]); // one report per window, at its end
    expect(rate.admit('b')).toBe(0); // each kind has its own rate
    now = 999;
    expect(rate.admit('a')).toBeNull();
    now = 1000;
    // A line written before the report carries the count.
    expect([rate.admit('a'), rate.admit('a')]).toEqual([3, 0]);
    runTimers();
    expect(reported).toEqual([]); // nothing left to report
    // A line left out with no line after it: the report at the end of its second says it.
    expect(rate.admit('a')).toBeNull();
    expect(timers.map((t) => t.at)).toEqual([2000]);
    now = 2000;
    runTimers();
    expect(reported).toEqual([['a', 1]]);
    now = 5000;
    expect(rate.admit('a')).toBe(0); // reported once, never again
  });
});

describe('a rate of log lines, at a stop or with a failing report', () => {
  it('reports every count not yet reported when flushed (a stop exits before the end-of-second reports)', () => {
    const reported: Array<[string, number]> = [];
    const rate = new LineRate(1, (kind, n) => reported.push([kind, n]), () => 0, () => {});
    for (const kind of ['a', 'a', 'a', 'b', 'b']) rate.admit(kind);
    rate.flush();
    expect(reported).toEqual([['a', 2], ['b', 1]]);
    rate.flush();
    expect(reported).toHaveLength(2); // once only
  });

  it('keeps a count whose report threw for the next line, and does not throw from its timer', () => {
    const timers: Array<() => void> = [];
    let now = 0;
    const rate = new LineRate(1, () => {
      throw new Error('log sink gone');
    }, () => now, (fn) => timers.push(fn));
    expect([rate.admit('a'), rate.admit('a')]).toEqual([0, null]);
    expect(() => timers.splice(0).forEach((fn) => fn())).not.toThrow();
    now = 1000;
    expect(rate.admit('a')).toBe(1); // the line written next carries the count the report could not
  });
});

describe('places shared by peers (health Watch streams)', () => {
  it('give each key at most its share, all keys together at most the total, and forget a key with its last place', () => {
    const places = new SharedPlaces(5, 2);
    expect([places.take('a'), places.take('a'), places.take('a')]).toEqual([null, null, 'share']);
    expect([places.take('b'), places.take('b'), places.take('c')]).toEqual([null, null, null]);
    expect(places.take('d')).toBe('total');
    places.give('a');
    expect(places.take('d')).toBe(null);
    for (const k of ['a', 'b', 'b', 'c', 'd']) places.give(k);
    expect(places.keys).toBe(0);
    places.give('never'); // a give without a take changes nothing
    expect([places.take('e'), places.take('e'), places.take('f'), places.take('f'), places.take('g')]).toEqual([null, null, null, null, null]);
    expect(places.take('h')).toBe('total');
  });

  it("name one client address by grpc-js's peer, whatever its port, an IPv4 client of a dual-stack listener by its IPv4 address", () => {
    expect(peerHost('10.0.0.7:51234')).toBe('10.0.0.7');
    expect(peerHost('::ffff:10.0.0.7:51234')).toBe('10.0.0.7');
    expect(peerHost('::FFFF:10.0.0.7:51234')).toBe('10.0.0.7');
    expect(peerHost('::1:52896')).toBe('::1');
    expect(peerHost('fd00::7:1a2b:443')).toBe('fd00::7:1a2b');
    expect(peerHost('[fd00::1]:443')).toBe('fd00::1');
    expect(peerHost('unknown')).toBe('unknown'); // grpc-js's peer of a socket without an address
  });
});

describe('a limit on calls in flight (--max-inflight-calls)', () => {
  it('refuses a call past the limit at its headers with RESOURCE_EXHAUSTED, and takes calls again once one ends', async () => {
    const server = startServer({ maxInFlightCalls: 1 });
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    const client = new VisionServiceClient(address, credentials.createInsecure());
    try {
      const held = collect(encode(client, 7)); // in flight until released
      await eventually(() => server.activeCalls === 1, 5000, 5);
      const refused = (await collect(encode(client, 0))).error;
      expect([refused?.code, decodeStatusDetails(refused!.metadata).reason, decodeStatusDetails(refused!.metadata).retryDelayMs]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'QUEUE_FULL', 1000]);
      expect(refused?.details).toBe('this replica is at its limit of 1 calls in flight (--max-inflight-calls); retry later');
      expect(await healthStatus(address)).toBe('NOT_SERVING'); // probes are not calls
      // What clients ask to learn what to send is answered at the limit too.
      const info = await new Promise<ServiceError | null>((resolve) => client.getModelInfo({}, (err) => resolve(err)));
      expect(info).toBeNull();
      await release();
      expect((await held).error).toBeNull();
      await eventually(() => server.activeCalls === 0, 5000, 5);
      expect((await collect(encode(client, 0))).error).toBeNull();
    } finally {
      client.close();
      await server.stop();
    }
  });
  it("tells gRPC's own retry the delay it asks for (grpc-retry-pushback-ms): a channel's retryPolicy waits it out instead of its 0.2 s backoff", async () => {
    const lines: LogLine[] = [];
    const server = startServer({ maxInFlightCalls: 1, log: recordingLogger(lines, 'vision') });
    const accessLines = () => lines.filter((l) => l.component === 'vision.access' && l['msg'] === 'call');
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    const plain = new VisionServiceClient(address, credentials.createInsecure());
    // The retry policy docs/deploy.md recommends, for this service.
    const serviceConfig = { methodConfig: [{ name: [{ service: 'vlm.v1.VisionService' }], retryPolicy: { maxAttempts: 3, initialBackoff: '0.2s', maxBackoff: '2s', backoffMultiplier: 2, retryableStatusCodes: ['RESOURCE_EXHAUSTED'] } }] };
    const retrying = new VisionServiceClient(address, credentials.createInsecure(), { 'grpc.service_config': JSON.stringify(serviceConfig) });
    try {
      // Connected before the clock starts: its first attempt must meet the held place.
      await new Promise<void>((resolve, reject) => retrying.waitForReady(Date.now() + 5000, (err) => (err ? reject(err) : resolve())));
      const held = collect(encode(plain, 7));
      await eventually(() => server.activeCalls === 1, 5000, 5);
      const refused = (await collect(encode(plain, 0))).error;
      expect(refused?.metadata.get('grpc-retry-pushback-ms')).toEqual(['1000']);
      // Refused while the held call runs (300 ms). Retried at the 0.2 s backoff, the third attempt
      // would come at 0.6 s at the latest and find the place free; waiting the pushback, the second
      // comes at 1 s.
      const started = performance.now();
      const retried = collect(encode(retrying, 0));
      // Released only once that first attempt has been refused (the access log's second refusal).
      await eventually(() => accessLines().filter((l) => l['code'] === 'RESOURCE_EXHAUSTED').length >= 2, 5000, 5);
      await release();
      expect((await held).error).toBeNull();
      expect((await retried).error).toBeNull();
      expect(performance.now() - started).toBeGreaterThanOrEqual(950);
    } finally {
      plain.close();
      retrying.close();
      await server.stop();
    }
  });

  it("keeps the cap's last quarter for callers below their share: one caller's burst cannot shut out another", async () => {
    const names = ['heavy', 'light', 'third'];
    const tokens = new BearerTokens({ file: null, tokens: names.map((name) => ({ name, token: `t0k3n-${name}-xxxxxxxx` })) }, log);
    const server = startServer({ tokens, maxInFlightCalls: 4 }); // 1 place reserved
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    const client = new VisionServiceClient(address, credentials.createInsecure());
    const as = (name: string) => ({ metadata: metadataWith({ authorization: `Bearer t0k3n-${name}-xxxxxxxx` }) });
    const held: Array<ClientReadableStream<EncodeResponse>> = [];
    const hold = async (name: string) => {
      const call = encode(client, 5, as(name)); // runs until cancelled
      void collect(call); // its CANCELLED at the end is expected
      held.push(call);
      await eventually(() => server.activeCalls === held.length, 5000, 5);
    };
    try {
      for (let i = 0; i < 3; i++) await hold('heavy'); // first come, up to three quarters
      const heavy = (await collect(encode(client, 0, as('heavy')))).error;
      expect([heavy?.code, decodeStatusDetails(heavy!.metadata).reason, decodeStatusDetails(heavy!.metadata).retryDelayMs]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'QUEUE_FULL', 1000]);
      expect(heavy?.details).toBe('this replica keeps its last 1 of 4 places for calls (--max-inflight-calls) for callers below their share, and this caller holds 3; retry later');
      await hold('light'); // below its share: takes the reserved place
      const third = (await collect(encode(client, 0, as('third')))).error;
      expect(third?.details).toBe('this replica is at its limit of 4 calls in flight (--max-inflight-calls); retry later');
      held.shift()!.cancel(); // a heavy call ends: 3 in flight, heavy 2 and light 1, shares of 4/3
      await eventually(() => server.activeCalls === 3, 5000, 5);
      expect((await collect(encode(client, 0, as('heavy')))).error?.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
      expect((await collect(encode(client, 0, as('light')))).error?.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
      expect((await collect(encode(client, 0, as('third')))).error).toBeNull(); // holds none: its share is free
    } finally {
      for (const call of held) call.cancel();
      client.close();
      await server.stop();
    }
  });

  it('lets an anonymous caller (no authentication) use the whole cap: there is no one to be fair to', async () => {
    const server = startServer({ maxInFlightCalls: 4 });
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    const client = new VisionServiceClient(address, credentials.createInsecure());
    const held: Array<ClientReadableStream<EncodeResponse>> = [];
    try {
      for (let i = 0; i < 4; i++) {
        held.push(encode(client, 5));
        void collect(held.at(-1)!);
        await eventually(() => server.activeCalls === held.length, 5000, 5);
      }
      expect((await collect(encode(client, 0))).error?.details).toBe('this replica is at its limit of 4 calls in flight (--max-inflight-calls); retry later');
    } finally {
      for (const call of held) call.cancel();
      client.close();
      await server.stop();
    }
  });
});

describe('refusing at the headers (an inference pool that would refuse the call)', () => {
  it("answers with the pool's status before the request message arrives, for the caller the auth interceptor named", async () => {
    const seen: Array<[string, string]> = [];
    const server = new GrpcServer({
      serviceName: 'vlm.v1.VisionService',
      definition: VisionServiceService,
      implementation: { encode: serverStream(behaviour, { log, defaultDeadlineMs: 30_000 }), getModelInfo: unary(async () => ({ model: undefined }), { log, defaultDeadlineMs: 30_000 }) },
      protoFiles: ['vlm/v1/vision_service.proto'],
      log,
      maxReceiveMessageBytes: 8 << 20,
      maxSendMessageBytes: 4 << 20,
      auth: new BearerTokens({ file: null, tokens: [{ name: 'heavy', token: 't0k3n-heavy-xxxxxxxx' }, { name: 'light', token: 't0k3n-light-xxxxxxxx' }] }, log),
      shutdownGraceMs: 1000,
      refuseAtHeaders: (path, caller) => {
        seen.push([path, caller]);
        return caller === 'heavy' ? new VlmError('RESOURCE_EXHAUSTED', 'all 1 inference workers are busy', { reason: 'QUEUE_FULL', retryDelayMs: 1000 }) : null;
      },
    });
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    const raw = new Client(address, credentials.createInsecure());
    // Headers only: the request message is never sent, so only a refusal at the headers can answer.
    // A call let in waits for its message, so it is cancelled once the refusal check has seen it
    // (`letIn`); a refused one ends on its own.
    const headersOnly = (token: string, letIn?: () => boolean): Promise<ServiceError | null> =>
      new Promise((resolve) => {
        const call = raw.makeBidiStreamRequest(VisionServiceService.encode.path, (b: Buffer) => b, (b: Buffer) => b, metadataWith({ authorization: `Bearer ${token}` }));
        if (letIn) void eventually(letIn, 10_000, 5).finally(() => call.cancel()).catch(() => undefined);
        call.on('data', () => undefined);
        call.on('error', (err: ServiceError) => resolve(err));
        call.on('end', () => resolve(null));
      });
    try {
      const heavy = await headersOnly('t0k3n-heavy-xxxxxxxx');
      expect([heavy?.code, decodeStatusDetails(heavy!.metadata).reason]).toEqual([GrpcCode.RESOURCE_EXHAUSTED, 'QUEUE_FULL']);
      expect((await headersOnly('t0k3n-light-xxxxxxxx', () => seen.length === 2))?.code).toBe(GrpcCode.CANCELLED); // let in: still waiting for its message
      expect(seen).toEqual([[VisionServiceService.encode.path, 'heavy'], [VisionServiceService.encode.path, 'light']]);
      // Probes are never asked about (nor refused with) the pools' state.
      expect(await healthStatus(address)).toBe('NOT_SERVING');
      expect(seen).toHaveLength(2);
    } finally {
      raw.close();
      await server.stop();
    }
  });
});

describe('graceful stop', () => {
  it('goes NOT_SERVING, refuses new calls, lets the call in flight finish, then stops', async () => {
    const server = startServer({ graceMs: 5000 });
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    const healthPort = await server.listenHealth('127.0.0.1', 0);
    server.setServing(true);
    const client = new VisionServiceClient(address, credentials.createInsecure());
    try {
      const inFlight = collect(encode(client, 1));
      await eventually(() => server.activeCalls === 1);
      const stopped = server.stop();
      // Probes ask the health port, which stays up through the drain.
      expect(await healthStatus(`127.0.0.1:${healthPort}`)).toBe('NOT_SERVING');
      const late = await collect(encode(client, 0));
      expect(late.error?.code).toBe(GrpcCode.UNAVAILABLE);
      const first = await inFlight;
      expect(first.error).toBeNull();
      expect(first.messages).toHaveLength(32);
      await stopped;
    } finally {
      client.close();
    }
  });

  it('refuses a call that reaches a draining server before its GOAWAY with UNAVAILABLE, reason SHUTTING_DOWN, retry at once', async () => {
    const admission = new Admission();
    const server = new Server({ interceptors: [admission.interceptor()] });
    server.addService(VisionServiceService, { encode: serverStream(behaviour, { log, defaultDeadlineMs: 30_000 }), getModelInfo: unary(async () => ({ model: undefined }), { log, defaultDeadlineMs: 30_000 }) });
    const port = await bindLoopback(server);
    const client = new VisionServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
    try {
      expect((await collect(encode(client, 0))).error).toBeNull();
      // Draining without closing the port: what a call racing the GOAWAY meets.
      admission.startDraining();
      const refused = await collect(encode(client, 0));
      expect(refused.error?.code).toBe(GrpcCode.UNAVAILABLE);
      expect(refused.error?.details).toMatch(/shutting down; retry on another replica/);
      expect(decodeStatusDetails(refused.error?.metadata)).toMatchObject({ reason: 'SHUTTING_DOWN', retryDelayMs: 0 });
    } finally {
      client.close();
      server.forceShutdown();
    }
  });

  it("sends its clients away at once: a client's next call reaches another replica while the call in flight finishes here", async () => {
    const draining = startServer({ graceMs: 5000 });
    const other = startServer();
    const first = `127.0.0.1:${await draining.listen('127.0.0.1', 0)}`;
    const second = `127.0.0.1:${await other.listen('127.0.0.1', 0)}`;
    // One channel over both replicas, connected to the first (pick_first), as a client pinned to one pod.
    const client = new VisionServiceClient(`ipv4:${first},${second}`, credentials.createInsecure());
    try {
      const inFlight = collect(encode(client, 7));
      await eventually(() => draining.activeCalls === 1);
      const stopped = draining.stop();
      const next = await collect(encode(client, 0));
      expect(next.error).toBeNull();
      // Still held here: the next call was answered by the other replica.
      expect(draining.activeCalls).toBe(1);
      await release();
      expect((await inFlight).error).toBeNull();
      await stopped;
    } finally {
      client.close();
      await other.stop();
    }
  });

  it('does not wait out the grace period for an open health Watch stream', async () => {
    const server = startServer({ graceMs: 30_000 });
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    server.setServing(true);
    const health = healthClient(address) as unknown as { watch(req: { service: string }): ClientReadableStream<{ status: string }>; close(): void };
    const watch = health.watch({ service: '' });
    const statuses: string[] = [];
    watch.on('data', (m: { status: string }) => statuses.push(m.status));
    watch.on('error', () => undefined); // ended by the shutdown
    try {
      await eventually(() => statuses.includes('SERVING'));
      const started = Date.now();
      await server.stop();
      // Far below the 30 s grace even on a loaded machine: the watch got a moment, not the grace.
      expect(Date.now() - started).toBeLessThan(15_000);
      expect(statuses).toContain('NOT_SERVING');
    } finally {
      health.close();
      await server.stop();
    }
  });

  it('ends calls still running when the grace period ends with UNAVAILABLE SHUTTING_DOWN, which clients retry elsewhere', async () => {
    const server = startServer({ graceMs: 300 });
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    const client = new VisionServiceClient(address, credentials.createInsecure());
    try {
      const stuck = collect(encode(client, 5, { metadata: metadataWith({ 'x-request-id': 'cut-at-drain' }) }));
      await eventually(() => server.activeCalls === 1);
      // The handler never ends by itself: stop() returns (within the test's timeout) only because the
      // grace period's end aborts its signal.
      await server.stop();
      const error = (await stuck).error;
      expect([error?.code, decodeStatusDetails(error!.metadata).reason, decodeStatusDetails(error!.metadata).retryDelayMs]).toEqual([GrpcCode.UNAVAILABLE, 'SHUTTING_DOWN', 0]);
      expect(error?.details).toBe('the service is shutting down and its 300 ms drain is over; retry on another replica');
      expect(error?.metadata.get('x-request-id')).toEqual(['cut-at-drain']);
      expect(observed.get(5)?.aborted).toBe('UNAVAILABLE');
    } finally {
      client.close();
    }
  });

  it('ends a call still sending its request when the grace period ends the same way (no handler has it yet)', async () => {
    const server = startServer({ graceMs: 200 });
    const port = await server.listen('127.0.0.1', 0);
    const session = connect(`http://127.0.0.1:${port}`);
    try {
      // A message announced as 1000 bytes of which 10 arrive: the request is never complete.
      const { status } = rawCall(session, '/vlm.v1.VisionService/Encode', { headers: { 'x-request-id': 'half-sent' }, write: partialMessage(1000, 10) });
      await eventually(() => server.activeCalls === 1);
      await server.stop();
      expect(await status).toEqual({ code: GrpcCode.UNAVAILABLE, message: 'the service is shutting down and its 200 ms drain is over; retry on another replica' });
    } finally {
      session.destroy();
    }
  });

  it('never follows a complete stream with an error: a last message still buffered when the call is ended ends it OK', async () => {
    // What the adapter decides when the abort comes while it waits for 'drain' after a write.
    const waiting = (cancelled = false) => Object.assign(new EventEmitter(), { cancelled }) as unknown as ServerWritableStream<unknown, unknown>;
    const over = new VlmError('UNAVAILABLE', 'drain over', { reason: 'SHUTTING_DOWN' });
    const signal = AbortSignal.abort(over);
    await expect(drainedOrLast(waiting(), signal, true)).rejects.toBeInstanceOf(StreamComplete); // the final: complete
    await expect(drainedOrLast(waiting(), signal, false)).rejects.toBe(over); // a delta: the call fails
    await expect(drainedOrLast(waiting(true), signal, true)).rejects.toBe(over); // the client left: nothing to end
  });

  it('cuts off a handler that ignores its signal once the statuses had their moment (CANCELLED: only the transport can end it)', async () => {
    const server = startServer({ graceMs: 200 });
    const address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    const client = new VisionServiceClient(address, credentials.createInsecure());
    try {
      const stuck = collect(encode(client, 7)); // waits for release(), whatever its signal says
      await eventually(() => server.activeCalls === 1);
      const started = Date.now();
      await server.stop();
      expect(Date.now() - started).toBeLessThan(5000);
      expect((await stuck).error?.code).toBe(GrpcCode.CANCELLED);
    } finally {
      // Cleanup only: the handler may never have started.
      releaseHeld?.();
      releaseHeld = undefined;
      client.close();
    }
  });
});
