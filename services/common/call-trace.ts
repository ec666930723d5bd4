/**
 * What a call's handler learns that its access log line needs, kept where both can reach them: the
 * trace ids (the handler runs inside the call's server span; the access log writes its line when the
 * status goes out, where that span is no longer active), and how the handler read a cancel.
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

/** How the handler read the cancel that ended a call: grpc-js reports a client's cancel and its deadline alike. */
export type CancelReading = 'CANCELLED' | 'DEADLINE_EXCEEDED';

const cancelOfCall = new WeakMap<Metadata, CancelReading>();

/** The handler's reading of its call's cancel (call-context.ts), so the access log and metric say the same as the span. */
export function rememberCancel(metadata: Metadata, reading: CancelReading): void {
  cancelOfCall.set(metadata, reading);
}

/**
 * The reading a handler recorded; undefined when none ran or none heard the cancel. The access log
 * hears of a cancel before the handler does (interceptors are told first): read this a tick later.
 */
export function cancelOf(metadata: Metadata | undefined): CancelReading | undefined {
  return metadata && cancelOfCall.get(metadata);
}
