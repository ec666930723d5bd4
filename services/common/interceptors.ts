/**
 * Server interceptors, in the order they wrap a call (the first is nearest the network):
 * request encoding (noted) -> stalled calls (stalled-calls.ts: reset past their deadline) -> request
 * id -> access log -> uncompressed requests only -> client
 * certificate names (when configured) -> bearer-token auth (which names the caller; without it the
 * caller is anonymous) -> request arrival -> admission (drain, calls in flight) -> refusal at the headers (the
 * inference pool full, for that caller). Metadata reaches their listeners in this order.
 *
 * Handlers never log requests: the access log here writes one line per call with the method, status,
 * duration and request id, and never metadata values (tokens live there).
 */
import { randomUUID } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import {
  Metadata,
  ResponderBuilder,
  ServerInterceptingCall,
  ServerListenerBuilder,
  status as GrpcCode,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  type ServerListener,
} from '@grpc/grpc-js';
import type { Logger } from '../../shared/log';
import { VlmError } from '../../shared/errors';
import { isTokenName } from '../../shared/auth-tokens';
import { recordAuth, recordCall } from '../../shared/telemetry/metrics';
import type { BearerTokens } from './bearer-tokens';
import { grpcCodeName, refusalStatus } from './status';
import { traceOf } from './call-trace';
import { LineRate } from './log-rate';
import { statusSentOn } from './grpc-stream';

export const REQUEST_ID_KEY = 'x-request-id';
/**
 * Who the call is from, for the pool's fair queue: the accepted bearer token's name, set by the auth
 * interceptor over anything a client sent; without authentication it is removed (one anonymous caller).
 */
export const CALLER_KEY = 'x-vlm-caller';
/**
 * The hop's: the language service's own caller. Vision's caller becomes `<token name>/<this>`, so
 * its queue also serves the language service's callers in turn, inside the hop token's turn (the
 * queue's two levels: naming sub-callers divides a token's share, never enlarges it). Read only by
 * vision (whose callers are the language service: a NetworkPolicy and mutual TLS in `k8s/`); the
 * language service, the front door, drops it. Namespaced by the token that sent it, it can never pass
 * as another token's. Ignored without authentication or when it is not a token name.
 */
export const ON_BEHALF_OF_KEY = 'x-vlm-on-behalf-of';
export const HEALTH_PATH_PREFIX = '/grpc.health.v1.Health/';
export const REFLECTION_PATH_PREFIX = '/grpc.reflection.';
/** As the inference pool's QUEUE_FULL: the calls in flight end within a typical request's time. */
const IN_FLIGHT_RETRY_MS = 1000;
/** Health and reflection requests being received at once on the main port (each a few bytes when honest). */
export const INFRASTRUCTURE_RECEIVING_MAX = 8;
/** How long a health or reflection request may take to arrive, whatever its deadline. */
export const INFRASTRUCTURE_ARRIVAL_MS = 5000;
/**
 * Reflection streams open at once, and how long one may stay open. ServerReflectionInfo is a
 * bidirectional stream: after its first request a client may send more for as long as it keeps the
 * stream, each up to the receive limit, and @grpc/reflection answers each without waiting for the
 * client to read. A tool's query (grpcurl list, describe) takes well under a second on one stream.
 */
export const REFLECTION_STREAMS_MAX = 4;
export const REFLECTION_LIFETIME_MS = 15_000;
/**
 * Health Watch streams open at once on the main port, in all and from one peer address. A Watch needs
 * no token and stays open for as long as its client likes, about 12 KB each: 50,000 from one client
 * took a language process from 388 MiB to 1.1 GiB in 10 s, so the total bounds them to about 50 MB.
 * Clients that balance with health checks (gRFC A17) hold one per channel and replica, and treat a
 * refused Watch as an unhealthy replica: a single total would let one peer make a replica look down
 * to every other client, so each peer address gets a share; probes use Check (or the health port).
 */
export const HEALTH_WATCHES_MAX = 4096;
export const HEALTH_WATCHES_PER_PEER = 64;
const HEALTH_WATCH_PATH = `${HEALTH_PATH_PREFIX}Watch`;

/**
 * Health and reflection: never counted against the in-flight cap or refused for load or drain
 * (probes, tooling); how many health requests may be arriving at once, and how many reflection
 * streams may be open and for how long, are bounded instead (Admission).
 */
function isServiceInfrastructure(path: string): boolean {
  return path.startsWith(HEALTH_PATH_PREFIX) || path.startsWith(REFLECTION_PATH_PREFIX);
}

/** RESOURCE_EXHAUSTED QUEUE_FULL for the admission limits, retried after IN_FLIGHT_RETRY_MS. */
function queueFull(message: string): VlmError {
  return new VlmError('RESOURCE_EXHAUSTED', message, { reason: 'QUEUE_FULL', retryDelayMs: IN_FLIGHT_RETRY_MS });
}

/**
 * Calls `arrived` once the call's request is in: at its first message for a streamed request (its
 * handler runs from the start), at the half-close for a single-message one (grpc-js starts that
 * handler only then, so a message without the end of its stream is not yet a request).
 */
export function onRequestArrived(builder: ServerListenerBuilder, method: { readonly requestStream: boolean }, arrived: () => void): ServerListenerBuilder {
  return builder
    .withOnReceiveMessage((message, next) => {
      if (method.requestStream) arrived();
      next(message);
    })
    .withOnReceiveHalfClose((next) => {
      arrived();
      next();
    });
}

/** A call whose only interception is `listener` (metadata, messages); its responses pass untouched. */
function listening(call: ServerInterceptingCallInterface, listener: ServerListener): ServerInterceptingCall {
  return new ServerInterceptingCall(call, new ResponderBuilder().withStart((next) => next(listener)).build());
}

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;
const REQUEST_ID_REFUSED = /[^A-Za-z0-9._:-]+/g;

/** `text` as a request id the services keep as sent: runs of other characters become '-', cut to 128. */
export function asRequestId(text: string): string {
  return text.replace(REQUEST_ID_REFUSED, '-').slice(0, 128);
}

/**
 * Keeps a caller's `x-request-id` (each run of other characters turned into one '-', cut to 128; a
 * generated UUID when none is sent or no letter or digit is left) and echoes it in the response headers and in the trailers,
 * so a call refused before its first message (bad input, a full queue, a wrong token) carries it too.
 */
export function requestIdInterceptor(): ServerInterceptor {
  return (_method, call) => {
    let id = '';
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const given = metadata.get(REQUEST_ID_KEY)[0];
        const kept = typeof given === 'string' ? asRequestId(given.trim()) : '';
        // An id of nothing but refused characters ("???" -> "-") would be shared by unrelated callers.
        id = REQUEST_ID_RE.test(kept) && /[A-Za-z0-9]/.test(kept) ? kept : randomUUID();
        metadata.set(REQUEST_ID_KEY, id);
        next(metadata);
      })
      .build();
    const responder = new ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendMetadata((metadata, next) => {
        if (id) metadata.set(REQUEST_ID_KEY, id);
        next(metadata);
      })
      .withSendStatus((status, next) => {
        if (id) {
          const metadata = status.metadata ?? new Metadata();
          metadata.set(REQUEST_ID_KEY, id);
          next({ ...status, metadata });
        } else next(status);
      })
      .build();
    return new ServerInterceptingCall(call, responder);
  };
}

/** Access-log lines per second for each status code of calls refused or failed (OK and INTERNAL always). */
export const ACCESS_LOG_REFUSALS_PER_SECOND = 20;

/**
 * One structured line per finished call; health checks are logged at debug level only. Past
 * ACCESS_LOG_REFUSALS_PER_SECOND calls of one status code (other than OK, INTERNAL and UNKNOWN: what
 * a flood of refusals cannot be) a second, lines are left out and counted in the next one's `skipped`.
 */
export function accessLogInterceptor(log: Logger, rate = new LineRate(ACCESS_LOG_REFUSALS_PER_SECOND)): ServerInterceptor {
  return (method, call) => {
    const started = performance.now();
    let requestId = '';
    let received: Metadata | undefined;
    let done = false;
    // `transport`: a status grpc-js sent itself, for what the client sent (a message past the receive
    // limit, a malformed grpc-timeout, its deadline): never this service's own fault, so never a warning.
    const finish = (code: GrpcCode, details: string, transport = false): void => {
      if (done) return;
      done = true;
      const ms = performance.now() - started;
      const codeName = grpcCodeName(code);
      recordCall(ms / 1000, method.path.slice(1), codeName);
      const fields = {
        method: method.path,
        code: codeName,
        durationMs: Math.round(ms * 10) / 10,
        requestId,
        ...traceOf(received),
        peer: call.getPeer(),
        ...(code === GrpcCode.OK ? {} : { details }),
      };
      if (method.path.startsWith(HEALTH_PATH_PREFIX)) return log.debug('call', fields);
      const fault = code === GrpcCode.INTERNAL || code === GrpcCode.UNKNOWN;
      if (!transport && fault) return log.warn('call', fields);
      if (code === GrpcCode.OK || fault) return log.info('call', fields);
      const skipped = rate.admit(codeName);
      if (skipped !== null) log.info('call', skipped > 0 ? { ...fields, skipped } : fields);
    };
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        requestId = String(metadata.get(REQUEST_ID_KEY)[0] ?? '');
        received = metadata;
        next(metadata);
      })
      .withOnCancel(() => {
        // grpc-js sends some statuses itself, below the interceptors (a request over the transport's
        // receive limit: RESOURCE_EXHAUSTED; its own deadline timer: DEADLINE_EXCEEDED; a malformed
        // grpc-timeout: INTERNAL), and then tells them only that the call is over.
        const sent = statusSentOn(call);
        if (sent) finish(sent.code, sent.details, true);
        else finish(GrpcCode.CANCELLED, 'cancelled by the client or the deadline');
      })
      .build();
    const responder = new ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendStatus((status, next) => {
        finish(status.code ?? GrpcCode.UNKNOWN, status.details ?? '');
        next(status);
      })
      .build();
    return new ServerInterceptingCall(call, responder);
  };
}

/** Where requestEncodingInterceptor leaves a request's encoding for the interceptors after it. */
const REQUEST_ENCODING_KEY = 'x-vlm-request-encoding';

/**
 * Notes a request's `grpc-encoding` in its metadata. grpc-js strips that header from the metadata it
 * hands on; only the base call (what the first interceptor wraps) has parsed it, so this must stay
 * first. A caller's own header of that name is dropped: only this one speaks for the transport.
 */
export function requestEncodingInterceptor(): ServerInterceptor {
  return (_method, call) => {
    const parsed = (call as unknown as { incomingEncoding?: unknown }).incomingEncoding;
    const encoding = typeof parsed === 'string' ? parsed.slice(0, 32) : 'identity';
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        metadata.remove(REQUEST_ENCODING_KEY);
        if (encoding !== 'identity') metadata.set(REQUEST_ENCODING_KEY, encoding);
        next(metadata);
      })
      .build();
    return listening(call, listener);
  };
}

/**
 * Refuses compressed requests (UNIMPLEMENTED, as gRPC answers an encoding it does not take). grpc-js
 * inflates gzip and deflate up to the receive limit, which sits above the image limit: 40 KB of
 * gzip became a 40 MiB message, a thousandfold amplification open to any caller (health checks need
 * no token). Images are compressed formats already, so a client loses nothing by not compressing.
 * The message is not read before this answers (grpc-js reads once the metadata has passed). Responses
 * say `grpc-accept-encoding: identity`, where grpc-js would advertise gzip and deflate to clients
 * that pick their compression from it.
 */
export function uncompressedRequestsInterceptor(): ServerInterceptor {
  return (_method, call) => {
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const encoding = metadata.get(REQUEST_ENCODING_KEY)[0];
        if (encoding === undefined) return next(metadata);
        reject(call, new VlmError('UNIMPLEMENTED', `request compression "${String(encoding)}" is not accepted; send requests uncompressed (grpc-encoding: identity)`));
      })
      .build();
    const responder = new ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendMetadata((metadata, next) => {
        metadata.set('grpc-accept-encoding', 'identity');
        next(metadata);
      })
      .build();
    return new ServerInterceptingCall(call, responder);
  };
}

/**
 * Ends a call whose request has not arrived within `waitMs` (the default deadline) of its headers:
 * the handler, which applies the deadline, only starts once the request is in (for a single-message
 * request, once the client half-closes after it), so a caller that sent headers, or its message
 * without the end of its stream, held an admitted call (and every drain) open indefinitely. A deadline
 * of the call's own does not lengthen the wait: one caller claiming hours held three quarters of
 * `--max-inflight-calls` with headers alone. A shorter one ends the call first (grpc-js's timer).
 */
export function requestArrivalInterceptor(waitMs: number): ServerInterceptor {
  return (method, call) => {
    let timer: NodeJS.Timeout | undefined;
    const stop = (): void => clearTimeout(timer);
    const listener = onRequestArrived(
      new ServerListenerBuilder().withOnReceiveMetadata((metadata, next) => {
        timer = setTimeout(() => reject(call, new VlmError('DEADLINE_EXCEEDED', `the request message did not arrive within ${waitMs / 1000} s of its headers`)), waitMs);
        timer.unref();
        next(metadata);
      }),
      method,
      stop,
    )
      .withOnCancel(stop)
      .build();
    const responder = new ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendStatus((status, next) => {
        stop();
        next(status);
      })
      .build();
    return new ServerInterceptingCall(call, responder);
  };
}

/**
 * Requires `authorization: Bearer <token>` on every call except health checks (probes carry no
 * token), one of the tokens `tokens` holds now (they follow their file while serving). Each decision
 * is counted by outcome and accepted token name (vlm.auth.calls).
 */
export function bearerAuthInterceptor(tokens: BearerTokens, options: { acceptOnBehalfOf?: boolean } = {}): ServerInterceptor {
  return (method, call) => {
    if (method.path.startsWith(HEALTH_PATH_PREFIX)) return new ServerInterceptingCall(call);
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const header = metadata.get('authorization')[0];
        const match = typeof header === 'string' ? /^Bearer (.+)$/i.exec(header.trim()) : null;
        const credential = match === null ? null : tokens.match(match[1]!);
        if (match === null) {
          recordAuth('missing');
          reject(call, new VlmError('UNAUTHENTICATED', 'missing bearer token: send "authorization: Bearer <token>" metadata'));
        } else if (credential === null) {
          recordAuth('invalid');
          reject(call, new VlmError('UNAUTHENTICATED', 'invalid bearer token'));
        } else {
          recordAuth('accepted', credential);
          const onBehalfOf = metadata.get(ON_BEHALF_OF_KEY)[0];
          metadata.remove(ON_BEHALF_OF_KEY);
          const forwarded = options.acceptOnBehalfOf && typeof onBehalfOf === 'string' && isTokenName(onBehalfOf) ? `/${onBehalfOf}` : '';
          metadata.set(CALLER_KEY, `${credential}${forwarded}`);
          next(metadata);
        }
      })
      .build();
    return listening(call, listener);
  };
}

/** Without authentication nobody is told apart: a caller named in the metadata is not believed. */
export function anonymousCallerInterceptor(): ServerInterceptor {
  return (_method, call) => {
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        metadata.remove(CALLER_KEY);
        metadata.remove(ON_BEHALF_OF_KEY);
        next(metadata);
      })
      .build();
    return listening(call, listener);
  };
}

/**
 * Mutual TLS proves a client holds a certificate from the CA; this checks that the certificate is one
 * of the clients this service serves (`--tls-client-names`), for a CA that also issues to other
 * workloads. Matched on the subject's common name or a DNS subject alternative name; anything else is
 * PERMISSION_DENIED, its certificate's name logged, never echoed to the caller. Health is exempt
 * (the plaintext health port carries probes; the main port's is the same service).
 */
export function clientCertificateNameInterceptor(names: readonly string[], log: Logger): ServerInterceptor {
  const allowed = new Set(names);
  return (method, call) => {
    if (method.path.startsWith(HEALTH_PATH_PREFIX)) return new ServerInterceptingCall(call);
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const cert = call.getAuthContext().sslPeerCertificate;
        const carried = certificateNames(cert);
        if (carried.some((n) => allowed.has(n))) return next(metadata);
        log.warn('client certificate not among --tls-client-names', { method: method.path, names: carried, requestId: metadata.get(REQUEST_ID_KEY)[0] });
        reject(call, new VlmError('PERMISSION_DENIED', 'this service serves only certain clients, and the client certificate presented is not one of them'));
      })
      .build();
    return listening(call, listener);
  };
}

/** The subject's common name(s) and the DNS subject alternative names of a peer certificate. */
function certificateNames(cert: PeerCertificate | undefined): string[] {
  if (!cert || Object.keys(cert).length === 0) return [];
  const cn = cert.subject?.CN as string | string[] | undefined;
  const dns = (cert.subjectaltname ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.startsWith('DNS:'))
    .map((s) => s.slice(4));
  return [...(Array.isArray(cn) ? cn : cn ? [cn] : []), ...dns];
}

/**
 * Refuses a call when its headers arrive if `refusal` says its inference pool would refuse it, with
 * the pool's own status (RESOURCE_EXHAUSTED QUEUE_FULL, UNAVAILABLE NO_WORKER...). grpc-js drops the
 * data of a call it has answered, so an overloaded service does not buffer request messages, up to
 * the receive limit each and as many as clients' streams allow, only to refuse them. Runs after the
 * auth interceptor, whose caller name the fair queue's decision needs.
 */
export function refuseAtHeadersInterceptor(refusal: (path: string, caller: string) => VlmError | null): ServerInterceptor {
  return (method, call) => {
    if (isServiceInfrastructure(method.path)) return new ServerInterceptingCall(call);
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const caller = metadata.get(CALLER_KEY)[0];
        const refused = refusal(method.path, typeof caller === 'string' ? caller : '');
        if (refused) reject(call, refused);
        else next(metadata);
      })
      .build();
    return listening(call, listener);
  };
}

function reject(call: ServerInterceptingCallInterface, err: VlmError): void {
  call.sendStatus(refusalStatus(err));
}

/**
 * Counts calls in flight and, once draining, refuses new ones with UNAVAILABLE (clients retry another
 * replica). Health and reflection are not counted or refused; probes watch the drain on the plaintext
 * health port, since the main port stops taking connections when the drain starts (GOAWAY).
 *
 * With `maxInFlight`, a call arriving when that many are in flight is RESOURCE_EXHAUSTED at its
 * headers. Every call holds its request message (up to the receive limit) while it is received,
 * queued, run or, at the language service, on its vision hop; the inference pool bounds only those
 * it has taken, so this bounds the rest: a burst of large uploads cannot grow a pod past its memory.
 *
 * A flat cap would let one caller's burst fill it and refuse everyone else before the pool's fair
 * queue could weigh them, so its last quarter (`reservedInFlight`) is kept for named callers holding
 * less than a fair share: the cap divided among the callers holding calls, plus one share for a caller
 * not yet seen. Below that quarter calls are taken first come, so one caller alone may hold three
 * quarters of the cap, and a newcomer finds room until the cap itself is full. Callers are named by
 * the auth interceptor (at vision, `token/sub`: the language service's callers are weighed one by
 * one, and a token naming many sub-callers gets a share for each, unlike in the pool's queue; vision
 * serves only the language service's certificate in `k8s/`); without authentication every call is
 * one anonymous caller and only the cap applies.
 */
/** A count of places, at most `max` held at once. */
class Places {
  private held = 0;
  constructor(private readonly max: number) {}

  take(): boolean {
    if (this.held >= this.max) return false;
    this.held++;
    return true;
  }

  give(): void {
    this.held--;
  }
}

/** Places under a total and a share per key (a peer address); a key leaves the map with its last place. */
export class SharedPlaces {
  private readonly total: Places;
  private readonly byKey = new Map<string, number>();

  constructor(
    total: number,
    readonly perKey: number,
  ) {
    this.total = new Places(total);
  }

  /** Why no place is free for `key` ('total' or 'share'), or null once one is taken. */
  take(key: string): 'total' | 'share' | null {
    const held = this.byKey.get(key) ?? 0;
    if (held >= this.perKey) return 'share';
    if (!this.total.take()) return 'total';
    this.byKey.set(key, held + 1);
    return null;
  }

  give(key: string): void {
    const held = this.byKey.get(key) ?? 0;
    if (held === 0) return;
    this.total.give();
    if (held === 1) this.byKey.delete(key);
    else this.byKey.set(key, held - 1);
  }

  /** Keys holding a place: what the map keeps. */
  get keys(): number {
    return this.byKey.size;
  }
}

/** The address part of grpc-js's peer ("10.0.0.7:51234", "::ffff:10.0.0.7:51234"): one client host, whatever its ports. */
export function peerHost(peer: string): string {
  return peer.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
}

/** One call's place among `Places`, optionally with a timer for how long it may be held; given back once. */
class HeldPlace {
  private from: Places | undefined;
  private timer: NodeJS.Timeout | undefined;

  /** Takes a place (false when none is free) and, with `expiry`, calls its `expired` after its `ms` unless given back first. */
  take(places: Places, expiry?: { readonly ms: number; readonly expired: () => void }): boolean {
    if (!places.take()) return false;
    this.from = places;
    if (expiry) {
      this.timer = setTimeout(expiry.expired, expiry.ms);
      this.timer.unref();
    }
    return true;
  }

  giveBack(): void {
    clearTimeout(this.timer);
    this.from?.give();
    this.from = undefined;
  }
}

export class Admission {
  private inFlight = 0;
  /** Calls in flight by named caller; a caller leaves when its last call ends. */
  private readonly byCaller = new Map<string, number>();
  private draining = false;
  private idleWaiters: Array<() => void> = [];
  /** Health calls whose request message is still arriving (infrastructureCall). */
  private readonly healthArriving = new Places(INFRASTRUCTURE_RECEIVING_MAX);
  /** Reflection streams open (reflectionCall). */
  private readonly reflectionStreams = new Places(REFLECTION_STREAMS_MAX);
  /** Health Watch streams open (infrastructureCall), in all and per peer address. */
  private readonly healthWatches = new SharedPlaces(HEALTH_WATCHES_MAX, HEALTH_WATCHES_PER_PEER);
  /** Counted calls whose request message has not arrived yet (no handler runs them), each with its ending. */
  private readonly unread = new Map<ServerInterceptingCallInterface, (err: VlmError) => void>();

  /**
   * `maxInFlight`: 0 for no limit. `lightPaths`: methods clients call to learn what to send
   * (GetModelInfo), which must work when the cap is full: they may go past it, up to twice the cap
   * (the transport's receive limit applies to their messages too, so they are bounded all the same).
   */
  constructor(
    private readonly maxInFlight = 0,
    private readonly lightPaths: ReadonlySet<string> = new Set(),
    readonly reflectionLifetimeMs = REFLECTION_LIFETIME_MS,
  ) {}

  /** The places at the top of the cap only callers below their fair share may take (none under 4). */
  get reservedInFlight(): number {
    return Math.floor(this.maxInFlight / 4);
  }

  /** Why a call from `caller` ('' when anonymous) would be refused now, or null to admit it. */
  private refusal(caller: string, light: boolean): VlmError | null {
    if (this.maxInFlight <= 0) return null;
    if (light) {
      return this.inFlight < 2 * this.maxInFlight ? null : queueFull(`this replica holds twice its limit of ${this.maxInFlight} calls in flight (--max-inflight-calls); retry later`);
    }
    if (this.inFlight >= this.maxInFlight) {
      return queueFull(`this replica is at its limit of ${this.maxInFlight} calls in flight (--max-inflight-calls); retry later`);
    }
    if (caller === '' || this.inFlight < this.maxInFlight - this.reservedInFlight) return null;
    const held = this.byCaller.get(caller) ?? 0;
    const callers = this.byCaller.size + (held === 0 ? 1 : 0);
    const share = Math.max(1, Math.floor(this.maxInFlight / (callers + 1)));
    if (held < share) return null;
    // The caller's own count only: other callers' names and counts are not theirs to see.
    return queueFull(`this replica keeps its last ${this.reservedInFlight} of ${this.maxInFlight} places for calls (--max-inflight-calls) for callers below their share, and this caller holds ${held}; retry later`);
  }

  get active(): number {
    return this.inFlight;
  }

  startDraining(): void {
    this.draining = true;
  }

  /**
   * Ends the counted calls still receiving their request with `err` (no handler has them, so a drain
   * cannot end them through their signals); returns how many.
   */
  refuseUnread(err: VlmError): number {
    const endings = [...this.unread.values()];
    for (const end of endings) end(err);
    return endings.length;
  }

  /** Resolves when no call is in flight (immediately if none is). */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Health: never refused for load or drain, but on the main port its messages take the same receive
   * limit as a request's (tens of MiB), and health needs no token, so anyone reaching the port could
   * have grpc-js buffer 100 of them per connection. Only so many may be arriving at once; a Check whose
   * message has arrived holds nothing, and a Watch stream holds one of its peer's HEALTH_WATCHES_PER_PEER
   * places (of HEALTH_WATCHES_MAX in all) for as long as it is open.
   */
  private infrastructureCall(method: { readonly path: string; readonly requestStream: boolean }, call: ServerInterceptingCallInterface): ServerInterceptingCall {
    const place = new HeldPlace();
    let watcher: string | undefined;
    const listener = onRequestArrived(
      new ServerListenerBuilder().withOnReceiveMetadata((metadata, next) => {
        // Whatever deadline the caller claims: a few bytes take no longer than this.
        const taken = place.take(this.healthArriving, {
          ms: INFRASTRUCTURE_ARRIVAL_MS,
          expired: () => {
            reject(call, new VlmError('DEADLINE_EXCEEDED', `the request did not arrive within ${INFRASTRUCTURE_ARRIVAL_MS / 1000} s of its headers`));
            place.giveBack();
          },
        });
        if (!taken) return reject(call, queueFull(`${INFRASTRUCTURE_RECEIVING_MAX} health requests are being received already; retry later (probes: use the health port)`));
        // Held for as long as the stream is open (onCancel), with no lifetime: a Watch is meant to last.
        if (method.path === HEALTH_WATCH_PATH) {
          const host = peerHost(call.getPeer());
          const full = this.healthWatches.take(host);
          if (full) {
            place.giveBack();
            const which = full === 'share' ? `${HEALTH_WATCHES_PER_PEER} health Watch streams from this address` : `${HEALTH_WATCHES_MAX} health Watch streams`;
            return reject(call, queueFull(`${which} are open already; retry later (probes: use Check, or the health port)`));
          }
          watcher = host;
        }
        next(metadata);
      }),
      method,
      () => place.giveBack(),
    )
      .withOnCancel(() => {
        place.giveBack();
        if (watcher !== undefined) this.healthWatches.give(watcher);
        watcher = undefined;
      })
      .build();
    return listening(call, listener);
  }

  /**
   * A reflection stream is counted for as long as it is open, at most REFLECTION_STREAMS_MAX at once,
   * and ended after REFLECTION_LIFETIME_MS: what it can hold (partial requests up to the receive
   * limit, answers its client has not read) is bounded in number and time. Ending it may wait behind
   * answers its client does not read; stalledCallInterceptor resets such a stream.
   */
  private reflectionCall(call: ServerInterceptingCallInterface): ServerInterceptingCall {
    const place = new HeldPlace();
    const lifetime = this.reflectionLifetimeMs;
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        // Held until the stream is over (onCancel), not at the lifetime: its end may wait behind unread answers.
        const taken = place.take(this.reflectionStreams, { ms: lifetime, expired: () => reject(call, new VlmError('DEADLINE_EXCEEDED', `reflection streams are closed after ${lifetime / 1000} s; open another for more requests`)) });
        if (!taken) return reject(call, queueFull(`${REFLECTION_STREAMS_MAX} reflection streams are open already; retry later`));
        next(metadata);
      })
      .withOnCancel(() => place.giveBack())
      .build();
    return listening(call, listener);
  }

  interceptor(): ServerInterceptor {
    return (method, call) => {
      if (method.path.startsWith(REFLECTION_PATH_PREFIX)) return this.reflectionCall(call);
      if (isServiceInfrastructure(method.path)) return this.infrastructureCall(method, call);
      let counted = false;
      let caller = '';
      const release = (): void => {
        if (!counted) return;
        counted = false;
        this.unread.delete(call);
        this.inFlight--;
        if (caller !== '') {
          const left = (this.byCaller.get(caller) ?? 1) - 1;
          if (left > 0) this.byCaller.set(caller, left);
          else this.byCaller.delete(caller);
        }
        if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
      };
      const admitting = new ServerListenerBuilder().withOnReceiveMetadata((metadata, next) => {
        if (this.draining) {
          reject(call, VlmError.shuttingDown('the service is shutting down; retry on another replica'));
          return;
        }
        const named = metadata.get(CALLER_KEY)[0];
        const refused = this.refusal(typeof named === 'string' ? named : '', this.lightPaths.has(method.path));
        if (refused) {
          reject(call, refused);
          return;
        }
        counted = true;
        this.inFlight++;
        this.unread.set(call, (err) => {
          reject(call, err);
          release();
        });
        if (typeof named === 'string' && named !== '') {
          caller = named;
          this.byCaller.set(caller, (this.byCaller.get(caller) ?? 0) + 1);
        }
        next(metadata);
      });
      const listener = onRequestArrived(admitting, method, () => this.unread.delete(call))
        .withOnCancel(release)
        .build();
      const responder = new ResponderBuilder()
        .withStart((next) => next(listener))
        .withSendStatus((status, next) => {
          release();
          next(status);
        })
        .build();
      return new ServerInterceptingCall(call, responder);
    };
  }
}
