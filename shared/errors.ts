/**
 * The one error type of the core. Services map `code` to a gRPC status in exactly one place
 * (services/common/status.ts); everything else throws VlmError or lets unknown errors become
 * INTERNAL there, with the cause logged and never sent.
 */
export type VlmErrorCode =
  | 'INVALID_ARGUMENT'
  | 'FAILED_PRECONDITION'
  | 'RESOURCE_EXHAUSTED'
  | 'UNAVAILABLE'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'NOT_FOUND'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'DATA_LOSS'
  | 'UNIMPLEMENTED'
  | 'INTERNAL';

/**
 * Each VlmError code's number in google.rpc.Code, the numbering gRPC status codes share: the gRPC
 * mapping (services/common/status.ts) and the OTLP receiver's google.rpc.Status answers both read it.
 * Checked against GRPC_CODE_NAMES below (test/service-status-details.test.ts).
 */
export const RPC_CODE: Readonly<Record<VlmErrorCode, number>> = Object.freeze({
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
});

/** Every gRPC status code's name, by number (google.rpc.Code), including those no VlmError carries. */
export const GRPC_CODE_NAMES: readonly string[] = Object.freeze([
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED',
]);

/** Name of a gRPC status code as clients print it (`INVALID_ARGUMENT`); `CODE_n` for a number gRPC does not define. */
export function grpcCodeName(code: number): string {
  return GRPC_CODE_NAMES[code] ?? `CODE_${code}`;
}

/** A field-level violation, carried to clients as google.rpc.BadRequest.FieldViolation. */
export interface FieldViolation {
  field: string;
  description: string;
}

/**
 * Machine-readable reasons (google.rpc.ErrorInfo, domain `vlm.v1`) for the errors a caller handles
 * differently under one code: a full queue and a request too large for the transport are both
 * RESOURCE_EXHAUSTED, but only the first is worth retrying. MODEL_MISMATCH: the vision replicas this
 * language service reached run another model or version (a rollout in progress).
 */
export const VLM_ERROR_REASONS = ['QUEUE_FULL', 'OUT_OF_MEMORY', 'NO_WORKER', 'SHUTTING_DOWN', 'VISION_UNAVAILABLE', 'MODEL_MISMATCH', 'WORKER_LOST', 'DEVICE_FAULT'] as const;
export type VlmErrorReason = (typeof VLM_ERROR_REASONS)[number];

/** Wire fields of an error besides its code and message, carried across the worker boundary and the hop. */
export interface VlmErrorDetails {
  cause?: unknown;
  violations?: FieldViolation[];
  /** Why, for a caller that branches on it (sent as google.rpc.ErrorInfo.reason). */
  reason?: VlmErrorReason;
  /** How long a caller should wait before retrying (sent as google.rpc.RetryInfo); unset: do not retry as is. */
  retryDelayMs?: number;
}

export class VlmError extends Error {
  override readonly name = 'VlmError';
  readonly code: VlmErrorCode;
  readonly violations: readonly FieldViolation[];
  readonly reason: VlmErrorReason | undefined;
  readonly retryDelayMs: number | undefined;

  constructor(code: VlmErrorCode, message: string, options: VlmErrorDetails = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.violations = options.violations ?? [];
    this.reason = options.reason;
    this.retryDelayMs = options.retryDelayMs;
  }

  static invalid(field: string, description: string): VlmError {
    return new VlmError('INVALID_ARGUMENT', `${field}: ${description}`, { violations: [{ field, description }] });
  }

  /** UNAVAILABLE SHUTTING_DOWN, retry at once: another replica can take the request (pool, admission, drain). */
  static shuttingDown(message: string): VlmError {
    return new VlmError('UNAVAILABLE', message, { reason: 'SHUTTING_DOWN', retryDelayMs: 0 });
  }

  /** Normalises anything thrown: aborts become CANCELLED/DEADLINE_EXCEEDED, the rest INTERNAL. */
  static from(err: unknown): VlmError {
    if (err instanceof VlmError) return err;
    if (isAbort(err)) {
      const reason = (err as { cause?: unknown }).cause;
      if (reason instanceof VlmError) return reason;
      return new VlmError('CANCELLED', 'the request was cancelled', { cause: err });
    }
    return new VlmError('INTERNAL', 'internal error', { cause: err });
  }

  /** Plain data for crossing a worker-thread boundary. */
  toJSON(): VlmErrorJSON {
    return { code: this.code, message: this.message, violations: this.violations, reason: this.reason, retryDelayMs: this.retryDelayMs };
  }

  static fromJSON(data: VlmErrorJSON): VlmError {
    return new VlmError(data.code, data.message, { violations: [...(data.violations ?? [])], reason: data.reason, retryDelayMs: data.retryDelayMs });
  }
}

export interface VlmErrorJSON {
  code: VlmErrorCode;
  message: string;
  violations?: readonly FieldViolation[];
  reason?: VlmErrorReason;
  retryDelayMs?: number;
}

function isAbort(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { name?: string }).name === 'AbortError';
}

/** An aborted signal's reason as a VlmError: itself if it is one, else CANCELLED with it as the cause. */
export function abortReason(signal: AbortSignal): VlmError {
  const reason: unknown = signal.reason;
  return reason instanceof VlmError ? reason : new VlmError('CANCELLED', 'the request was cancelled', { cause: reason });
}

/** Throws the signal's reason as a VlmError if it is aborted; called between layers and decode steps. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortReason(signal);
}
