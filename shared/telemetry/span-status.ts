import { SpanStatusCode, type Span } from '@opentelemetry/api';
import { VlmError } from '../errors';
import { ATTR_ERROR_TYPE } from './names';

/**
 * The codes OpenTelemetry's gRPC conventions count as the server's fault on a server span. The others
 * (a bad argument, a client's cancel, a full queue) leave the status UNSET: those are the caller's
 * doing, and an ERROR on them would drown the errors an operator has to act on.
 */
const SERVER_FAULTS: ReadonlySet<string> = new Set(['UNKNOWN', 'DEADLINE_EXCEEDED', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS']);

/** `code`: a VlmError code or any gRPC status code's name. */
export function isServerFault(code: string): boolean {
  return SERVER_FAULTS.has(code);
}

/** The exception event and `error.type` always; status ERROR only for a server fault. */
export function markFailed(span: Span, err: unknown): void {
  const e = VlmError.from(err);
  span.recordException(err instanceof Error ? err : new Error(String(err)));
  span.setAttribute(ATTR_ERROR_TYPE, e.code);
  if (isServerFault(e.code)) span.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
}
