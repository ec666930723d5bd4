import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTraceReceiver, type TraceReceiver } from '../shared/telemetry/collector';
import { Status } from '../gen/google/rpc/status';
import type { SpanRecord } from '../shared/telemetry/analysis';

/**
 * The OTLP/HTTP receiver's answers to payloads no SDK should send: 400 Bad Request naming the bad
 * field for malformed data (OTLP/HTTP "Bad Data"), 413 for a body over the limit however it is
 * encoded, and never 500. A bad span rejects its whole batch: nothing of it is written.
 */
const TRACE_ID = '5b8efff798038103d269b633813fc60c';
const SPAN_ID = 'eee19b7ec3c1b174';

/** One well-formed span in OTLP/JSON, with `patch` merged into the span. */
function requestWith(patch: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    resourceSpans: [
      {
        resource: { attributes: [{ key: 'service.name', value: { stringValue: 'vlm-test' } }] },
        scopeSpans: [{ scope: { name: 't' }, spans: [{ traceId: TRACE_ID, spanId: SPAN_ID, name: 'vlm.request', kind: 2, startTimeUnixNano: '1700000000000000000', endTimeUnixNano: '1700000000001000000', ...patch }] }],
      },
    ],
  };
}

describe('OTLP/HTTP receiver on malformed payloads', () => {
  let receiver: TraceReceiver;
  const received: SpanRecord[][] = [];
  const rejected: [number, string][] = [];
  beforeAll(async () => {
    receiver = await startTraceReceiver({ port: 0, host: '127.0.0.1', maxBodyBytes: 64 * 1024, onSpans: (s) => received.push(s), onRejected: (status, message) => rejected.push([status, message]) });
  });
  afterAll(() => receiver.close());

  const postJson = async (body: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${receiver.url}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body) });
    return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
  };

  it('accepts the well-formed request the cases below start from', async () => {
    received.length = 0;
    expect((await postJson(requestWith())).status).toBe(200);
    expect(received.flat().map((s) => s.spanId)).toEqual([SPAN_ID]);
  });

  it.each([
    ['scopeSpans is not an array', { resourceSpans: [{ scopeSpans: 5 }] }, /resourceSpans\[0\]\.scopeSpans: expected an array, got 5/],
    ['a resourceSpans entry is not an object', { resourceSpans: [5] }, /resourceSpans\[0\]: expected an object, got 5/],
    ['spans is not an array', { resourceSpans: [{ scopeSpans: [{ spans: 'x' }] }] }, /resourceSpans\[0\]\.scopeSpans\[0\]\.spans: expected an array/],
    ['a span is not an object', { resourceSpans: [{ scopeSpans: [{ spans: [null] }] }] }, /spans\[0\]: expected an object, got null/],
    ['the resource is not an object', { resourceSpans: [{ resource: 'vlm', scopeSpans: [] }] }, /resourceSpans\[0\]\.resource: expected an object/],
    ['an attribute bytesValue is a number', requestWith({ attributes: [{ key: 'k', value: { bytesValue: 5 } }] }), /spans\[0\]\.attributes\[0\]\.value\.bytesValue: expected base64 text or bytes, got 5/],
    ['an attribute intValue is not an integer', requestWith({ attributes: [{ key: 'k', value: { intValue: 'ten' } }] }), /attributes\[0\]\.value\.intValue: expected an integer/],
    ['an attribute key is missing', requestWith({ attributes: [{ value: { stringValue: 'v' } }] }), /attributes\[0\]\.key: missing/],
    ['an attribute list is an object', requestWith({ attributes: { k: 'v' } }), /spans\[0\]\.attributes: expected an array/],
    ['an array value holds a non-object', requestWith({ attributes: [{ key: 'k', value: { arrayValue: { values: [3] } } }] }), /arrayValue\.values\[0\]: expected an object, got 3/],
    ['events is not an array', requestWith({ events: 7 }), /spans\[0\]\.events: expected an array/],
    ['an event time is missing', requestWith({ events: [{ name: 'e' }] }), /events\[0\]\.timeUnixNano: missing/],
    ['the name is not a string', requestWith({ name: 12 }), /spans\[0\]\.name: expected a string, got 12/],
    ['the status is not an object', requestWith({ status: 'ERROR' }), /spans\[0\]\.status: expected an object/],
    ['the trace id is too short', requestWith({ traceId: 'abc' }), /spans\[0\]\.traceId: "abc" is neither 32 hex digits nor base64 of 16 bytes/],
    ['the span id is missing', requestWith({ spanId: undefined }), /spans\[0\]\.spanId: missing/],
    ['the start time is negative', requestWith({ startTimeUnixNano: -1 }), /spans\[0\]\.startTimeUnixNano: -1 is not a non-negative whole number of nanoseconds/],
    ['the start time is negative text', requestWith({ startTimeUnixNano: '-1' }), /startTimeUnixNano: "-1" is not a non-negative whole number/],
    ['the end time is not decimal', requestWith({ endTimeUnixNano: '0x10' }), /endTimeUnixNano: "0x10" is not a non-negative whole number/],
    ['the end time has a fraction', requestWith({ endTimeUnixNano: 1.5 }), /endTimeUnixNano: 1.5 is not a non-negative whole number/],
    ['the time is past 64 bits', requestWith({ endTimeUnixNano: '18446744073709551616' }), /endTimeUnixNano: "18446744073709551616" is not a non-negative whole number/],
    ['the span ends before it starts', requestWith({ endTimeUnixNano: '1699999999999999999' }), /spans\[0\]: ends \(1699999999999999999\) before it starts \(1700000000000000000\)/],
  ])('answers 400 naming the field when %s', async (_what, body, message) => {
    received.length = 0;
    const res = await postJson(body);
    expect(res.status).toBe(400);
    // OTLP/HTTP: the error body is a google.rpc.Status in the request's encoding
    expect(res.type).toBe('application/json');
    const status = JSON.parse(res.text) as { code: number; message: string };
    expect(status.code).toBe(3); // INVALID_ARGUMENT
    expect(status.message).toMatch(message);
    expect(received).toEqual([]);
  });

  it('rejects the whole batch when one span of it is bad, and tells the owner of the receiver', async () => {
    received.length = 0;
    rejected.length = 0;
    const body = requestWith();
    const spans = ((body.resourceSpans as Record<string, unknown>[])[0]!.scopeSpans as Record<string, unknown[]>[])[0]!.spans!;
    spans.push({ ...(spans[0] as object), spanId: 'eee19b7ec3c1b175', startTimeUnixNano: -1 });
    const res = await postJson(body);
    expect(res.status).toBe(400);
    expect(res.text).toMatch(/spans\[1\]\.startTimeUnixNano/);
    expect(received).toEqual([]);
    expect(rejected).toEqual([[400, expect.stringMatching(/spans\[1\]\.startTimeUnixNano: -1/)]]);
  });

  it('answers a protobuf request with a protobuf Status', async () => {
    const res = await fetch(`${receiver.url}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/x-protobuf' }, body: new Uint8Array([0x0a, 0xff]) });
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toBe('application/x-protobuf');
    expect(Status.decode(new Uint8Array(await res.arrayBuffer()))).toMatchObject({ code: 3, message: expect.stringMatching(/not an ExportTraceServiceRequest/) });
  });

  it('answers 413 to a body over the limit, compressed or once decompressed', async () => {
    const big = JSON.stringify({ resourceSpans: [], padding: 'x'.repeat(100 * 1024) });
    expect((await postJson(big)).status).toBe(413);
    // 100 KiB of JSON gzips to a few hundred bytes: under the limit on the wire, over it decoded
    const bomb = gzipSync(Buffer.from(big));
    expect(bomb.length).toBeLessThan(64 * 1024);
    const res = await postJson(new Uint8Array(bomb), { 'content-encoding': 'gzip' });
    expect(res.status).toBe(413);
    expect((JSON.parse(res.text) as { message: string }).message).toMatch(/decompressed body over 65536 bytes/);
  });

  it('still answers 400 to a body that is not gzip at all', async () => {
    expect((await postJson(new Uint8Array([1, 2, 3]), { 'content-encoding': 'gzip' })).status).toBe(400);
  });
});

describe('OTLP/HTTP receiver under many senders', () => {
  it('reads a few bodies at once and answers the rest 503 with Retry-After (each may hold up to the body limit), and counts unknown paths under one key', async () => {
    const receiver = await startTraceReceiver({ port: 0, host: '127.0.0.1', onSpans: () => undefined });
    const { request } = await import('node:http');
    const slow: Array<{ destroy(): void }> = [];
    try {
      // Bodies that never finish: each holds a reading place until its sender goes.
      const answers = Array.from({ length: 5 }, () =>
        new Promise<number>((resolve) => {
          const req = request(`${receiver.url}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': '1000000' } }, (res) => resolve(res.statusCode ?? 0));
          req.on('error', () => resolve(-1));
          req.write('{"resourceSpans":');
          slow.push(req);
        }),
      );
      expect(await Promise.race([...answers, new Promise((r) => setTimeout(() => r('none'), 5000))])).toBe(503);
      for (let i = 0; i < 50; i++) await fetch(`${receiver.url}/x${i}`, { method: 'POST' }).then((r) => r.text());
      expect(receiver.stats.requests).toMatchObject({ other: 50, '/v1/traces': 5 });
      expect(Object.keys(receiver.stats.requests).sort()).toEqual(['/v1/traces', 'other']);
    } finally {
      for (const r of slow) r.destroy();
      await receiver.close();
    }
  });
});
