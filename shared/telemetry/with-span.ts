import { context, trace, SpanStatusCode, type Attributes, type Span } from '@opentelemetry/api';
import { VlmError } from '../errors';

const tracer = () => trace.getTracer('vlm');

/**
 * Runs fn inside an active span named `name`. On error the exception is recorded, the status set to
 * ERROR and `error.type` to the VlmError code. The span ends exactly once. Without an SDK registered
 * this is the API's no-op tracer, so the core can call it unconditionally.
 */
export async function withSpan<T>(name: string, attributes: Attributes, fn: (span: Span) => Promise<T> | T): Promise<T> {
  const span = tracer().startSpan(name, { attributes });
  try {
    return await context.with(trace.setSpan(context.active(), span), () => fn(span));
  } catch (err) {
    const e = VlmError.from(err);
    span.recordException(err instanceof Error ? err : new Error(String(err)));
    span.setAttribute('error.type', e.code);
    span.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
    throw err;
  } finally {
    span.end();
  }
}
