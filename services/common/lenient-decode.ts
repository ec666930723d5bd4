/**
 * Undecodable request messages as INVALID_ARGUMENT. grpc-js answers a request whose deserializer
 * throws with INTERNAL "Error deserializing request", which tells a caller nothing and reads as our
 * fault. Here the deserializer keeps the failure as a marker value instead, and the adapters
 * (server-stream.ts) answer it with INVALID_ARGUMENT naming the message type and what was wrong
 * (bad wire format, a truncated field, ...).
 */
import type { ServiceDefinition } from '@grpc/grpc-js';
import { VlmError } from '../../shared/errors';

const UNDECODABLE = Symbol('undecodable request');

interface Undecodable {
  readonly [UNDECODABLE]: { readonly type: string; readonly reason: string };
}

export function isUndecodable(request: unknown): request is Undecodable {
  return typeof request === 'object' && request !== null && UNDECODABLE in request;
}

export function undecodableError(request: Undecodable): VlmError {
  const { type, reason } = request[UNDECODABLE];
  return new VlmError('INVALID_ARGUMENT', `the request is not a valid ${type} message (${reason}); encode it with the vlm.v1 protos`);
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
        try {
          return method.requestDeserialize(bytes);
        } catch (err) {
          const reason = (err instanceof Error ? err.message : String(err)).slice(0, 200);
          return { [UNDECODABLE]: { type, reason } } satisfies Undecodable;
        }
      },
    };
  }
  return out as ServiceDefinition;
}
