/**
 * Calls whose client stopped reading. grpc-js sends a call's status after its last buffered response,
 * and sends a response only as the client's HTTP/2 window allows, so a client that stops reading (its
 * window shut, its connection still answering pings) keeps the call open after its handler has ended,
 * its deadline included (grpc-js's own deadline status waits behind the same data). Such a call keeps
 * its admission slot, its buffered responses (up to the whole Encode tensor) and its handler's memory
 * until the connection ages out (minutes), or for ever with `--max-connection-age-ms 0`: enough of
 * them fill `--max-inflight-calls` for everyone.
 *
 * So every call has a time by which it must be over: its deadline (the client's, or the default one
 * the handlers apply), or for reflection the lifetime the admission gives those streams. A call not
 * over `graceMs` after that has its HTTP/2 stream reset (RST_STREAM CANCEL): its client sees it
 * cancelled, which is all a client that does not read could see anyway, and grpc-js ends it at once
 * (the interceptors' onCancel releases what it held). Health calls without a deadline (Watch streams)
 * have no such time.
 */
import { constants as http2 } from 'node:http2';
import { ResponderBuilder, ServerInterceptingCall, ServerListenerBuilder, type ServerInterceptingCallInterface, type ServerInterceptor } from '@grpc/grpc-js';
import type { Logger } from '../../shared/log';
import { onRequestArrived } from './interceptors';
import { http2StreamOf } from './grpc-stream';
import { MAX_TIMER_MS } from '../../shared/timer-limit';
import { deadlineOf, STALLED_STATUS_GRACE_MS } from './call-context';

/**
 * How long a call without a deadline of its own may last: counted from its headers (reflection's
 * lifetime), or from its request's arrival (the handlers' default deadline starts when they do).
 */
export interface CallLimit {
  readonly ms: number;
  readonly from: 'headers' | 'request';
  /**
   * With 'request': the longest any call may run from its request's arrival, whatever deadline it
   * carries (--max-deadline-ms: its handler ends there, and so must its stream).
   */
  readonly maxMs?: number;
}

export interface StalledCallOptions {
  /** The limit of a call of `path` without a deadline of its own; undefined: none. */
  readonly limitOf: (path: string) => CallLimit | undefined;
  readonly graceMs?: number;
  readonly log: Logger;
}

export function stalledCallInterceptor(options: StalledCallOptions): ServerInterceptor {
  const graceMs = options.graceMs ?? STALLED_STATUS_GRACE_MS;
  return (method, call) => {
    let timer: NodeJS.Timeout | undefined;
    let over = false;
    // A timer holds at most MAX_TIMER_MS (Node fires a longer one at once): a later time is reached in steps.
    const resetAt = (epochMs: number): void => {
      const wait = epochMs - Date.now();
      timer = setTimeout(() => (wait > MAX_TIMER_MS ? resetAt(epochMs) : reset(call, method.path, options.log)), Math.min(Math.max(0, wait), MAX_TIMER_MS));
      timer.unref();
    };
    // The time the call must be over by; only ever moved earlier (the cap is known at the request's arrival).
    let endsBy = Infinity;
    const endBy = (epochMs: number): void => {
      if (over || epochMs >= endsBy) return;
      endsBy = epochMs;
      clearTimeout(timer);
      resetAt(epochMs + graceMs);
    };
    let own = Infinity;
    let limit: CallLimit | undefined;
    const arrived = (): void => {
      if (limit?.from !== 'request') return;
      // The handler's own deadline, from the same moment (grpc-timeout.ts keeps `own` within a timer's reach).
      endBy(deadlineOf({ getDeadline: () => own }, limit.ms, Date.now(), limit.maxMs));
    };
    const watching = new ServerListenerBuilder().withOnReceiveMetadata((metadata, next) => {
      const deadline = call.getDeadline();
      own = deadline instanceof Date ? deadline.getTime() : deadline;
      limit = options.limitOf(method.path);
      // A limit from the headers (a reflection stream's lifetime) holds whatever deadline the call claims.
      if (limit?.from === 'headers') endBy(Math.min(own, Date.now() + limit.ms));
      else if (Number.isFinite(own)) endBy(own);
      next(metadata);
    });
    // Where the handlers' default deadline starts (requestArrivalInterceptor bounds the wait before).
    const listener = onRequestArrived(watching, method, arrived)
      // grpc-js calls onCancel once a call is over, whether its status went out or it was cancelled.
      .withOnCancel(() => {
        over = true;
        clearTimeout(timer);
      })
      .build();
    return new ServerInterceptingCall(call, new ResponderBuilder().withStart((next) => next(listener)).build());
  };
}

function reset(call: ServerInterceptingCallInterface, path: string, log: Logger): void {
  const stream = http2StreamOf(call);
  if (!stream || stream.closed || stream.destroyed) return;
  log.warn('a call is past its deadline and its status cannot go out (its client is not reading the responses); resetting its stream', { method: path });
  stream.close(http2.NGHTTP2_CANCEL);
}
