/**
 * The one place where errors become gRPC statuses (server side) and statuses become errors again
 * (client side: the language service calling vision, the CLI). VlmError codes map 1:1 to gRPC codes;
 * field violations (google.rpc.BadRequest), a reason (google.rpc.ErrorInfo, domain `vlm.v1`) and a
 * retry delay (google.rpc.RetryInfo) travel inside google.rpc.Status in the `grpc-status-details-bin`
 * trailer, which every gRPC library knows how to read.
 *
 * Anything that is not a VlmError becomes INTERNAL "internal error": the cause is logged with the
 * request id and never sent, so stack traces, paths and library messages stay inside the service.
 */
import { Metadata, status as GrpcCode, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { grpcCodeName, RPC_CODE, VLM_ERROR_REASONS, VlmError, type FieldViolation, type VlmErrorCode, type VlmErrorReason } from '../../shared/errors';
import type { Logger } from '../../shared/log';
import { Any } from '../../gen/google/protobuf/any';
import { BadRequest, ErrorInfo, RetryInfo } from '../../gen/google/rpc/error_details';
import { Status } from '../../gen/google/rpc/status';
import { clipText } from './text-cut';

export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const BAD_REQUEST_TYPE = 'type.googleapis.com/google.rpc.BadRequest';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';
const RETRY_INFO_TYPE = 'type.googleapis.com/google.rpc.RetryInfo';
/** ErrorInfo.domain of every reason this API sends. */
export const ERROR_DOMAIN = 'vlm.v1';
const REASONS: ReadonlySet<string> = new Set(VLM_ERROR_REASONS);

/**
 * Bounds on what a status carries, as sent. C-core clients (Python, C++, Ruby, PHP) and Java accept
 * 8 KiB of response metadata by default: a status past it reaches them as RESOURCE_EXHAUSTED "received
 * initial metadata size exceeds limit", its details lost, and a retry policy retries it. The message
 * travels twice, percent-encoded in grpc-message and inside the base64 details; the two stay within
 * 7 KiB, leaving the rest for the other headers (status, content type, request id, pushback).
 */
const MAX_MESSAGE_WIRE = 1536;
const MAX_DETAILS_WIRE = 7 * 1024 - MAX_MESSAGE_WIRE;
const MAX_FIELD_CHARS = 256;
const MAX_DESCRIPTION_CHARS = 1024;

// grpc-js numbers its codes as google.rpc.Code does (checked by test/service-status-details.test.ts).
const TO_GRPC = RPC_CODE as Readonly<Record<VlmErrorCode, GrpcCode>>;

/** gRPC codes with no VlmError counterpart, folded onto the nearest one a caller acts on alike. */
const FROM_GRPC: Readonly<Partial<Record<GrpcCode, VlmErrorCode>>> = Object.freeze({
  ...Object.fromEntries(Object.entries(TO_GRPC).map(([k, v]) => [v, k as VlmErrorCode])),
  [GrpcCode.OUT_OF_RANGE]: 'INVALID_ARGUMENT',
  [GrpcCode.ABORTED]: 'UNAVAILABLE',
  [GrpcCode.UNKNOWN]: 'INTERNAL',
  [GrpcCode.ALREADY_EXISTS]: 'FAILED_PRECONDITION',
});

export function grpcCodeOf(code: VlmErrorCode): GrpcCode {
  return TO_GRPC[code];
}

export { grpcCodeName };

/**
 * The status of a call grpc-js ended without one from us (the client's cancel, or its deadline), as
 * its client saw it: DEADLINE_EXCEEDED for the deadline, CANCELLED for anything else that aborted it.
 */
export function cancelledStatus(why: VlmError): { code: GrpcCode; details: string } {
  return { code: grpcCodeOf(why.code === 'DEADLINE_EXCEEDED' ? why.code : 'CANCELLED'), details: why.message };
}

/**
 * The status to send for `err`. INTERNAL errors are logged here with their cause (the only place that
 * sees them all); the message sent is fixed, except for a lost worker (WORKER_LOST) or a failed GPU
 * (DEVICE_FAULT), whose messages are this project's own and whose reasons tell a client it may send
 * the request once more.
 */
export function toStatus(err: unknown, log: Logger, fields: Record<string, unknown> = {}): StatusObject {
  const e = VlmError.from(err);
  if (e.code !== 'INTERNAL') return refusalStatus(e);
  log.error('internal error', { ...fields, error: describeCause(err) });
  if (e.reason === 'WORKER_LOST' || e.reason === 'DEVICE_FAULT') return refusalStatus(e);
  return statusObject(GrpcCode.INTERNAL, 'internal error');
}

/**
 * The status of an error the caller may see whole (any but INTERNAL, or a lost worker): code, clipped message, details.
 * The interceptors' refusals use it directly: they are never INTERNAL and have nothing to log.
 */
export function refusalStatus(e: VlmError): StatusObject {
  return statusObject(grpcCodeOf(e.code), e.message, e);
}

/**
 * A status as the Error grpc-js accepts for one (`call.emit('error')`, a unary callback): the same code,
 * details and trailers, with the details as its message and the code's name as its name, which the
 * grpc instrumentation copies onto the server span (a bare status object leaves both empty there).
 */
export function statusError(status: StatusObject): Error & StatusObject {
  const e = Object.assign(new Error(status.details), status);
  e.name = grpcCodeName(status.code);
  return e;
}

/**
 * The retry delay as gRPC's own retry reads it (gRFC A6 server pushback). google.rpc.RetryInfo in the
 * details is for applications; a channel's retryPolicy reads only this trailer, and without it
 * retries a full queue after its own backoff (0.2 s) instead of the delay the service asked for.
 * Sent with RESOURCE_EXHAUSTED only: an UNAVAILABLE replica (no worker, draining, vision down) is
 * left to the channel's backoff, which takes the retry to the next replica of its round robin at
 * once (the language service's own hop included); its RetryInfo still says how long this one needs.
 */
export const RETRY_PUSHBACK_KEY = 'grpc-retry-pushback-ms';

/** A retry delay as both RetryInfo and the pushback trailer send it: whole milliseconds, none negative. */
function retryDelayOf(ms: number): number {
  return Math.max(0, Math.round(ms));
}

/** A status with its details trailer, both within the bounds above (the message clipped, violations past them left out and counted). */
export function statusObject(code: GrpcCode, details: string, extra: StatusDetails = {}): StatusObject {
  const fitted = fitStatus(code, details, extra);
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, fitted.details);
  if (extra.retryDelayMs !== undefined && code === GrpcCode.RESOURCE_EXHAUSTED) metadata.set(RETRY_PUSHBACK_KEY, String(retryDelayOf(extra.retryDelayMs)));
  return { code, details: fitted.message, metadata };
}

export interface StatusDetails {
  readonly violations?: readonly FieldViolation[];
  readonly reason?: VlmErrorReason;
  readonly retryDelayMs?: number;
}

/** An error's name and message; a peer's gRPC status (a hop's cause) by its code name and details. */
function describeOne(cause: unknown): string {
  if (cause instanceof Error) return `${cause.name}: ${cause.message}`;
  if (typeof cause === 'object' && cause !== null && typeof (cause as StatusObject).code === 'number' && typeof (cause as StatusObject).details === 'string') {
    const { code, details } = cause as StatusObject;
    return `gRPC status ${grpcCodeName(code)}: ${details}`;
  }
  return String(cause);
}

function describeCause(err: unknown): Record<string, unknown> {
  const chain: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; cur !== undefined && depth < 5; depth++) {
    chain.push(describeOne(cur));
    cur = cur instanceof Error ? cur.cause : undefined;
  }
  const stack = err instanceof Error ? err.stack?.split('\n').slice(1, 6).map((s) => s.trim()) : undefined;
  return { chain, stack };
}

/** `text` cut (at a character, the cut marked) so that grpc-js's percent-encoding of it is at most `max` bytes. */
function clipWire(text: string, max: number): string {
  if (encodeURI(text).length <= max) return text;
  // The longest prefix that fits: percent-encoding takes 1 to 12 bytes a character.
  let lo = 0;
  let hi = Math.min(text.length, max);
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (encodeURI(clipText(text, mid)).length <= max) lo = mid;
    else hi = mid - 1;
  }
  return lo === 0 ? '' : clipText(text, lo);
}

/** Base64's length for `bytes` bytes. */
const base64Length = (bytes: number): number => 4 * Math.ceil(bytes / 3);

/**
 * The message and details a status sends, within MAX_MESSAGE_WIRE and MAX_DETAILS_WIRE: each
 * violation clipped, then as many of them as fit, earliest first; the message says how many more
 * there were (a caller fixing those sees the rest on its next try).
 */
function fitStatus(code: GrpcCode, message: string, extra: StatusDetails): { message: string; details: Buffer } {
  const violations = (extra.violations ?? []).map((v) => ({ field: clipText(v.field, MAX_FIELD_CHARS), description: clipText(v.description, MAX_DESCRIPTION_CHARS) }));
  const sized = (kept: number): { message: string; details: Buffer } => {
    const left = violations.length - kept;
    const note = left > 0 ? ` (and ${left} more field violation${left === 1 ? '' : 's'} not listed)` : '';
    const text = clipWire(message, MAX_MESSAGE_WIRE - encodeURI(note).length) + note;
    return { message: text, details: encodeStatusDetails(code, text, { ...extra, violations: violations.slice(0, kept) }) };
  };
  const all = sized(violations.length);
  if (base64Length(all.details.length) <= MAX_DETAILS_WIRE) return all;
  // The most violations that fit (every one is at least a few bytes, so a search, not a scan).
  let lo = 0;
  let hi = violations.length - 1;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (base64Length(sized(mid).details.length) <= MAX_DETAILS_WIRE) lo = mid;
    else hi = mid - 1;
  }
  return sized(lo);
}

/** The google.rpc.Status trailer for a status, as given (statusObject fits it to the bounds first). */
function encodeStatusDetails(code: GrpcCode, message: string, extra: StatusDetails = {}): Buffer {
  const details: Any[] = [];
  const violations = extra.violations ?? [];
  if (violations.length > 0) {
    const badRequest = BadRequest.encode({
      fieldViolations: violations.map((v) => ({ field: v.field, description: v.description, reason: '' })),
    }).finish();
    details.push({ typeUrl: BAD_REQUEST_TYPE, value: Buffer.from(badRequest) });
  }
  if (extra.reason !== undefined) {
    details.push({ typeUrl: ERROR_INFO_TYPE, value: Buffer.from(ErrorInfo.encode({ reason: extra.reason, domain: ERROR_DOMAIN, metadata: {} }).finish()) });
  }
  if (extra.retryDelayMs !== undefined) {
    const ms = retryDelayOf(extra.retryDelayMs);
    const retryDelay = { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
    details.push({ typeUrl: RETRY_INFO_TYPE, value: Buffer.from(RetryInfo.encode({ retryDelay }).finish()) });
  }
  return Buffer.from(Status.encode({ code, message, details }).finish());
}

/**
 * Violations, reason and retry delay from a status trailer; each empty when absent or unreadable (a
 * reason from another domain, or one this version does not know, is left out).
 */
export function decodeStatusDetails(metadata: Metadata | undefined): { violations: FieldViolation[]; reason?: VlmErrorReason; retryDelayMs?: number } {
  const raw = metadata?.get(STATUS_DETAILS_KEY)[0];
  const out: { violations: FieldViolation[]; reason?: VlmErrorReason; retryDelayMs?: number } = { violations: [] };
  if (!Buffer.isBuffer(raw)) return out;
  try {
    for (const d of Status.decode(raw).details) {
      if (d.typeUrl === BAD_REQUEST_TYPE) {
        out.violations.push(...BadRequest.decode(d.value).fieldViolations.map((v) => ({ field: v.field, description: v.description })));
      } else if (d.typeUrl === ERROR_INFO_TYPE) {
        const info = ErrorInfo.decode(d.value);
        if (info.domain === ERROR_DOMAIN && REASONS.has(info.reason)) out.reason = info.reason as VlmErrorReason;
      } else if (d.typeUrl === RETRY_INFO_TYPE) {
        const delay = RetryInfo.decode(d.value).retryDelay;
        if (delay) out.retryDelayMs = Number(delay.seconds) * 1000 + Math.round(delay.nanos / 1e6);
      }
    }
    return out;
  } catch {
    return { violations: [] };
  }
}

/** Field violations from a status trailer; empty when there are none or it does not parse. */
export function decodeViolations(metadata: Metadata | undefined): FieldViolation[] {
  return decodeStatusDetails(metadata).violations;
}

/**
 * A status received from another service (or by a client) as a VlmError with the same code, message
 * and violations, so the language service can relay what vision said without re-wording it.
 */
export function fromServiceError(err: ServiceError | (Partial<ServiceError> & { code: number }), prefix = ''): VlmError {
  const code = FROM_GRPC[err.code as GrpcCode] ?? 'INTERNAL';
  const details = err.details ?? err.message ?? grpcCodeName(err.code);
  return new VlmError(code, prefix + details, { cause: err, ...decodeStatusDetails(err.metadata) });
}
