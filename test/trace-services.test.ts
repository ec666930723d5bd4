/**
 * Must show, on real requests through the service pair (in this process, spans and metrics in
 * memory): the request span names the request id the logs carry; a failure the caller caused is
 * recorded (exception, error.type) without marking the span ERROR, and reads the same from a worker
 * as from the main thread; the budget reads the same on every span of a request; the request
 * metrics say which requests failed and how, vision's under a name of its own; and a job in a trace
 * the sampler dropped is not recorded in its worker.
 */
import { Worker } from 'node:worker_threads';
import { ROOT_CONTEXT, SpanStatusCode, TraceFlags, context, trace } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { VlmError, type VlmErrorCode } from '../shared/errors';
import { SpanRecorder, replaySpans } from '../shared/telemetry/span-recorder';
import { setTracingEnabled } from '../shared/telemetry/state';
import { withSpan } from '../shared/telemetry/with-span';
import { tracedSend } from '../shared/telemetry/traced-stream';
import { ask, request, shapesImage } from './reliability-helpers';
import { metadataWith } from './service-helpers';
import { startTracedPair, type TracedPair } from './trace-helpers';

let pair: TracedPair;
beforeAll(async () => {
  pair = await startTracedPair();
});
afterAll(() => pair?.stop());

/** The spans a Generate added, in the order they ended. */
async function generateSpans(run: () => Promise<unknown>): Promise<ReadableSpan[]> {
  const before = pair.spans().length;
  await run();
  return pair.spans().slice(before);
}

const isLanguageRequest = (s: ReadableSpan) => s.name === 'vlm.request' && s.attributes['gen_ai.operation.name'] !== undefined;
const isVisionRequest = (s: ReadableSpan) => s.name === 'vlm.request' && s.attributes['gen_ai.operation.name'] === undefined;
const exceptionType = (s: ReadableSpan) => s.events.find((e) => e.name === 'exception')?.attributes?.['exception.type'];

describe('spans of real requests', () => {
  it("name the request id on both services' request spans", async () => {
    const spans = await generateSpans(async () => {
      const outcome = await ask(pair.client, request(await shapesImage()), { metadata: metadataWith({ 'x-request-id': 'trace-req-1' }) });
      expect(outcome.error).toBeNull();
    });
    expect(spans.find(isLanguageRequest)?.attributes['vlm.request_id']).toBe('trace-req-1');
    expect(spans.find(isVisionRequest)?.attributes['vlm.request_id']).toBe('trace-req-1');
  });

  it('carry one budget on every span of a request that set none (the methods run at their default)', async () => {
    const spans = await generateSpans(async () => {
      expect((await ask(pair.client, request(await shapesImage(), { policy: { preset: 'ficoco-vl' } }))).error).toBeNull();
    });
    const budgets = spans.filter((s) => s.attributes['vlm.reduction.budget'] !== undefined).map((s) => `${s.name}=${String(s.attributes['vlm.reduction.budget'])}`);
    expect(budgets).toContain('vlm.vision.embed=default');
    expect(budgets).toContain('vlm.request=default');
    // Every vision stage span, preprocessing included, names the method it ran under.
    for (const name of ['vlm.preprocess', 'vlm.vision.embed', 'vlm.project']) {
      expect(spans.find((s) => s.name === name)?.attributes, name).toMatchObject({ 'vlm.reduction.method': 'ficoco-v', 'vlm.reduction.budget': 'default' });
    }
    expect(new Set(budgets.map((b) => b.split('=')[1]))).toEqual(new Set(['default']));
  });

  it("carry each answer token's index on the decode span, and its id only while content capture is on", async () => {
    const tokenEvents = async () => {
      const spans = await generateSpans(async () => {
        expect((await ask(pair.client, request(await shapesImage()))).error).toBeNull();
      });
      return spans.find((s) => s.name === 'vlm.decode')!.events.filter((e) => e.name === 'vlm.token');
    };
    const plain = await tokenEvents();
    expect(plain.length).toBeGreaterThan(0);
    expect(plain.map((e) => e.attributes)).toEqual(plain.map((_, i) => ({ 'vlm.token.index': i })));
    setTracingEnabled(true, true);
    try {
      const captured = await tokenEvents();
      expect(captured.map((e) => e.attributes?.['vlm.token.index'])).toEqual(captured.map((_, i) => i));
      expect(captured.every((e) => Number.isInteger(e.attributes?.['vlm.token.id']))).toBe(true);
    } finally {
      setTracingEnabled(true);
    }
  });

  it('carry a token budget as a string too, so the attribute keeps one type whatever the request set', async () => {
    const spans = await generateSpans(async () => {
      expect((await ask(pair.client, request(await shapesImage(), { policy: { preset: 'ficoco-vl', budget: { $case: 'budgetTokens', budgetTokens: 8 } } }))).error).toBeNull();
    });
    const budgets = spans.map((s) => s.attributes['vlm.reduction.budget']).filter((b) => b !== undefined);
    expect(budgets.length).toBeGreaterThan(1);
    expect(new Set(budgets)).toEqual(new Set(['8']));
  });

  it("record a caller's bad image with its code, from the worker and the main thread alike, and leave the status UNSET", async () => {
    const spans = await generateSpans(async () => {
      // A PNG signature on bytes that are no PNG: through validation, refused by the worker's decoder.
      const broken = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.from('not an image at all')]);
      expect((await ask(pair.client, request(broken))).error?.details).toMatch(/image/);
    });
    const failed = [spans.find((s) => s.name === 'vlm.preprocess')!, spans.find(isVisionRequest)!, spans.find(isLanguageRequest)!];
    for (const span of failed) {
      expect({ name: span.name, type: exceptionType(span), error: span.attributes['error.type'], status: span.status.code }).toEqual({
        name: span.name,
        type: 'INVALID_ARGUMENT',
        error: 'INVALID_ARGUMENT',
        status: SpanStatusCode.UNSET,
      });
    }
  });
});

describe('span status of a failure: ERROR only for the server faults', () => {
  const cases: [VlmErrorCode, SpanStatusCode][] = [
    ['INVALID_ARGUMENT', SpanStatusCode.UNSET],
    ['NOT_FOUND', SpanStatusCode.UNSET],
    ['FAILED_PRECONDITION', SpanStatusCode.UNSET],
    ['UNAUTHENTICATED', SpanStatusCode.UNSET],
    ['PERMISSION_DENIED', SpanStatusCode.UNSET],
    ['CANCELLED', SpanStatusCode.UNSET],
    ['RESOURCE_EXHAUSTED', SpanStatusCode.UNSET],
    ['DEADLINE_EXCEEDED', SpanStatusCode.ERROR],
    ['UNIMPLEMENTED', SpanStatusCode.ERROR],
    ['INTERNAL', SpanStatusCode.ERROR],
    ['UNAVAILABLE', SpanStatusCode.ERROR],
    ['DATA_LOSS', SpanStatusCode.ERROR],
  ];
  const failing = (name: string, code: VlmErrorCode) => withSpan(name, {}, () => {
    throw new VlmError(code, 'on purpose');
  }).catch(() => undefined);

  it.each(cases)('%s -> status %i, with the exception and error.type always, in process and replayed from a worker', async (code, status) => {
    await failing(`main ${code}`, code);
    const recorder = new SpanRecorder();
    await recorder.run(() => failing(`worker ${code}`, code));
    replaySpans(recorder.spans, ROOT_CONTEXT);
    for (const name of [`main ${code}`, `worker ${code}`]) {
      const span = pair.spans().find((s) => s.name === name)!;
      expect({ name, status: span.status.code, error: span.attributes['error.type'], type: exceptionType(span) }).toEqual({ name, status, error: code, type: code });
    }
  });
});

describe('the send span of a stream', () => {
  it('ends with the counts written, marked CANCELLED (status UNSET) when the consumer stops early, and clean when complete', async () => {
    const messages = () => [{ bytes: 3 }, { bytes: 5 }, { bytes: 7 }];
    const cut = tracedSend(messages, { 'test.case': 'cut' }, (m) => m.bytes);
    await cut.next();
    await cut.return(undefined); // the call ended after one chunk
    for await (const _ of tracedSend(messages, { 'test.case': 'whole' }, (m) => m.bytes)) void _;
    const sendOf = (c: string) => pair.spans().find((s) => s.name === 'vlm.stream.send' && s.attributes['test.case'] === c)!;
    expect(sendOf('cut').attributes).toMatchObject({ 'vlm.chunks': 1, 'vlm.bytes': 3, 'error.type': 'CANCELLED' });
    expect(sendOf('cut').status.code).toBe(SpanStatusCode.UNSET);
    expect(sendOf('whole').attributes).toMatchObject({ 'vlm.chunks': 3, 'vlm.bytes': 15 });
    expect(sendOf('whole').attributes['error.type']).toBeUndefined();
  });
});

describe('request metrics', () => {
  beforeAll(async () => {
    expect((await ask(pair.client, request(await shapesImage()))).error).toBeNull();
    expect((await ask(pair.client, request(Buffer.from('not an image either')))).error).not.toBeNull();
  });

  it('gen_ai.server.request.duration: Generate only, with error.type (the gRPC code name) on failures', async () => {
    const points = await pair.histogram('gen_ai.server.request.duration');
    expect(points.every((p) => p.attributes['gen_ai.operation.name'] === 'chat')).toBe(true);
    expect(points.map((p) => p.attributes['error.type'])).toEqual(expect.arrayContaining([undefined, 'INVALID_ARGUMENT']));
  });

  it('vlm.encode.duration: Encode, with error.type on failures', async () => {
    const points = await pair.histogram('vlm.encode.duration');
    expect(points.map((p) => p.attributes['error.type'])).toEqual(expect.arrayContaining([undefined, 'INVALID_ARGUMENT']));
  });

  it.each(['gen_ai.server.time_to_first_token', 'vlm.decode.tokens_per_second', 'gen_ai.server.time_per_output_token'])('%s carries the request attributes of request duration', async (name) => {
    const points = await pair.histogram(name);
    expect(points.length).toBeGreaterThan(0);
    const model = pair.language.backend.model.manifest.model_id;
    for (const p of points) expect(p.attributes).toMatchObject({ 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': model, 'vlm.model.id': model });
  });
});

describe('worker spans follow the sampler', () => {
  const policy = { vision: 'none', language: 'none', budget: null, mode: 'clean', params: {}, seed: 0 } as const;

  /** Whether the pool asked its worker to record the job it ran. */
  async function recorded(parent: typeof ROOT_CONTEXT): Promise<boolean> {
    const post = vi.spyOn(Worker.prototype, 'postMessage');
    try {
      await context.with(parent, async () => pair.vision.backend.pool.encode(await shapesImage(), policy, {}));
      const run = post.mock.calls.map(([m]) => m as { type: string; record?: boolean }).find((m) => m.type === 'run');
      return run!.record!;
    } finally {
      post.mockRestore();
    }
  }

  it('a job inside a sampled span is recorded; one inside a trace the sampler dropped is not', async () => {
    const sampled = trace.getTracer('test').startSpan('sampled caller');
    expect(await recorded(trace.setSpan(ROOT_CONTEXT, sampled))).toBe(true);
    sampled.end();
    const dropped = trace.wrapSpanContext({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: TraceFlags.NONE });
    expect(await recorded(trace.setSpan(ROOT_CONTEXT, dropped))).toBe(false);
  });
});
