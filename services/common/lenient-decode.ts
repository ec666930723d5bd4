/**
 * Undecodable request messages as INVALID_ARGUMENT. grpc-js answers a request whose deserializer
 * throws with INTERNAL "Error deserializing request", which tells a caller nothing and reads as our
 * fault. Here the deserializer keeps the failure as a marker value instead, and the adapters
 * (server-stream.ts) answer it with INVALID_ARGUMENT naming the message type and what was wrong
 * (bad wire format, a truncated field, ...).
 *
 * Before decoding, the message's top-level fields are walked (no allocation): everything but the
 * image and the prompt, which validation bounds, must fit ENVELOPE_BYTES. Decoding runs on the main
 * thread, and a policy of 4 million params entries within the receive limit took 13 s and 1.7 GB
 * there, stalling every other call, only to be refused for its entry count afterwards.
 */
import type { ServiceDefinition } from '@grpc/grpc-js';
import { VlmError } from '../../shared/errors';
import { ENVELOPE_BYTES } from './message-limits';

const UNDECODABLE = Symbol('undecodable request');

interface Undecodable {
  readonly [UNDECODABLE]: VlmError;
}

export function isUndecodable(request: unknown): request is Undecodable {
  return typeof request === 'object' && request !== null && UNDECODABLE in request;
}

export function undecodableError(request: Undecodable): VlmError {
  return request[UNDECODABLE];
}

/** Fields of each method's request that validation bounds on its own (field numbers of the protos), by method path. */
const BOUNDED_ELSEWHERE: Readonly<Record<string, { readonly fields: ReadonlySet<number>; readonly names: string }>> = {
  '/vlm.v1.LanguageService/Generate': { fields: new Set([1, 2]), names: 'the image and the prompt' },
  '/vlm.v1.VisionService/Encode': { fields: new Set([1]), names: 'the image' },
};

/**
 * Bytes of the top-level fields not in `exempt` (keys and lengths included), counted until they pass
 * `stop`. Whatever the walk cannot follow (a group, a reserved wire type, a key or length of 2^32 or
 * more, a length past the end) counts from there to the end: the decoder would read on past some of
 * those (skipping a group, keeping a length's low 32 bits), and no vlm.v1 encoder writes any of them.
 */
export function envelopeBytes(b: Uint8Array, exempt: ReadonlySet<number>, stop = Infinity): number {
  let at = 0;
  let total = 0;
  /** A varint below 2^32, or -1. */
  const varint = (): number => {
    let v = 0;
    for (let shift = 0; at < b.length && shift < 35; shift += 7) {
      const byte = b[at++]!;
      v += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return v < 2 ** 32 ? v : -1;
    }
    return -1;
  };
  while (at < b.length && total <= stop) {
    const start = at;
    const key = varint();
    const wireType = key % 8;
    let ok = key >= 0;
    if (ok && wireType === 0) ok = varint() >= 0;
    else if (ok && wireType === 1) at += 8;
    else if (ok && wireType === 5) at += 4;
    else if (ok && wireType === 2) {
      const length = varint();
      ok = length >= 0;
      at += Math.max(0, length);
    } else ok = false;
    if (!ok || at > b.length) return total + (b.length - start);
    if (!exempt.has(Math.floor(key / 8))) total += at - start;
  }
  return total;
}

/** The definition with every request deserializer made lenient (responses untouched). */
export function lenientDefinition(definition: ServiceDefinition): ServiceDefinition {
  const out: Record<string, ServiceDefinition[string]> = {};
  for (const [name, method] of Object.entries(definition)) {
    // Messages name the method ("vlm.v1.LanguageService.Generate request"), not its request type:
    // the protos name those `<Rpc>Request` or `<Service><Rpc>Request`, which the path does not say.
    const [, service = '', rpc = name] = /^\/(.+)\/([^/]+)$/.exec(method.path) ?? [];
    const what = `${service}.${rpc} request`;
    out[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        const exempt = BOUNDED_ELSEWHERE[method.path];
        const envelope = envelopeBytes(bytes, exempt?.fields ?? new Set(), ENVELOPE_BYTES);
        if (envelope > ENVELOPE_BYTES) {
          const besides = exempt ? `besides ${exempt.names} ` : '';
          return { [UNDECODABLE]: new VlmError('INVALID_ARGUMENT', `the request's fields ${besides}hold more than ${ENVELOPE_BYTES} bytes; no valid ${what} needs that many`) } satisfies Undecodable;
        }
        try {
          return method.requestDeserialize(bytes);
        } catch (err) {
          const reason = (err instanceof Error ? err.message : String(err)).slice(0, 200);
          return { [UNDECODABLE]: new VlmError('INVALID_ARGUMENT', `the request is not a valid ${what} message (${reason}); encode it with the vlm.v1 protos`) } satisfies Undecodable;
        }
      },
    };
  }
  return out as ServiceDefinition;
}
