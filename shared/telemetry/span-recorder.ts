import { AsyncLocalStorage } from 'node:async_hooks';
import {
  INVALID_SPAN_CONTEXT,
  SpanStatusCode,
  context,
  trace,
  type Attributes,
  type AttributeValue,
  type Context,
  type Exception,
  type HrTime,
  type Link,
  type Span,
  type SpanContext,
  type SpanStatus,
  type TimeInput,
  type Tracer,
} from '@opentelemetry/api';
import { markFailed } from './span-status';
import { vlmTracer } from './scope';

/**
 * Spans from worker threads. The engine runs in workers, where no SDK is registered; instead of a
 * per-worker SDK (a second exporter, batch queue and shutdown per thread), a worker records what
 * `withSpan` would have created as plain data (SpanTiming), returns it with its result, and the main
 * thread replays it under the request's span with the recorded start and end times. The same engine
 * code therefore yields real spans in-process and the same spans, later, from a worker.
 */

/** One recorded span; times are epoch milliseconds with sub-millisecond precision. */
export interface SpanTiming {
  name: string;
  attributes: Attributes;
  startMs: number;
  endMs: number;
  /** Index of the parent in the same list, -1 for a span under the replay's parent. */
  parent: number;
  events: { name: string; timeMs: number; attributes?: Attributes }[];
  status?: { code: 'ERROR'; message: string };
}

/** Epoch ms with sub-ms precision, comparable across threads (each has its own timeOrigin). */
export function epochMillis(): number {
  return performance.timeOrigin + performance.now();
}

interface Frame {
  recorder: SpanRecorder;
  parent: number;
}
const frames = new AsyncLocalStorage<Frame>();

/** The recorder active in the current async context, if any. */
export function activeRecorder(): { recorder: SpanRecorder; parent: number } | undefined {
  return frames.getStore();
}

export class SpanRecorder {
  readonly spans: SpanTiming[] = [];

  /** Runs fn with this recorder active: every withSpan inside it records here instead of tracing. */
  run<T>(fn: () => T): T {
    return frames.run({ recorder: this, parent: -1 }, fn);
  }

  /** withSpan's recording twin: same nesting, same error handling, no SDK. */
  async record<T>(parent: number, name: string, attributes: Attributes, fn: (span: Span) => Promise<T> | T): Promise<T> {
    const index = this.spans.length;
    const timing: SpanTiming = { name, attributes: { ...attributes }, startMs: epochMillis(), endMs: NaN, parent, events: [] };
    this.spans.push(timing);
    const span = new RecordingSpan(timing);
    try {
      return await frames.run({ recorder: this, parent: index }, () => fn(span));
    } catch (err) {
      span.failWith(err);
      throw err;
    } finally {
      span.end();
    }
  }
}

function toMillis(t: TimeInput | undefined): number {
  if (t === undefined) return epochMillis();
  if (t instanceof Date) return t.getTime();
  if (Array.isArray(t)) return t[0] * 1e3 + t[1] / 1e6;
  // The API's numeric time is epoch ms, or performance.now() ms when smaller than timeOrigin.
  return (t as number) < performance.timeOrigin ? performance.timeOrigin + (t as number) : (t as number);
}

function toHrTime(ms: number): HrTime {
  const seconds = Math.floor(ms / 1000);
  return [seconds, Math.round((ms - seconds * 1000) * 1e6)];
}

/** The Span handed to withSpan's callback while recording. Ends once; later calls are ignored. */
class RecordingSpan implements Span {
  private ended = false;
  constructor(private readonly timing: SpanTiming) {}

  spanContext(): SpanContext {
    return INVALID_SPAN_CONTEXT;
  }
  setAttribute(key: string, value: AttributeValue): this {
    if (!this.ended) this.timing.attributes[key] = value;
    return this;
  }
  setAttributes(attributes: Attributes): this {
    if (!this.ended) Object.assign(this.timing.attributes, attributes);
    return this;
  }
  addEvent(name: string, attributesOrTime?: Attributes | TimeInput, time?: TimeInput): this {
    if (this.ended) return this;
    const isTime = attributesOrTime instanceof Date || Array.isArray(attributesOrTime) || typeof attributesOrTime === 'number';
    const attributes = isTime ? undefined : (attributesOrTime as Attributes | undefined);
    this.timing.events.push(attributes ? { name, timeMs: toMillis(isTime ? (attributesOrTime as TimeInput) : time), attributes } : { name, timeMs: toMillis(isTime ? (attributesOrTime as TimeInput) : time) });
    return this;
  }
  addLink(_link: Link): this {
    return this;
  }
  addLinks(_links: Link[]): this {
    return this;
  }
  setStatus(status: SpanStatus): this {
    if (!this.ended && status.code === SpanStatusCode.ERROR) this.timing.status = { code: 'ERROR', message: status.message ?? '' };
    return this;
  }
  updateName(name: string): this {
    if (!this.ended) this.timing.name = name;
    return this;
  }
  end(endTime?: TimeInput): void {
    if (this.ended) return;
    this.ended = true;
    this.timing.endMs = toMillis(endTime);
  }
  isRecording(): boolean {
    return !this.ended;
  }
  recordException(exception: Exception, time?: TimeInput): void {
    const e = typeof exception === 'string' ? { name: 'Error', message: exception } : exception;
    // The SDK's own rule (code before name), so a VlmError reads INVALID_ARGUMENT from either thread.
    const type = e.code ? String(e.code) : (e.name ?? 'Error');
    this.addEvent('exception', { 'exception.type': type, 'exception.message': e.message ?? '' }, time);
  }
  /** Filled in by withSpan's error path through the normal Span calls, kept here for the recorder. */
  failWith(err: unknown): void {
    if (this.timing.events.some((e) => e.name === 'exception')) return;
    markFailed(this, err);
  }
}

/**
 * Creates real spans from recorded timings, under `parent` (default: the active context), with their
 * recorded times. Call on the thread that has the SDK, right after the worker's reply.
 */
export function replaySpans(spans: readonly SpanTiming[], parent: Context = context.active(), tracer: Tracer = vlmTracer()): void {
  const contexts: Context[] = [];
  for (const [i, s] of spans.entries()) {
    const parentContext = s.parent >= 0 && s.parent < i ? contexts[s.parent]! : parent;
    const span = tracer.startSpan(s.name, { attributes: s.attributes, startTime: toHrTime(s.startMs) }, parentContext);
    for (const e of s.events) span.addEvent(e.name, e.attributes ?? {}, toHrTime(e.timeMs));
    if (s.status) span.setStatus({ code: SpanStatusCode.ERROR, message: s.status.message });
    span.end(toHrTime(Number.isNaN(s.endMs) ? s.startMs : s.endMs));
    contexts.push(trace.setSpan(parentContext, span));
  }
}
