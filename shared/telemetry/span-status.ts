import { SpanStatusCode, type Span } from '@opentelemetry/api';
import { VlmError, type VlmErrorCode } from '../errors';
import { ATTR_ERROR_TYPE } from './names';

/**
 * The codes OpenTelemetry's gRPC conventions count as the server's fault on a server span (UNKNOWN
 * aside, which a VlmError never carries). The others (a bad argument, a client's cancel, a full
 * queue) leave the status UNSET: those are the caller's doing, and an ERROR on them would drown the
 * errors an operator has to act on.
 */
const SERVER_FAULTS: ReadonlySet<VlmErrorCode> = new Set(['DEADLINE_EXCEEDED', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS']);

export function isServerFault(code: VlmErrorCode): boolean {
  return SERVER_FAULTS.has(code);
}

/** The exception event and `error.type` always; status ERROR only for a server fault. */
export function markFailed(span: Span, err: unknown): void {
  const e = VlmError.from(err);
  span.recordException(err instanceof Error ? err : new Error(String(err)));
  span.setAttribute(ATTR_ERROR_TYPE, e.code);
  if (isServerFault(e.code)) span.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
}
