/**
 * Puts every span the SDK times itself on one clock with the spans replayed from worker threads. The
 * SDK starts such a span at Date.now(), whole milliseconds, and ends it a performance.now() duration
 * later; the workers' spans carry performance.timeOrigin + performance.now() (span-recorder.ts), a
 * clock a fraction of a millisecond apart from Date.now(). Mixed, a `vlm.request` could end after its
 * own gRPC server span and a child start before its parent. Restarting each span at its own
 * performance.now() reading, on the timeOrigin clock, keeps the SDK's duration arithmetic (end and
 * event times are the start plus a performance.now() duration) and makes every time sub-millisecond.
 */
import { millisToHrTime } from '@opentelemetry/core';
import type { Context, HrTime } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace-base';

/** What the SDK's Span keeps of its start (@opentelemetry/sdk-trace 2.12, pinned; checked by test/trace-cancelled.test.ts). */
interface SpanClock {
  startTime: HrTime;
  readonly _performanceStartTime?: unknown;
  readonly _startTimeProvided?: unknown;
}

export class PerformanceClockStart implements SpanProcessor {
  onStart(span: Span, _parent: Context): void {
    const s = span as unknown as SpanClock;
    // A start given by the caller (a worker span replayed) is already on this clock.
    if (s._startTimeProvided !== false || typeof s._performanceStartTime !== 'number') return;
    s.startTime = millisToHrTime(performance.timeOrigin + s._performanceStartTime);
  }

  onEnd(_span: ReadableSpan): void {}

  forceFlush(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}
