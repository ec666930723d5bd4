/**
 * How often the language service tries an Encode that fails. grpc-js retries a call that fails
 * UNAVAILABLE before its first message (the channel's retry policy, 3 attempts); the client repeats a
 * whole call only when it failed after data had arrived, which grpc-js cannot retry. A replica set
 * that is down therefore sees 3 attempts per request, not 3 x 3, and other failures are not retried.
 */
import { createServer, type AddressInfo } from 'node:net';
import { getChannelzHandlers, Server, status as GrpcCode, type ServerWritableStream } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { ByteOrder, ElementType } from '../gen/vlm/v1/common';
import { VisionServiceService, type EncodeRequest, type EncodeResponse } from '../gen/vlm/v1/vision_service';
import { VlmError } from '../shared/errors';
import { failure } from './core-helpers';
import { bindLoopback } from './service-helpers';
import { HOP_MAX_RECONNECT_BACKOFF_MS, HOP_RECEIVE_WINDOW_BYTES, VisionClient } from '../services/language/vision-client';
import { parseVisionTarget } from '../services/language/vision-target';
import { statusObject } from '../services/common/status';
import type { Expectation } from '../services/common/tensor-stream';

const expectation: Expectation = { modelId: 'm', contentHash: 'sha256:aa', dtype: 'float32', width: 2, fullTokenCount: 4, schedule: { method: 'none', outputTokens: 4, params: {} } };
const header: EncodeResponse = {
  part: {
    $case: 'header',
    header: { modelId: 'm', contentHash: 'sha256:aa', dtype: ElementType.ELEMENT_TYPE_FLOAT32, byteOrder: ByteOrder.BYTE_ORDER_LITTLE_ENDIAN, shape: [4, 2], tokenCount: 4, width: 2, origin: [0, 1, 2, 3], size: [], fullTokenCount: 4, rowsPerChunk: 4, chunkCount: 1, schedule: { method: 'none', steps: [], outputTokens: 4, proportionalAttention: false, params: {} } },
  },
};

type Behaviour = (call: ServerWritableStream<EncodeRequest, EncodeResponse>) => void;

let server: Server | undefined;
let client: VisionClient | undefined;
afterEach(() => {
  client?.close();
  server?.forceShutdown();
});

/** A vision server that answers every Encode with `behaviour`; returns a counter of Encode calls. */
async function fakeVision(behaviour: Behaviour): Promise<{ calls: () => number }> {
  let calls = 0;
  server = new Server({ 'grpc.max_receive_message_length': 32 << 20 });
  server.addService(VisionServiceService, {
    encode: (call: ServerWritableStream<EncodeRequest, EncodeResponse>) => {
      calls++;
      behaviour(call);
    },
    getModelInfo: () => undefined,
  });
  const port = await bindLoopback(server!);
  client = new VisionClient({ target: parseVisionTarget(`127.0.0.1:${port}`), authToken: null, maxRequestBytes: 32 << 20 });
  return { calls: () => calls };
}

async function encodeFailure(image: Buffer = Buffer.from('x')): Promise<VlmError> {
  const ctx = { signal: new AbortController().signal, deadline: Date.now() + 10_000, requestId: 'retries' };
  return failure(client!.encode({ image, policy: undefined, limits: undefined }, expectation, ctx));
}

describe('Encode retries on the language -> vision hop', () => {
  it('a replica failing UNAVAILABLE before any message gets the channel policy attempts only (3, not 3 x 3)', async () => {
    const vision = await fakeVision((call) => call.emit('error', { code: GrpcCode.UNAVAILABLE, details: 'worker pool down' }));
    expect((await encodeFailure()).code).toBe('UNAVAILABLE');
    expect(vision.calls()).toBe(3);
  });

  it('retries a large image too (grpc-js keeps only requests that fit its retry buffer, 1 MiB by default)', async () => {
    const vision = await fakeVision((call) => call.emit('error', { code: GrpcCode.UNAVAILABLE, details: 'replica draining' }));
    expect((await encodeFailure(Buffer.alloc(5 * 1024 * 1024, 7))).code).toBe('UNAVAILABLE');
    expect(vision.calls()).toBe(3);
  });

  it('retries an image over 16 MiB, and a hop while 16 MiB of others wait on vision (grpc-js keeps 16 MiB per channel by default)', async () => {
    const held: Array<() => void> = [];
    const attempts = new Map<string, number>();
    await fakeVision((call) => {
      const id = String(call.metadata.get('x-request-id')[0]);
      if (id.startsWith('hold')) return void held.push(() => call.emit('error', { code: GrpcCode.NOT_FOUND, details: 'released' }));
      attempts.set(id, (attempts.get(id) ?? 0) + 1);
      call.emit('error', { code: GrpcCode.UNAVAILABLE, details: 'replica draining' });
    });
    const encode = (id: string, bytes: number) => failure(client!.encode({ image: Buffer.alloc(bytes, 7), policy: undefined, limits: undefined }, expectation, { signal: new AbortController().signal, deadline: Date.now() + 10_000, requestId: id }));
    expect((await encode('large', 17 << 20)).code).toBe('UNAVAILABLE');
    expect(attempts.get('large')).toBe(3);
    const holding = Array.from({ length: 16 }, (_, i) => encode(`hold-${i}`, 1 << 20));
    for (const until = Date.now() + 5000; held.length < 16 && Date.now() < until; ) await new Promise((r) => setTimeout(r, 10));
    expect(held).toHaveLength(16);
    expect((await encode('among-others', 1 << 20)).code).toBe('UNAVAILABLE');
    expect(attempts.get('among-others')).toBe(3);
    for (const release of held) release();
    await Promise.all(holding);
  });

  it("tells its caller to back off when every attempt met a draining vision (vision's 'retry now, elsewhere' was for the hop)", async () => {
    await fakeVision((call) => {
      const s = statusObject(GrpcCode.UNAVAILABLE, 'the service is shutting down; retry on another replica', { reason: 'SHUTTING_DOWN', retryDelayMs: 0 });
      call.emit('error', { code: s.code, details: s.details, metadata: s.metadata });
    });
    const e = await encodeFailure();
    expect([e.code, e.reason, e.retryDelayMs]).toEqual(['UNAVAILABLE', 'VISION_UNAVAILABLE', 1000]);
  });

  it('a call that fails UNAVAILABLE after its header is repeated whole, twice, and then reported', async () => {
    const vision = await fakeVision((call) => {
      call.write(header);
      setTimeout(() => call.emit('error', { code: GrpcCode.UNAVAILABLE, details: 'replica lost mid-stream' }), 5);
    });
    expect((await encodeFailure()).code).toBe('UNAVAILABLE');
    expect(vision.calls()).toBe(3);
  });

  it("reports a call vision force-closed (its drain grace ran out) as UNAVAILABLE, never as the caller's CANCELLED", async () => {
    const vision = await fakeVision(() => undefined); // holds every call
    const pending = encodeFailure();
    // Only once the call is at vision: a refused connection would give the same status for another reason.
    for (const until = Date.now() + 5000; vision.calls() === 0 && Date.now() < until; ) await new Promise((r) => setTimeout(r, 5));
    expect(vision.calls()).toBe(1);
    server!.forceShutdown();
    const e = await pending;
    expect([e.code, e.reason, e.retryDelayMs]).toEqual(['UNAVAILABLE', 'VISION_UNAVAILABLE', 1000]);
  });

  it('repeats a call vision cancelled, as it does a lost replica, and then reports it', async () => {
    const vision = await fakeVision((call) => call.emit('error', { code: GrpcCode.CANCELLED, details: 'Call cancelled' }));
    expect((await encodeFailure()).code).toBe('UNAVAILABLE');
    expect(vision.calls()).toBe(3);
  });

  it('is not repeated for a failure the request itself caused', async () => {
    const vision = await fakeVision((call) => call.emit('error', { code: GrpcCode.INTERNAL, details: 'the inference worker exited while running this request' }));
    expect((await encodeFailure()).code).toBe('INTERNAL');
    expect(vision.calls()).toBe(1);
  });
});

/**
 * What the server side of each of its connections may still send: the client's connection-level
 * receive window, as channelz reports it. Channelz does not show the per-stream initial window (the
 * same option sets both); this one is 64 KiB unless the client raised it.
 */
async function serverSendWindows(srv: Server): Promise<number[]> {
  const handlers = getChannelzHandlers() as unknown as Record<string, (call: { request: Record<string, unknown> }, cb: (err: unknown, res: Record<string, unknown>) => void) => void>;
  const ask = <T>(name: string, request: Record<string, unknown>) => new Promise<T>((resolve, reject) => handlers[name]!({ request }, (err, res) => (err ? reject(err) : resolve(res as T))));
  const { socket_ref: refs } = await ask<{ socket_ref: Array<{ socket_id: string }> }>('GetServerSockets', { server_id: srv.getChannelzRef().id, start_socket_id: 0 });
  const sockets = await Promise.all(refs.map((r) => ask<{ socket: { data: { remote_flow_control_window: { value: number } | null } } }>('GetSocket', { socket_id: r.socket_id })));
  return sockets.map((s) => Number(s.socket.data.remote_flow_control_window?.value ?? 0));
}

describe('the hop connection', () => {
  it('tries a vision that refuses it again at least every 2.4 s, however long it has been gone (not after a backoff grown to minutes)', async () => {
    // A listener that drops every connection: each is one reconnect attempt of the hop's channel.
    const attempts: number[] = [];
    const dropper = createServer((socket) => {
      attempts.push(Date.now());
      socket.destroy();
    });
    await new Promise<void>((resolve) => dropper.listen(0, '127.0.0.1', resolve));
    try {
      client = new VisionClient({ target: parseVisionTarget(`127.0.0.1:${(dropper.address() as AddressInfo).port}`), authToken: null, maxRequestBytes: 1 << 20 });
      const ctx = () => ({ signal: new AbortController().signal, deadline: Date.now() + 1000, requestId: 'outage' });
      const start = Date.now();
      // Requests keep coming through a 17 s outage, as they would on a serving language replica.
      while (Date.now() - start < 17_000) {
        await client.encode({ image: Buffer.from('x'), policy: undefined, limits: undefined }, expectation, ctx()).catch(() => undefined);
        await new Promise((r) => setTimeout(r, 200));
      }
      const gaps = attempts.slice(1).map((t, i) => t - attempts[i]!);
      // grpc-js's default (1 s x 1.6 per attempt, to 120 s) makes 5 or 6 attempts in 17 s, the last
      // 5-8 s apart; the hop's cap (2 s, plus 20 % jitter, plus the loop's 1.2 s at most) about 12.
      expect(attempts.length, JSON.stringify(gaps)).toBeGreaterThanOrEqual(9);
      expect(Math.max(...gaps), JSON.stringify(gaps)).toBeLessThan(HOP_MAX_RECONNECT_BACKOFF_MS * 1.2 + 1200);
    } finally {
      dropper.close();
    }
  }, 60_000);

  it("opens a receive window that holds a whole LLaVA-1.5 tensor, so vision's stream is not paced by 64 KiB window updates", async () => {
    await fakeVision((call) => {
      call.write(header);
      call.end();
    });
    await encodeFailure(); // the header alone is an incomplete stream; the connection is what counts
    const windows = await serverSendWindows(server!);
    expect(windows.length).toBeGreaterThan(0);
    // more than a whole LLaVA-1.5 tensor (576 x 4096 float16), about what the client configured
    for (const w of windows) expect(w).toBeGreaterThan(Math.max(576 * 4096 * 2, HOP_RECEIVE_WINDOW_BYTES - (1 << 20)));
  });
});


describe('the metadata of the hop', () => {
  it("carries the language service's caller, the request id and the model expected, on every attempt", async () => {
    const seen: Array<Record<string, unknown>> = [];
    await fakeVision((call) => {
      seen.push(call.metadata.getMap());
      call.emit('error', { code: GrpcCode.UNAVAILABLE, details: 'down' });
    });
    const ctx = { signal: new AbortController().signal, deadline: Date.now() + 10_000, requestId: 'hop-md', caller: 'light' };
    await failure(client!.encode({ image: Buffer.from('x'), policy: undefined, limits: undefined }, expectation, ctx));
    expect(seen.length).toBeGreaterThan(0);
    for (const md of seen) expect(md).toMatchObject({ 'x-vlm-on-behalf-of': 'light', 'x-request-id': 'hop-md', 'x-vlm-expected-model': 'sha256:aa' });
  });

  it("carries the caller's deadline: vision stops when the caller's time is up, not at its own default", async () => {
    const deadlines: number[] = [];
    await fakeVision((call) => {
      deadlines.push(Number(call.getDeadline()));
      call.emit('error', { code: GrpcCode.UNAVAILABLE, details: 'down' });
    });
    const deadline = Date.now() + 7_000;
    await failure(client!.encode({ image: Buffer.from('x'), policy: undefined, limits: undefined }, expectation, { signal: new AbortController().signal, deadline, requestId: 'hop-deadline' }));
    expect(deadlines.length).toBeGreaterThan(0);
    // grpc-timeout travels as a duration, so the server's clock places it within the transit time.
    for (const d of deadlines) expect(Math.abs(d - deadline)).toBeLessThan(500);
  });
});
