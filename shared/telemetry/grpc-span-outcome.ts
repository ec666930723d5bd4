/**
 * Brings the gRPC spans of `@opentelemetry/instrumentation-grpc` in line with the RPC conventions as
 * they end, before any exporter sees them. The instrumentation marks every non-OK code ERROR and sets
 * no `error.type`; the conventions ask for `error.type` on every failed call, client and server side,
 * and status ERROR on a server span only for the server's faults, so that a backend's error rate from
 * server spans (span metrics, service graphs) counts what an operator must act on, not refused
 * requests. A client span stays ERROR for every failed call, as the conventions have it.
 */
import { SpanKind, SpanStatusCode, type Context, type SpanStatus } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { grpcCodeName } from '../errors';
import { ATTR_ERROR_TYPE, ATTR_RPC_GRPC_STATUS_CODE } from './names';
import { isServerFault } from './span-status';

export class GrpcSpanOutcome implements SpanProcessor {
  onStart(_span: Span, _parent: Context): void {}

  /** The SDK calls this while the span can still change (`onEnd` sees it read-only). */
  onEnding(span: Span): void {
    if (span.kind !== SpanKind.SERVER && span.kind !== SpanKind.CLIENT) return;
    const code = span.attributes[ATTR_RPC_GRPC_STATUS_CODE];
    if (typeof code !== 'number' || code === 0) return;
    const name = grpcCodeName(code);
    if (span.attributes[ATTR_ERROR_TYPE] === undefined) span.setAttribute(ATTR_ERROR_TYPE, name);
    // setStatus ignores UNSET by the API's rule, so the caller's codes are reset on the span itself.
    if (span.kind === SpanKind.SERVER && !isServerFault(name) && span.status.code === SpanStatusCode.ERROR) (span as { status: SpanStatus }).status = { code: SpanStatusCode.UNSET };
  }

  onEnd(_span: ReadableSpan): void {}

  forceFlush(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}
