/**
 * What a caller without good intentions can make the service shell do: health checks (no token
 * needed) hold nothing per name and refuse oversized requests, compressed requests are refused
 * before they are inflated, and a call that never sends its request message is ended.
 */
import { EventEmitter } from 'node:events';
import { connect, constants as h2, type ClientHttp2Session } from 'node:http2';
import type { Server } from '@grpc/grpc-js';
import { HealthService } from '../services/common/health';
import { credentials, Metadata, status as GrpcCode, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../shared/log';
import { GrpcServer } from '../services/common/grpc-server';
import { HEALTH_WATCHES_PER_PEER, INFRASTRUCTURE_ARRIVAL_MS, INFRASTRUCTURE_RECEIVING_MAX, INFRASTRUCTURE_RECEIVING_PER_PEER } from '../services/common/admission';
import { serverStream, unary } from '../services/common/server-stream';
import { redactGrpcLine } from '../services/common/grpc-log';
import { decodeStatusDetails, decodeViolations, STATUS_DETAILS_KEY } from '../services/common/status';
import { VisionServiceClient, VisionServiceService, type EncodeResponse, type VisionServiceServer } from '../gen/vlm/v1/vision_service';
import { collect, connectFrom, eventually, healthClient, partialMessage, rawCall } from './service-helpers';
import { startLanguageService } from '../services/language/server';
import { parseVisionTarget } from '../services/language/vision-target';
import { pairConfig, recordingLogger, type LogLine } from './reliability-helpers';

const log = createLogger('test');

/** A vision shell whose Encode answers one empty chunk at once. */
function startServer(requestArrivalMs = 60_000, serverLog = log): GrpcServer {
  const deps = { log, defaultDeadlineMs: 30_000 };
  const implementation: VisionServiceServer = {
    // eslint-disable-next-line require-yield
    encode: serverStream(async function* () {
      yield { part: { $case: 'chunk', chunk: { index: 0, rowOffset: 0, rowCount: 0, data: Buffer.alloc(0) } } } as EncodeResponse;
    }, deps),
    getModelInfo: unary(async () => ({ model: undefined }), deps),
  };
  return new GrpcServer({
    serviceName: 'vlm.v1.VisionService',
    definition: VisionServiceService,
    implementation,
    protoFiles: ['vlm/v1/vision_service.proto'],
    log: serverLog,
    maxReceiveMessageBytes: 8 << 20,
    maxSendMessageBytes: 4 << 20,
    auth: null,
    shutdownGraceMs: 1000,
    requestArrivalMs,
  });
}

type HealthClient = ReturnType<typeof healthClient> & {
  watch(req: { service: string }): ClientReadableStream<{ status: string }>;
  list(req: object, cb: (err: ServiceError | null, res?: { statuses: Record<string, { status: string }> }) => void): void;
};

function check(client: HealthClient, service: string): Promise<{ code: number; status?: string; details?: string; metadata?: Metadata }> {
  return new Promise((resolve) => client.check({ service }, (err, res) => resolve(err ? { code: err.code, details: err.details, metadata: err.metadata } : { code: 0, status: res!.status })));
}

describe('health checks, which need no token', () => {
  let server: GrpcServer;
  let address: string;
  let client: HealthClient;
  const watchers = (): number => (server.health as unknown as { watchers: Set<unknown> }).watchers.size;

  beforeAll(async () => {
    server = startServer();
    address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    server.setServing(true);
    client = healthClient(address) as HealthClient;
  });
  afterAll(async () => {
    client?.close();
    await server?.stop();
  });

  it('answer "" and the service\'s own name, NOT_FOUND for any other without repeating it', async () => {
    expect(await check(client, '')).toEqual({ code: 0, status: 'SERVING' });
    expect(await check(client, 'vlm.v1.VisionService')).toEqual({ code: 0, status: 'SERVING' });
    const other = await check(client, 'x'.repeat(500));
    expect(other.code).toBe(GrpcCode.NOT_FOUND);
    expect(other.details).not.toContain('xxx');
    // Refused as every other refusal is: google.rpc.Status in the details trailer.
    expect(decodeStatusDetails(other.metadata).reason).toBeUndefined();
    expect(other.metadata?.get(STATUS_DETAILS_KEY)).toHaveLength(1);
    const listed = await new Promise<Record<string, { status: string }>>((resolve, reject) => client.list({}, (err, res) => (err ? reject(err) : resolve(res!.statuses))));
    expect(listed).toEqual({ '': { status: 'SERVING' }, 'vlm.v1.VisionService': { status: 'SERVING' } });
  });

  it('refuse a request over 1 KiB with INVALID_ARGUMENT (a name of megabytes was kept for good)', async () => {
    const huge = await check(client, 'x'.repeat(4096));
    expect(huge.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(huge.details).toMatch(/at most 1024 bytes/);
    expect(decodeViolations(huge.metadata)).toEqual([{ field: 'service', description: 'a health request is at most 1024 bytes' }]);
  });

  it('keep nothing for a watched unknown name, and nothing for a known one once its watch ends', async () => {
    const unknown = client.watch({ service: 'y'.repeat(900) });
    const first = await new Promise<string>((resolve) => unknown.once('data', (m: { status: string }) => resolve(m.status)));
    expect(first).toBe('SERVICE_UNKNOWN');
    expect(watchers()).toBe(0);
    unknown.on('error', () => undefined);
    unknown.cancel();

    const known = client.watch({ service: '' });
    const statuses: string[] = [];
    known.on('data', (m: { status: string }) => statuses.push(m.status));
    known.on('error', () => undefined);
    await eventually(() => statuses.length === 1);
    expect(watchers()).toBe(1);
    server.setServing(false);
    await eventually(() => statuses.length === 2);
    expect(statuses).toEqual(['SERVING', 'NOT_SERVING']);
    server.setServing(true);
    known.cancel();
    await eventually(() => watchers() === 0);
  });

  it(`hold at most ${HEALTH_WATCHES_PER_PEER} Watch streams open at once from one address (each holds memory for as long as it lasts, and needs no token), leave other addresses theirs, and take another once one ends`, async () => {
    const first = (stream: ClientReadableStream<unknown>) => new Promise<string>((resolve) => {
      stream.once('data', () => resolve('open'));
      stream.once('error', (err: ServiceError) => resolve(`${GrpcCode[err.code]}: ${err.details}`));
    });
    // Listening on every address, so one host reaches it from two addresses: 127.0.0.1 and ::1.
    const dual = startServer();
    const port = await dual.listen('::', 0);
    dual.setServing(true);
    const v4 = healthClient(`127.0.0.1:${port}`) as HealthClient;
    const v6 = healthClient(`[::1]:${port}`) as HealthClient;
    // One at a time: only INFRASTRUCTURE_RECEIVING_MAX health requests may be arriving at once.
    const streams: Array<ClientReadableStream<unknown>> = [];
    try {
      for (let i = 0; i < HEALTH_WATCHES_PER_PEER; i++) {
        streams.push(v4.watch({ service: '' }));
        expect(await first(streams[i]!)).toBe('open');
      }
      const refused = v4.watch({ service: '' });
      expect(await first(refused)).toBe(`RESOURCE_EXHAUSTED: ${HEALTH_WATCHES_PER_PEER} health Watch streams from this address are open already; retry later (probes: use Check, or the health port)`);
      expect((await check(v4, '')).code).toBe(0); // Check is not a Watch
      // A client balancing with health checks elsewhere still sees the replica as up.
      const other = v6.watch({ service: '' });
      streams.push(other);
      expect(await first(other)).toBe('open');
      streams[0]!.cancel();
      await eventually(async () => {
        const again = v4.watch({ service: '' });
        streams.push(again); // cancelled below, whatever it answered
        return (await first(again)) === 'open';
      }, 5000, 50);
    } finally {
      for (const s of streams) s.cancel();
      v4.close();
      v6.close();
      await dual.stop();
    }
  });
});

describe('a Watch whose client does not read', () => {
  it('is sent the latest status once it reads again, not every status in between (each unread write is held in memory)', () => {
    const health = new HealthService(['vlm.v1.VisionService']);
    let watch: ((call: unknown) => void) | undefined;
    health.addToServer({ addService: (_d: unknown, impl: { watch: (call: unknown) => void }) => (watch = impl.watch) } as unknown as Server);
    // A stream whose window is shut: every write after the first is refused until 'drain'.
    const call = Object.assign(new EventEmitter(), { request: { service: '' }, written: [] as string[], open: true, write(m: { status: string }) { this.written.push(m.status); return this.open; } });
    call.open = false;
    watch!(call);
    expect(call.written).toEqual(['NOT_SERVING']);
    for (let i = 0; i < 100; i++) health.setAll(i % 2 === 0 ? 'SERVING' : 'NOT_SERVING');
    health.setAll('SERVING');
    expect(call.written).toEqual(['NOT_SERVING', 'SERVING']);
    call.open = true;
    call.emit('drain');
    // Only the latest: 100 flips while it did not read cost one held status.
    expect(call.written).toEqual(['NOT_SERVING', 'SERVING', 'SERVING']);
    health.setAll('NOT_SERVING');
    expect(call.written.at(-1)).toBe('NOT_SERVING');
  });
});

describe('the plaintext health port', () => {
  it(`holds at most ${HEALTH_WATCHES_PER_PEER} Watch streams from one address, ends a Check whose message does not arrive, and never refuses a probe's Check for requests still arriving`, async () => {
    const server = startServer();
    const port = await server.listenHealth('127.0.0.1', 0);
    server.setServing(true);
    const client = healthClient(`127.0.0.1:${port}`) as HealthClient;
    const session = connect(`http://127.0.0.1:${port}`);
    session.on('error', () => undefined);
    const streams: Array<ClientReadableStream<unknown>> = [];
    try {
      const first = (stream: ClientReadableStream<unknown>) => new Promise<string>((resolve) => {
        stream.once('data', () => resolve('open'));
        stream.once('error', (err: ServiceError) => resolve(GrpcCode[err.code]));
      });
      for (let i = 0; i < HEALTH_WATCHES_PER_PEER; i++) {
        streams.push(client.watch({ service: '' }));
        expect(await first(streams[i]!)).toBe('open');
      }
      const refused = client.watch({ service: '' });
      expect(await first(refused)).toBe('RESOURCE_EXHAUSTED');
      // More Checks still arriving than the main port lets one address have: the next one is answered.
      const arriving = Array.from({ length: INFRASTRUCTURE_RECEIVING_MAX + 2 }, () => rawCall(session, '/grpc.health.v1.Health/Check'));
      expect(await check(client, '')).toEqual({ code: 0, status: 'SERVING' });
      // Each of those ends once its time to arrive is over, instead of staying open for good.
      for (const a of arriving) expect((await a.status).code).toBe(GrpcCode.DEADLINE_EXCEEDED);
    } finally {
      for (const s of streams) s.cancel();
      client.close();
      session.destroy();
      await server.stop();
    }
  }, 20_000);
});

describe('a compressed request', () => {
  let server: GrpcServer;
  let address: string;
  let healthAddress: string;
  const lines: LogLine[] = [];
  beforeAll(async () => {
    server = startServer(60_000, recordingLogger(lines, 'shell'));
    address = `127.0.0.1:${await server.listen('127.0.0.1', 0)}`;
    healthAddress = `127.0.0.1:${await server.listenHealth('127.0.0.1', 0)}`;
    server.setServing(true);
  });
  afterAll(() => server?.stop());

  it('is refused on the plaintext health port too, where a request past 1 KiB never reaches the service', async () => {
    const gzipped = healthClient(healthAddress, { 'grpc.default_compression_algorithm': 2 }) as HealthClient;
    const plain = healthClient(healthAddress) as HealthClient;
    try {
      expect((await check(gzipped, '')).code).toBe(GrpcCode.UNIMPLEMENTED);
      expect(await check(plain, '')).toEqual({ code: 0, status: 'SERVING' });
      expect((await check(plain, 'x'.repeat(4096))).code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    } finally {
      gzipped.close();
      plain.close();
    }
  });

  it('is not invited: responses accept only identity', async () => {
    const session = connect(`http://${address}`);
    try {
      // An empty EncodeRequest: a 5-byte gRPC frame of length 0.
      const stream = session.request({ [h2.HTTP2_HEADER_METHOD]: 'POST', [h2.HTTP2_HEADER_PATH]: '/vlm.v1.VisionService/Encode', 'content-type': 'application/grpc', te: 'trailers' });
      stream.on('error', () => undefined);
      stream.end(Buffer.alloc(5));
      const headers = await new Promise<Record<string, unknown>>((resolve) => stream.on('response', resolve));
      expect(headers['grpc-accept-encoding']).toBe('identity');
      stream.resume();
    } finally {
      session.destroy();
    }
  });

  it('is refused with UNIMPLEMENTED before it is inflated (40 KB of gzip became a 40 MiB message), and logged as such', async () => {
    // gzip: 2 in grpc's compression algorithm enum.
    const gzipped = new VisionServiceClient(address, credentials.createInsecure(), { 'grpc.default_compression_algorithm': 2 });
    const plain = new VisionServiceClient(address, credentials.createInsecure());
    try {
      const request = { image: Buffer.alloc(1 << 20), policy: undefined, limits: undefined };
      const refused = await collect<EncodeResponse>(gzipped.encode(request, new Metadata()));
      expect(refused.error?.code).toBe(GrpcCode.UNIMPLEMENTED);
      expect(refused.error?.details).toMatch(/request compression "gzip" is not accepted; send requests uncompressed/);
      expect((await collect<EncodeResponse>(plain.encode(request, new Metadata()))).error).toBeNull();
      const access = lines.filter((l) => l.msg === 'call' && l['method'] === '/vlm.v1.VisionService/Encode');
      const refusals = access.filter((l) => l['code'] === 'UNIMPLEMENTED');
      expect(refusals).toHaveLength(1);
      expect(refusals[0]!['requestId']).toMatch(/^[0-9a-f-]{36}$/);
      expect(access.map((l) => l['code'])).not.toContain('CANCELLED');
    } finally {
      gzipped.close();
      plain.close();
    }
  });
});

describe('health requests still arriving on the main port (its receive limit is a request\'s, tens of MiB)', () => {
  it(`are held ${INFRASTRUCTURE_RECEIVING_PER_PEER} at a time per client address and ${INFRASTRUCTURE_RECEIVING_MAX} in all: one more is refused at its headers, other addresses are answered, and all are once they end`, async () => {
    const server = startServer(1500);
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    // Clients told apart by their addresses on the loopback network; the last only checks.
    const peers = Array.from({ length: INFRASTRUCTURE_RECEIVING_MAX / INFRASTRUCTURE_RECEIVING_PER_PEER + 1 }, (_, i) => connectFrom(port, `127.0.0.${i + 1}`));
    const checker = peers.at(-1)!;
    /** A complete Check for "" (an empty message), from `session`. */
    const rawCheck = (session: ClientHttp2Session) => {
      const { stream, status } = rawCall(session, '/grpc.health.v1.Health/Check', { write: Buffer.alloc(5) });
      stream.end();
      return status;
    };
    // Each announces a 4 MiB message and sends 1 KiB of it: grpc-js would buffer the lot. A deadline
    // of days claimed: the limit on arriving is the service's own.
    const holding = (session: ClientHttp2Session) =>
      Array.from({ length: INFRASTRUCTURE_RECEIVING_PER_PEER }, () => rawCall(session, '/grpc.health.v1.Health/Check', { headers: { 'grpc-timeout': '2000000S' }, write: partialMessage(4 << 20, 1024) }).stream);
    try {
      const streams = holding(peers[0]!);
      await eventually(async () => (await rawCheck(peers[0]!)).code === GrpcCode.RESOURCE_EXHAUSTED, 2000);
      expect(await rawCheck(peers[0]!)).toEqual({ code: GrpcCode.RESOURCE_EXHAUSTED, message: `${INFRASTRUCTURE_RECEIVING_PER_PEER} health requests from this address are being received already; retry later (probes: use the health port)` });
      expect((await rawCheck(checker)).code).toBe(0);
      for (const session of peers.slice(1, -1)) streams.push(...holding(session));
      await eventually(async () => (await rawCheck(checker)).code === GrpcCode.RESOURCE_EXHAUSTED, 2000);
      expect(await rawCheck(checker)).toEqual({ code: GrpcCode.RESOURCE_EXHAUSTED, message: `${INFRASTRUCTURE_RECEIVING_MAX} health requests are being received already; retry later (probes: use the health port)` });
      // Not for ever: they get INFRASTRUCTURE_ARRIVAL_MS to arrive, whatever deadline they claim.
      await eventually(async () => (await rawCheck(checker)).code === 0, INFRASTRUCTURE_ARRIVAL_MS + 5000, 100);
      for (const s of streams) s.close();
    } finally {
      for (const session of peers) session.destroy();
      await server.stop();
    }
  }, 20_000);
});

describe("grpc-js's own log lines", () => {
  it('reach the JSON log without the value of a header grpc-js could not take (a bearer token with a stray tab)', async () => {
    const lines: LogLine[] = [];
    const server = startServer(60_000, recordingLogger(lines, 'vision'));
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    const session = connectFrom(port, '127.0.0.1');
    try {
      const { stream, status } = rawCall(session, '/grpc.health.v1.Health/Check', { headers: { authorization: 'Bearer\tsecret-token-0123456789' }, write: Buffer.alloc(5) });
      stream.end();
      expect((await status).code).toBe(0);
      await eventually(() => lines.some((l) => String(l['msg']).startsWith('Failed to add metadata entry authorization')));
      expect(lines.find((l) => String(l['msg']).startsWith('Failed to add metadata entry'))).toMatchObject({ level: 'warn', component: 'vision.grpc-js' });
      expect(JSON.stringify(lines)).not.toContain('secret-token-0123456789');
    } finally {
      session.destroy();
      await server.stop();
    }
  });

  it.each([
    ['Failed to add metadata entry authorization: Bearer\tabc. Metadata string value "Bearer\tabc" contains illegal characters', 'Failed to add metadata entry authorization: its value has characters gRPC metadata does not allow, so the header was dropped (value not logged)'],
    ['Received a token Bearer abc.def in a trace line', 'Received a token Bearer <redacted> in a trace line'],
    ['Server listening', 'Server listening'],
    // GRPC_TRACE=server_call prints every request's headers.
    ['Request to /x received headers {"authorization":["Basic dXNlcjpwYXNz"],"x-api-key":["k-123"],"x-request-id":["r1"]}', 'Request to /x received headers {"authorization":"<redacted>","x-api-key":"<redacted>","x-request-id":["r1"]}'],
    // A token may hold any visible character, `]` and an escaped quote included.
    ['Request to /x received headers {"authorization":["Bearer abc]SECRET\\"x"],"x-request-id":["r1"]}', 'Request to /x received headers {"authorization":"<redacted>","x-request-id":["r1"]}'],
    // A -bin header's value prints as a Buffer's JSON.
    ['Request to /x received headers {"x-token-bin":{"type":"Buffer","data":[115,101,99]},"x-request-id":["r1"]}', 'Request to /x received headers {"x-token-bin":"<redacted>","x-request-id":["r1"]}'],
  ])('are cleaned of credentials: %j', (line, logged) => {
    expect(redactGrpcLine(line)).toBe(logged);
  });
});

describe('a call whose request message never comes', () => {
  // Headers only (no message, no end of stream, no grpc-timeout); or an empty message, complete, whose
  // stream is never ended (a single-message request's handler starts only at the end of its stream).
  it.each([
    ['is ended with DEADLINE_EXCEEDED once the wait is over, and no longer counts as in flight', undefined],
    ['is ended the same way when its message came whole but the stream was never ended', Buffer.alloc(5)],
  ])('%s', async (_, write) => {
    // A window a loaded machine does not outlast before the test sees the call in flight.
    const server = startServer(1500);
    const port = await server.listen('127.0.0.1', 0);
    const session = connect(`http://127.0.0.1:${port}`);
    try {
      const { status } = rawCall(session, '/vlm.v1.VisionService/Encode', { write });
      await eventually(() => server.activeCalls === 1, 2000);
      const { code, message } = await status;
      expect(code).toBe(GrpcCode.DEADLINE_EXCEEDED);
      expect(message).toMatch(/request message did not arrive within 1.5 s/);
      await eventually(() => server.activeCalls === 0, 2000);
    } finally {
      session.destroy();
      await server.stop();
    }
  }, 20_000);

  it('is ended all the same when it claims a longer deadline of its own (headers alone must not hold a place for hours), and by its own when that is sooner', async () => {
    const server = startServer(300);
    const port = await server.listen('127.0.0.1', 0);
    const session = connect(`http://127.0.0.1:${port}`);
    const headersOnly = async (timeout: string) => {
      const started = Date.now();
      const stream = session.request({ [h2.HTTP2_HEADER_METHOD]: 'POST', [h2.HTTP2_HEADER_PATH]: '/vlm.v1.VisionService/Encode', 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': timeout }, { endStream: false });
      stream.on('error', () => undefined);
      const status = await new Promise<Record<string, unknown>>((resolve) => {
        stream.on('response', (h) => h['grpc-status'] !== undefined && resolve(h));
        stream.on('trailers', resolve);
      });
      return { code: Number(status['grpc-status']), message: decodeURIComponent(String(status['grpc-message'])), ms: Date.now() - started };
    };
    try {
      const long = await headersOnly('99999999H');
      expect(long).toMatchObject({ code: GrpcCode.DEADLINE_EXCEEDED, message: 'the request message did not arrive within 0.3 s of its headers' });
      expect(long.ms).toBeLessThan(10_000);
      const short = await headersOnly('100m');
      expect(short.code).toBe(GrpcCode.DEADLINE_EXCEEDED);
      expect(short.message).not.toMatch(/did not arrive/);
    } finally {
      session.destroy();
      await server.stop();
    }
  }, 20_000);
});

describe('a bearer token on a plaintext hop to vision', () => {
  it('is named as readable on the path when the hop leaves the host, and not when it stays on it', async () => {
    const loopback = (t: string) => parseVisionTarget(t).loopback;
    expect(['127.0.0.1:50051', 'localhost:50051', 'ipv4:127.0.0.1:1,127.0.0.2:2', '127.0.0.1:1,127.0.0.2:2', 'ipv6:[::1]:50051', 'dns:///localhost:50051'].every(loopback)).toBe(true);
    expect(['dns:///vlm-vision-headless.vlm.svc.cluster.local:50051', '10.0.0.1:50051', 'ipv4:127.0.0.1:1,10.0.0.2:2', '127.0.0.1:1,10.0.0.2:2'].some(loopback)).toBe(false);
    const lines: LogLine[] = [];
    // An address nobody answers at: the language service serves anyway, and warns at start.
    const language = await startLanguageService(pairConfig({ authToken: 'a-token-of-32-characters-or-more!!', visionTarget: '10.255.255.1:50051' }), { port: 0, log: recordingLogger(lines, 'language') });
    await language.stop();
    const warning = 'the bearer token goes to vision in plaintext: anyone on the path can read it and call vision with it (and language too, unless --vision-token-file keeps it apart); set VLM_VISION_CA for TLS on the hop';
    expect(lines.filter((l) => l.level === 'warn').map((l) => l.msg)).toContain(warning);
    const local: LogLine[] = [];
    const onHost = await startLanguageService(pairConfig({ authToken: 'a-token-of-32-characters-or-more!!', visionTarget: '127.0.0.1:1' }), { port: 0, log: recordingLogger(local, 'language') });
    await onHost.stop();
    expect(local.some((l) => l.msg === 'serving')).toBe(true);
    expect(local.map((l) => l.msg)).not.toContain(warning);
  });
});
