/**
 * Server interceptors, in the order they wrap a call (the first is nearest the network):
 * request encoding (noted) -> stalled calls (stalled-calls.ts: reset past their deadline) -> request
 * id -> access log -> uncompressed requests only -> client
 * certificate names (when configured) -> bearer-token auth (which names the caller; without it the
 * caller is anonymous) -> request arrival -> admission (admission.ts: drain, calls in flight) -> refusal at the headers (the
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
import { cancelOf, traceOf } from './call-trace';
import { LineRate } from './log-rate';
import { clipText } from './text-cut';
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

/**
 * Health and reflection: never counted against the in-flight cap or refused for load or drain
 * (probes, tooling); how many health requests may be arriving at once, and how many reflection
 * streams may be open and for how long, are bounded instead (Admission).
 */
export function isServiceInfrastructure(path: string): boolean {
  return path.startsWith(HEALTH_PATH_PREFIX) || path.startsWith(REFLECTION_PATH_PREFIX);
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

/**
 * A call intercepted by `listener` that runs `ended` when its status goes out and when it is
 * cancelled: either may come without the other, and both may come, so `ended` must bear a second call.
 */
export function endingWith(call: ServerInterceptingCallInterface, listener: ServerListenerBuilder, ended: () => void): ServerInterceptingCall {
  const built = listener.withOnCancel(ended).build();
  const responder = new ResponderBuilder()
    .withStart((next) => next(built))
    .withSendStatus((status, next) => {
      ended();
      next(status);
    })
    .build();
  return new ServerInterceptingCall(call, responder);
}

/** A call whose only interception is `listener` (metadata, messages); its responses pass untouched. */
export function listening(call: ServerInterceptingCallInterface, listener: ServerListener): ServerInterceptingCall {
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

/** Access-log lines per second for each status code of calls that did not succeed (see accessLogInterceptor). */
export const ACCESS_LOG_REFUSALS_PER_SECOND = 20;

/**
 * One structured line per finished call; health checks are logged at debug level only. Every OK call
 * and every fault of the service (INTERNAL, UNKNOWN from a handler) is written; of the other statuses,
 * which a client can cause as fast as it can send, at most ACCESS_LOG_REFUSALS_PER_SECOND lines of a
 * code a second, the rest counted in the next written line's `skipped`, or by the second's end in a
 * 'calls not logged' line.
 */
export function accessLogRate(log: Logger): LineRate {
  return new LineRate(ACCESS_LOG_REFUSALS_PER_SECOND, (code, skipped) => log.info('calls not logged', { code, skipped }));
}

/**
 * Statuses grpc-js sends itself for what the client sent: a malformed grpc-timeout, a request it
 * cannot decompress or decode. Its other INTERNALs (a response it cannot serialize or write) are the
 * service's.
 */
const CLIENT_CAUSED_TRANSPORT_INTERNAL = /^(Invalid grpc-timeout value|Failed to decompress message|Error deserializing request)/;

export function accessLogInterceptor(log: Logger, rate = accessLogRate(log)): ServerInterceptor {
  return (method, call) => {
    const started = performance.now();
    let requestId = '';
    let received: Metadata | undefined;
    let done = false;
    // `transport`: a status grpc-js sent itself, mostly for what the client sent (a message past the
    // receive limit, a malformed grpc-timeout, its deadline); only an INTERNAL not of that kind
    // (CLIENT_CAUSED_TRANSPORT_INTERNAL) is this service's fault, and a warning.
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
      // The service's own faults are always written; an INTERNAL grpc-js sent for what the client sent
      // (a malformed grpc-timeout) is the client's, and rated like any refusal.
      const clientCaused = transport && CLIENT_CAUSED_TRANSPORT_INTERNAL.test(details);
      if ((code === GrpcCode.INTERNAL && !clientCaused) || (code === GrpcCode.UNKNOWN && !transport)) return log.warn('call', fields);
      if (code === GrpcCode.OK) return log.info('call', fields);
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
        if (sent) return finish(sent.code, sent.details, true);
        // A tick later, when the handler has heard of the cancel too and read it (a cancel close to the
        // deadline is the deadline), so that this line and the metric say what the server span says.
        process.nextTick(() =>
          cancelOf(received) === 'DEADLINE_EXCEEDED'
            ? finish(GrpcCode.DEADLINE_EXCEEDED, 'the deadline passed before the request finished (the client ended the call at its deadline)')
            : finish(GrpcCode.CANCELLED, 'cancelled by the client or the deadline'),
        );
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
    );
    return endingWith(call, listener, stop);
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
          reject(call, new VlmError('UNAUTHENTICATED', 'missing bearer token: send "authorization: Bearer <token>" metadata (a value with a tab, a line break or a non-ASCII character is dropped by the transport)'));
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
 * workloads. Matched on a DNS subject alternative name, or on the subject's common name for a
 * certificate without alternative names (certificateNames says why); anything else is
 * PERMISSION_DENIED, its certificate's name logged, never echoed to the caller. Health is exempt
 * (the plaintext health port carries probes; the main port's is the same service).
 */
export function clientCertificateNameInterceptor(names: readonly string[], log: Logger): ServerInterceptor {
  const allowed = new Set(names);
  // The workload this refuses holds a certificate of the same CA and may call as fast as it likes,
  // with as many names as it likes (400 names of 100 characters: 35 KB a line, 105 MB in 2 s): the
  // lines are rated as the access log's refusals are, and name the certificate in a bounded form.
  const rate = new LineRate(ACCESS_LOG_REFUSALS_PER_SECOND, (_kind, skipped) => log.warn('client certificates refused, not logged', { skipped }));
  return (method, call) => {
    if (method.path.startsWith(HEALTH_PATH_PREFIX)) return new ServerInterceptingCall(call);
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const cert = call.getAuthContext().sslPeerCertificate;
        const carried = certificateNames(cert);
        if (carried.some((n) => allowed.has(n))) return next(metadata);
        const skipped = rate.admit('refused');
        if (skipped !== null) {
          log.warn('client certificate not among --tls-client-names', {
            method: method.path,
            names: carried.slice(0, LOGGED_NAMES).map((n) => clipText(n, LOGGED_NAME_CHARS)),
            names_total: carried.length,
            fingerprint256: cert?.fingerprint256,
            requestId: metadata.get(REQUEST_ID_KEY)[0],
            ...(skipped > 0 ? { skipped } : {}),
          });
        }
        reject(call, new VlmError('PERMISSION_DENIED', 'this service serves only certain clients, and the client certificate presented is not one of them'));
      })
      .build();
    return listening(call, listener);
  };
}

/** How much of a refused certificate's names the log keeps (its fingerprint names it whole). */
const LOGGED_NAMES = 4;
const LOGGED_NAME_CHARS = 100;

/**
 * The names a peer certificate claims: its DNS subject alternative names, or its subject's common
 * name(s) when it has no alternative names of any kind (RFC 6125 §6.4.4: a CA that checks the names
 * it issues, DNS, URI (SPIFFE) or IP, may leave the common name to the requester, so beside them a
 * common name proves nothing).
 */
function certificateNames(cert: PeerCertificate | undefined): string[] {
  if (!cert || Object.keys(cert).length === 0) return [];
  const alternative = (cert.subjectaltname ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (alternative.length > 0) return alternative.filter((s) => s.startsWith('DNS:')).map((s) => s.slice(4));
  const cn = cert.subject?.CN as string | string[] | undefined;
  return Array.isArray(cn) ? cn : cn ? [cn] : [];
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

/** Ends the call with `err` as its status (google.rpc details included). */
export function reject(call: ServerInterceptingCallInterface, err: VlmError): void {
  call.sendStatus(refusalStatus(err));
}
