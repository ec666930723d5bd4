/**
 * The one error type of the core. Services map `code` to a gRPC status in exactly one place
 * (services/common/server-stream.ts); everything else throws VlmError or lets unknown errors become
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
  | 'INTERNAL';

/** A field-level violation, carried to clients as google.rpc.BadRequest.FieldViolation. */
export interface FieldViolation {
  field: string;
  description: string;
}

export class VlmError extends Error {
  override readonly name = 'VlmError';
  readonly code: VlmErrorCode;
  readonly violations: readonly FieldViolation[];

  constructor(code: VlmErrorCode, message: string, options: { cause?: unknown; violations?: FieldViolation[] } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.violations = options.violations ?? [];
  }

  static invalid(field: string, description: string): VlmError {
    return new VlmError('INVALID_ARGUMENT', `${field}: ${description}`, { violations: [{ field, description }] });
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
  toJSON(): { code: VlmErrorCode; message: string; violations: readonly FieldViolation[] } {
    return { code: this.code, message: this.message, violations: this.violations };
  }

  static fromJSON(data: { code: VlmErrorCode; message: string; violations?: FieldViolation[] }): VlmError {
    return new VlmError(data.code, data.message, { violations: data.violations ?? [] });
  }
}

function isAbort(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { name?: string }).name === 'AbortError';
}

/** Throws the signal's reason as a VlmError if it is aborted; called between layers and decode steps. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  const reason: unknown = signal.reason;
  if (reason instanceof VlmError) throw reason;
  throw new VlmError('CANCELLED', 'the request was cancelled', { cause: reason });
}
