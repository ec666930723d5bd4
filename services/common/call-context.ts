/**
 * What a handler knows about its call, independent of grpc-js: an AbortSignal that fires when the
 * client cancels or the deadline passes, the deadline itself (epoch ms, always finite: calls without
 * one get the service's default), and the request id the interceptors put into the metadata.
 *
 * The core only ever sees `signal` (checked between layers and decode steps) and `deadline` (passed on
 * to the vision hop), so cancellation and deadlines cross the service boundary unchanged.
 */
import type { ActiveCalls } from './active-calls';
import type { Metadata } from '@grpc/grpc-js';
import { VlmError } from '../../shared/errors';
import type { Logger } from '../../shared/log';
import { CALLER_KEY, REQUEST_ID_KEY } from './interceptors';
import { rememberCancel, rememberTrace } from './call-trace';
import { MAX_TIMER_MS } from '../../shared/timer-limit';
import type { LimitsConfig } from '../../shared/config';

export interface CallContext {
  readonly signal: AbortSignal;
  /** Epoch milliseconds. */
  readonly deadline: number;
  readonly requestId: string;
  /** The accepted bearer token's name ('' without authentication): the pool's fair queue serves callers in turn. */
  readonly caller: string;
  /** Incoming metadata (trace context travels here). */
  readonly metadata: Metadata;
  /** Logger bound to this request (`requestId`, and `trace_id` and `span_id` when traced, on every line). */
  readonly log: Logger;
}

/** The parts of a grpc-js server call a context needs (all server call types have them). */
export interface ContextSource {
  readonly metadata: Metadata;
  getDeadline(): Date | number;
  on(event: 'cancelled', listener: () => void): unknown;
  removeListener(event: 'cancelled', listener: () => void): unknown;
}

export interface ContextOptions {
  /** Used when the client set no deadline. */
  readonly defaultDeadlineMs: number;
  /** The longest any call may run (--max-deadline-ms); a client's longer deadline is cut to it. */
  readonly maxDeadlineMs?: number;
  readonly log: Logger;
  /** Holds the call until disposed, for a drain to end it (active-calls.ts). */
  readonly calls?: ActiveCalls;
}

export interface OwnedContext {
  readonly ctx: CallContext;
  /** Removes the listener and timer; call once the call is finished. */
  readonly dispose: () => void;
  /**
   * Why grpc-js ended the call: the signal's reason once aborted, else (a cancel that arrives after
   * dispose) read now as `'cancelled'` would have read it.
   */
  readonly cancelReason: () => VlmError;
}


/**
 * The client's deadline when it set one (grpc-js gives Infinity when it did not), else the service
 * default. A client's deadline is kept when longer than the default (the caller knows how long its
 * answer may take: a long answer on a large model) up to the service's longest, which an aged-out
 * connection waits for (grpc-server.ts transportOptions).
 */
export function deadlineOf(source: Pick<ContextSource, 'getDeadline'>, defaultDeadlineMs: number, now = Date.now(), maxDeadlineMs = MAX_TIMER_MS): number {
  const raw = source.getDeadline();
  const client = raw instanceof Date ? raw.getTime() : raw;
  return Math.min(Number.isFinite(client) ? client : now + defaultDeadlineMs, now + Math.min(maxDeadlineMs, MAX_TIMER_MS));
}

export function callContext(source: ContextSource, options: ContextOptions): OwnedContext {
  const controller = new AbortController();
  const start = Date.now();
  const deadline = deadlineOf(source, options.defaultDeadlineMs, start, options.maxDeadlineMs);
  // The call's own deadline was past the service's longest: its expiry says which one ended it.
  const cut = deadline < deadlineOf(source, options.defaultDeadlineMs, start);
  const requestId = String(source.metadata.get(REQUEST_ID_KEY)[0] ?? '');
  const caller = String(source.metadata.get(CALLER_KEY)[0] ?? '');

  const expire = (): void => {
    if (controller.signal.aborted) return;
    const ms = deadline - start;
    const span = ms < 1000 ? `${Math.max(0, Math.round(ms))} ms` : `${(ms / 1000).toFixed(1)} s`;
    controller.abort(
      new VlmError(
        'DEADLINE_EXCEEDED',
        cut
          ? `the request did not finish within ${span}, the longest this service lets a call run (--max-deadline-ms; the call's own deadline was longer); lower max_tokens`
          : `the request did not finish within its ${span} deadline (counted from its arrival here); set a longer deadline or lower max_tokens`,
      ),
    );
  };
  // grpc-js emits 'cancelled' both for a client cancel and for a deadline. The server's deadline
  // counts from when the request arrived, so a client giving up at its own deadline cancels early by
  // the request's transit and queueing delay (tens of milliseconds on a busy host). A cancel that
  // close to the deadline is read as the deadline; only logs, spans and metrics see the label, since
  // a cancelled client receives no status. The reading is kept for the access log and the call metric.
  const readCancel = (): VlmError => {
    const window = Math.min(1000, Math.max(50, (deadline - start) * 0.2));
    const read = Date.now() >= deadline - window
      ? new VlmError('DEADLINE_EXCEEDED', 'the deadline passed before the request finished')
      : new VlmError('CANCELLED', 'the client cancelled the request');
    rememberCancel(source.metadata, read.code === 'DEADLINE_EXCEEDED' ? 'DEADLINE_EXCEEDED' : 'CANCELLED');
    return read;
  };
  const onCancelled = (): void => {
    if (!controller.signal.aborted) controller.abort(readCancel());
  };

  source.on('cancelled', onCancelled);
  const timer = setTimeout(expire, Math.max(0, deadline - Date.now()));
  timer.unref();
  const untrack = options.calls?.track(controller);

  const ctx: CallContext = {
    signal: controller.signal,
    deadline,
    requestId,
    caller,
    metadata: source.metadata,
    log: withFields(options.log, { requestId, ...rememberTrace(source.metadata) }),
  };
  return {
    ctx,
    dispose: () => {
      clearTimeout(timer);
      source.removeListener('cancelled', onCancelled);
      untrack?.();
    },
    cancelReason: () => (controller.signal.aborted ? VlmError.from(controller.signal.reason) : readCancel()),
  };
}

/** A logger that adds `fields` to every line (the shared logger binds components, not fields). */
export function withFields(log: Logger, fields: Record<string, unknown>): Logger {
  const merge = (f?: Record<string, unknown>): Record<string, unknown> => ({ ...fields, ...f });
  return {
    debug: (m, f) => log.debug(m, merge(f)),
    info: (m, f) => log.info(m, merge(f)),
    warn: (m, f) => log.warn(m, merge(f)),
    error: (m, f) => log.error(m, merge(f)),
    child: (c) => withFields(log.child(c), fields),
  };
}

/** How long past its time a call's status may wait behind responses its client does not take (stalled-calls.ts). */
export const STALLED_STATUS_GRACE_MS = 5_000;

/**
 * The longest a call can stay open: its request may arrive up to the default deadline after its
 * headers (requestArrivalInterceptor), it then runs at most the longest deadline, and a client that
 * does not read its responses keeps it a grace longer (stalled-calls.ts). An aged-out or closed
 * connection waits this long, so the transport never cuts a call off.
 */
export function callLifetimeBoundMs(limits: Pick<LimitsConfig, 'deadlineMs' | 'maxDeadlineMs'>): number {
  return Math.min(MAX_TIMER_MS, limits.deadlineMs + limits.maxDeadlineMs + STALLED_STATUS_GRACE_MS);
}
