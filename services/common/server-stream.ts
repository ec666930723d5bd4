/**
 * Adapters from plain async functions to grpc-js handlers. Handlers are written as
 *   serverStream(async function* (req, ctx) { yield ... })   and   unary(async (req, ctx) => res)
 * and never touch the call: the adapter owns backpressure (waits for 'drain' when write() says the
 * buffer is full), cancellation and deadlines (ctx.signal), and sends exactly one status, built by
 * services/common/status.ts, returning right after it.
 */
import type {
  ServerInterceptingCallInterface,
  handleServerStreamingCall,
  handleUnaryCall,
  sendUnaryData,
  ServerUnaryCall,
  ServerWritableStream,
} from '@grpc/grpc-js';
import { SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import { throwIfAborted } from '../../shared/errors';
import type { Logger } from '../../shared/log';
import { ATTR_GRPC_ERROR_MESSAGE, ATTR_GRPC_ERROR_NAME, ATTR_RPC_GRPC_STATUS_CODE } from '../../shared/telemetry/names';
import { callContext, type CallContext } from './call-context';
import type { ActiveCalls } from './active-calls';
import { cancelledStatus, grpcCodeName, statusError, toStatus } from './status';
import { statusSentOn } from './grpc-stream';
import { isUndecodable, undecodableError } from './lenient-decode';

export interface AdapterDeps {
  readonly log: Logger;
  /** Deadline for calls that arrive without one. */
  readonly defaultDeadlineMs: number;
  /** The longest a call may run, whatever deadline it carries (--max-deadline-ms). */
  readonly maxDeadlineMs?: number;
  /** Where the calls are held for a drain to end (the same registry as the server's). */
  readonly calls?: ActiveCalls;
}

export type StreamFn<Req, Res> = (req: Req, ctx: CallContext) => AsyncIterable<Res>;
export type UnaryFn<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;

/** Resolves on 'drain'; rejects with the signal's reason if the call ends first. */
function drained(call: ServerWritableStream<unknown, unknown>, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    };
    const onAbort = (): void => {
      call.removeListener('drain', onDrain);
      reject(signal.reason);
    };
    if (signal.aborted) return onAbort();
    call.once('drain', onDrain);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Ends the gRPC server span of a call grpc-js ended without our status: the client's cancel or its
 * deadline, or a status grpc-js sent itself. The instrumentation ends that span only on 'finish' or
 * an error event, and such a call emits neither: left open, the span is never exported, and the trace
 * loses its root. Recorded as the instrumentation records a status; `error.type`, and the caller's
 * codes' UNSET, are added as every server span ends (shared/telemetry/grpc-span-outcome.ts).
 */
function endServerSpanOnClose(span: Span | undefined, status: { readonly code: number; readonly details: string }): void {
  if (!span?.isRecording()) return;
  // As the instrumentation records a handler's error (statusError names it by its code).
  span.setAttributes({ [ATTR_RPC_GRPC_STATUS_CODE]: status.code, [ATTR_GRPC_ERROR_NAME]: grpcCodeName(status.code), [ATTR_GRPC_ERROR_MESSAGE]: status.details });
  span.setStatus({ code: SpanStatusCode.ERROR, message: status.details });
  span.end();
}

// eslint-disable-next-line require-yield
async function* refuse(request: Parameters<typeof undecodableError>[0]): AsyncGenerator<never> {
  throw undecodableError(request);
}

/**
 * `isLast`: whether a response is the stream's last by contract (Generate's final, Encode's summary),
 * so that one still buffered when the call is ended completes it instead of failing it.
 */
export function serverStream<Req, Res>(fn: StreamFn<Req, Res>, deps: AdapterDeps, isLast: (response: Res) => boolean = () => false): handleServerStreamingCall<Req, Res> {
  return (call) => {
    void run(call);
  };

  async function run(call: ServerWritableStream<Req, Res>): Promise<void> {
    // Taken before the first await: the instrumentation's server span is active only on entry.
    const serverSpan = trace.getActiveSpan();
    const owned = callContext(call, { defaultDeadlineMs: deps.defaultDeadlineMs, maxDeadlineMs: deps.maxDeadlineMs, log: deps.log, calls: deps.calls });
    const { ctx } = owned;
    // A stream can also end after the handler returned, before 'finish': the client cancels while the
    // last writes wait for its flow control, or grpc-js sends a status itself (a response past the send
    // limit). grpc-js then destroys the stream and the instrumentation never ends the span. Every call
    // emits 'cancelled' when its stream closes: one that finished is left alone, and one still in the
    // handler is ended by the catch below, after its own spans.
    let returned = false;
    call.once('cancelled', () => {
      if (returned && !call.writableFinished) endServerSpanOnClose(serverSpan, errorStatusSent(call) ?? cancelledStatus(owned.cancelReason()));
    });
    const request = call.request;
    const iterator = (isUndecodable(request) ? refuse(request) : fn(request, ctx))[Symbol.asyncIterator]();
    try {
      for (;;) {
        const next = await iterator.next();
        if (next.done) break;
        throwIfAborted(ctx.signal);
        if (!call.write(next.value)) await drainedOrLast(call as ServerWritableStream<unknown, unknown>, ctx.signal, isLast(next.value));
      }
      throwIfAborted(ctx.signal);
      call.end();
      return;
    } catch (err) {
      if (err instanceof StreamComplete) {
        // The last message by contract is written: let the generator finish as it would have (its
        // spans end as complete), and stop it only if it does not.
        const after = await iterator.next().catch(() => ({ done: true }));
        if (after.done !== true) await iterator.return?.(undefined).catch(() => undefined);
        call.end();
        return;
      }
      // Let the generator run its finally blocks (release workers, cancel the vision hop).
      await iterator.return?.(undefined).catch(() => undefined);
      // grpc-js has already ended a call the client cancelled or whose grpc deadline passed; a
      // status now would be a second one.
      if (call.cancelled) return endServerSpanOnClose(serverSpan, errorStatusSent(call) ?? cancelledStatus(owned.cancelReason()));
      call.emit('error', statusError(toStatus(err, ctx.log, { method: call.getPath() })));
      return;
    } finally {
      returned = true;
      owned.dispose();
    }
  }
}

/** The error status the call's stream already carried out (grpc-js's own, when our handler had returned), if any. */
function errorStatusSent(call: ServerWritableStream<unknown, unknown>): { code: number; details: string } | undefined {
  const inner = (call as unknown as { call?: ServerInterceptingCallInterface }).call;
  const sent = inner ? statusSentOn(inner) : undefined;
  return sent && sent.code !== 0 ? sent : undefined;
}

/**
 * Waits for 'drain' after a write the transport buffered. If the call is ended meanwhile (a drain's
 * grace running out, the deadline) and that write was the stream's last message, the stream is whole
 * and is ended with OK: a complete answer must not be followed by an error status. Otherwise the
 * abort goes on as the call's error.
 */
export async function drainedOrLast(call: ServerWritableStream<unknown, unknown>, signal: AbortSignal, wroteLast: boolean): Promise<void> {
  try {
    await drained(call, signal);
  } catch (err) {
    if (wroteLast && !call.cancelled) throw new StreamComplete();
    throw err;
  }
}

/** Thrown by drainedOrLast: everything was written, end the call with OK. */
export class StreamComplete extends Error {}

export function unary<Req, Res>(fn: UnaryFn<Req, Res>, deps: AdapterDeps): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    void run(call, callback);
  };

  async function run(call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): Promise<void> {
    const serverSpan = trace.getActiveSpan();
    const owned = callContext(call, { defaultDeadlineMs: deps.defaultDeadlineMs, maxDeadlineMs: deps.maxDeadlineMs, log: deps.log, calls: deps.calls });
    try {
      const request = call.request;
      if (isUndecodable(request)) throw undecodableError(request);
      const res = await fn(request, owned.ctx);
      throwIfAborted(owned.ctx.signal);
      callback(null, res);
      return;
    } catch (err) {
      if (call.cancelled) return endServerSpanOnClose(serverSpan, cancelledStatus(owned.cancelReason()));
      callback(statusError(toStatus(err, owned.ctx.log, { method: call.getPath() })));
      return;
    } finally {
      owned.dispose();
    }
  }
}
