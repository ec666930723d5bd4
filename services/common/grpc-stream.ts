/**
 * A server call's HTTP/2 stream, for the two things grpc-js offers no public way to do: reset a call
 * (stalled-calls.ts) and learn the status grpc-js itself sent below the interceptors (a request over
 * the transport's receive limit is refused by the base call, and the interceptors only hear that the
 * call ended). This walks the interceptor chain (`nextCall`) to the base call, which holds the stream
 * (`stream`): grpc-js 1.14's internals, with the version pinned and test/service-stalled-readers.test.ts
 * and test/reliability-bad-inputs.test.ts (images over the limit) failing if they change.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http2';
import type { ServerInterceptingCallInterface } from '@grpc/grpc-js';

export interface CallStream {
  readonly closed: boolean;
  readonly destroyed: boolean;
  /** What went out as headers (a trailers-only status among them) and as trailers; Node's Http2Stream keeps both. */
  readonly sentHeaders?: OutgoingHttpHeaders | IncomingHttpHeaders;
  readonly sentTrailers?: OutgoingHttpHeaders;
  close(code: number): void;
}

export function http2StreamOf(call: ServerInterceptingCallInterface): CallStream | undefined {
  let at: unknown = call;
  for (let depth = 0; depth < 64 && at !== null && typeof at === 'object'; depth++) {
    const stream = (at as { stream?: unknown }).stream;
    if (isServerStream(stream)) return stream;
    at = (at as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

/** A ServerHttp2Stream, by what it can do. */
function isServerStream(s: unknown): s is CallStream {
  return s !== null && typeof s === 'object' && typeof (s as { close?: unknown }).close === 'function' && typeof (s as { sendTrailers?: unknown }).sendTrailers === 'function';
}

/** The gRPC status the call's stream already carried out, whoever sent it; undefined if none went out. */
export function statusSentOn(call: ServerInterceptingCallInterface): { code: number; details: string } | undefined {
  const stream = http2StreamOf(call);
  const headers = stream?.sentTrailers?.['grpc-status'] !== undefined ? stream.sentTrailers : stream?.sentHeaders;
  const code = Number(headers?.['grpc-status']);
  if (!headers || headers['grpc-status'] === undefined || !Number.isInteger(code)) return undefined;
  const raw = headers['grpc-message'];
  let details = typeof raw === 'string' ? raw : '';
  try {
    details = decodeURIComponent(details);
  } catch {
    // grpc-js percent-encodes the message; one it did not encode is shown as sent.
  }
  return { code, details };
}
