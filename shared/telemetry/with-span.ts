import { context, trace, type Attributes, type Context, type Span } from '@opentelemetry/api';
import { vlmTracer } from './scope';
import { activeRecorder } from './span-recorder';
import { markFailed } from './span-status';


/**
 * Runs fn inside an active span named `name`. On error the exception is recorded and `error.type` set
 * to the VlmError code; the status becomes ERROR only for a server fault (span-status.ts). The span
 * ends exactly once. Without an SDK registered this is the API's no-op tracer, so the core can call
 * it unconditionally. Inside `SpanRecorder.run` (a worker thread) the span is recorded as data for the
 * main thread to replay.
 */
export async function withSpan<T>(name: string, attributes: Attributes, fn: (span: Span) => Promise<T> | T): Promise<T> {
  const recording = activeRecorder();
  if (recording) {
    return recording.recorder.record(recording.parent, name, attributes, async (span) => {
      try {
        return await fn(span);
      } catch (err) {
        markFailed(span, err);
        throw err;
      }
    });
  }
  const span = vlmTracer().startSpan(name, { attributes });
  try {
    return await context.with(trace.setSpan(context.active(), span), () => fn(span));
  } catch (err) {
    markFailed(span, err);
    throw err;
  } finally {
    span.end();
  }
}

/** A span that outlives one callback (a stream's send or receive): ended once, by whoever finishes first. */
export interface OpenSpan {
  readonly span: Span;
  /** The context with this span active, for children and for outgoing calls. */
  readonly context: Context;
  /** Ends the span; with an error, marks it failed first. Later calls do nothing. */
  end(err?: unknown): void;
}

export function openSpan(name: string, attributes: Attributes, parent: Context = context.active()): OpenSpan {
  const span = vlmTracer().startSpan(name, { attributes }, parent);
  let ended = false;
  return {
    span,
    context: trace.setSpan(parent, span),
    end(err?: unknown) {
      if (ended) return;
      ended = true;
      if (err !== undefined) markFailed(span, err);
      span.end();
    },
  };
}
