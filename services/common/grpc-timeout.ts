/**
 * Long grpc-timeout headers, read as the longest timer instead of as "already expired".
 *
 * grpc-js 1.14 turns the header into milliseconds with `| 0`: from 2^31 ms (24.8 days) on the value
 * wraps, mostly to a negative number, and grpc-js's own deadline timer ends the call at once with
 * DEADLINE_EXCEEDED, before any handler or interceptor of ours runs. Clients send such values for long
 * deadlines in good faith: grpc-go sends a 30-day context as `2592000S`. The services cut every
 * deadline to --max-deadline-ms anyway (call-context.ts), so a longer header is rewritten to the
 * longest setTimeout delay before grpc-js parses it; the call then meets the service's own, clear,
 * limit. Values over the protocol's 8 digits, which grpc-js's unanchored pattern reads from their
 * last 8 digits (`100000000S` as 0 s), are read whole the same way.
 *
 * The rewrite wraps the one method grpc-js parses the header in, on the class it constructs for every
 * server call; the test of this module fails if a grpc-js upgrade renames or moves it.
 */
import { BaseServerInterceptingCall } from '@grpc/grpc-js/build/src/server-interceptors';
import { MAX_TIMER_MS } from '../../shared/timer-limit';

const UNIT_MS: Readonly<Record<string, number>> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };
/** The protocol's TimeoutValue and TimeoutUnit, with grpc-js's tolerance of spaces between them, but any number of digits. */
const TIMEOUT = /^\s*(\d+)\s*([HMSmun])\s*$/;
/** The longest timer in whole seconds: 2147483S, under 2^31 ms and within 8 digits. */
const LONGEST = `${Math.floor(MAX_TIMER_MS / 1000)}S`;

/**
 * The header grpc-js should parse: `header` itself when grpc-js reads it right, else the longest
 * timer. A malformed header is left for grpc-js to refuse (INTERNAL "Invalid grpc-timeout value").
 */
export function boundedTimeoutHeader(header: string): string {
  const match = TIMEOUT.exec(header);
  if (!match) return header;
  const [, digits, unit] = match as unknown as [string, string, string];
  const ms = Number(digits) * UNIT_MS[unit]!;
  if (digits.length <= 8 && ms <= MAX_TIMER_MS) return header;
  if (ms > MAX_TIMER_MS) return LONGEST;
  // Over 8 digits but within the timer: the same time in a unit that fits 8 digits.
  return ms <= 99_999_999 ? `${Math.ceil(ms)}m` : `${Math.floor(ms / 1000)}S`;
}

type TimeoutParser = { handleTimeoutHeader(header: unknown): void };
let installed = false;

/** Makes every grpc-js server of this process read grpc-timeout through boundedTimeoutHeader (idempotent). */
export function boundGrpcTimeouts(): void {
  if (installed) return;
  const proto = BaseServerInterceptingCall.prototype as unknown as TimeoutParser;
  const parse = proto.handleTimeoutHeader;
  if (typeof parse !== 'function') throw new Error('grpc-js has no BaseServerInterceptingCall.handleTimeoutHeader: check how this version parses grpc-timeout (services/common/grpc-timeout.ts)');
  proto.handleTimeoutHeader = function (this: TimeoutParser, header: unknown): void {
    parse.call(this, boundedTimeoutHeader(String(header)));
  };
  installed = true;
}
