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

/** Fields of each request type that validation bounds on its own (field numbers of the protos). */
const BOUNDED_ELSEWHERE: Readonly<Record<string, ReadonlySet<number>>> = {
  'vlm.v1.GenerateRequest': new Set([1, 2]), // image, prompt
  'vlm.v1.EncodeRequest': new Set([1]), // image
};

/**
 * Bytes of the top-level fields not in `exempt` (keys and lengths included). A malformed message
 * ends the walk early: the decoder then says what is wrong with it.
 */
export function envelopeBytes(b: Uint8Array, exempt: ReadonlySet<number>): number {
  let at = 0;
  let total = 0;
  const varint = (): number => {
    let v = 0;
    for (let shift = 0; at < b.length && shift < 64; shift += 7) {
      const byte = b[at++]!;
      v += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return v;
    }
    return -1;
  };
  while (at < b.length) {
    const start = at;
    const key = varint();
    if (key < 0) break;
    const wireType = key % 8;
    if (wireType === 0) {
      if (varint() < 0) break;
    } else if (wireType === 1) at += 8;
    else if (wireType === 5) at += 4;
    else if (wireType === 2) {
      const length = varint();
      if (length < 0) break;
      at += length;
    } else break;
    if (!exempt.has(Math.floor(key / 8))) total += Math.min(at, b.length) - start;
  }
  return total;
}

/** The definition with every request deserializer made lenient (responses untouched). */
export function lenientDefinition(definition: ServiceDefinition): ServiceDefinition {
  const out: Record<string, ServiceDefinition[string]> = {};
  for (const [name, method] of Object.entries(definition)) {
    // "/vlm.v1.LanguageService/Generate" -> "vlm.v1.GenerateRequest" (the protos' naming rule).
    const [, service = '', rpc = name] = /^\/(.+)\/([^/]+)$/.exec(method.path) ?? [];
    const type = `${service.split('.').slice(0, -1).join('.')}.${rpc}Request`;
    out[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        const envelope = envelopeBytes(bytes, BOUNDED_ELSEWHERE[type] ?? new Set());
        if (envelope > ENVELOPE_BYTES) {
          const what = BOUNDED_ELSEWHERE[type] ? 'besides the image and the prompt ' : '';
          return { [UNDECODABLE]: new VlmError('INVALID_ARGUMENT', `the request's fields ${what}hold ${envelope} bytes, over the limit of ${ENVELOPE_BYTES}; no valid ${type} needs that many`) } satisfies Undecodable;
        }
        try {
          return method.requestDeserialize(bytes);
        } catch (err) {
          const reason = (err instanceof Error ? err.message : String(err)).slice(0, 200);
          return { [UNDECODABLE]: new VlmError('INVALID_ARGUMENT', `the request is not a valid ${type} message (${reason}); encode it with the vlm.v1 protos`) } satisfies Undecodable;
        }
      },
    };
  }
  return out as ServiceDefinition;
}
