/**
 * A call's trace ids, kept where both its handler and its interceptors can reach them: the handler
 * runs inside the call's server span; the access log writes its line when the status goes out, where
 * that span is no longer active.
 */
import type { Metadata } from '@grpc/grpc-js';
import { trace } from '@opentelemetry/api';

type TraceFields = { trace_id?: string; span_id?: string };

/** By the call's metadata: the one object the handler receives and the access log still holds. */
const traceOfCall = new WeakMap<Metadata, TraceFields>();

/** The active span's ids (the call's server span, on entry), so a log line can be found from its trace and back. */
export function rememberTrace(metadata: Metadata): TraceFields {
  const span = trace.getActiveSpan();
  if (!span?.isRecording()) return {};
  const { traceId, spanId } = span.spanContext();
  const fields = { trace_id: traceId, span_id: spanId };
  traceOfCall.set(metadata, fields);
  return fields;
}

/** The trace ids a handler recorded for the call with this metadata; none for a call refused before its handler, or untraced. */
export function traceOf(metadata: Metadata | undefined): TraceFields {
  return (metadata && traceOfCall.get(metadata)) ?? {};
}
