/**
 * grpc-js's own log lines through the service's JSON logger, without credentials and at a bounded
 * rate. By default grpc-js prints plain text to stderr, and among its lines is every metadata entry it
 * cannot add, with its value: `authorization: Bearer <token>` with a stray tab or a pasted non-breaking
 * space is such an entry, so a client's (valid) token reached the service's log.
 */
import { format } from 'node:util';
import { setLogger } from '@grpc/grpc-js';
import type { Logger } from '../../shared/log';
import { LineRate } from './log-rate';

/** Header names whose values are credentials (grpc-js's call traces print every received header). */
const SECRET_HEADER = /authorization|cookie|api[-_]?key|token|secret|password/i;

/** What a grpc-js line may say: a metadata entry's value never (any header may carry a secret), no credential header's value, and no bearer token. */
export function redactGrpcLine(text: string): string {
  const entry = /^Failed to add metadata entry ([^:]*):/.exec(text);
  if (entry) return `Failed to add metadata entry ${entry[1]}: its value has characters gRPC metadata does not allow, so the header was dropped (value not logged)`;
  return text
    // A header's value: a JSON string, an array of them (a `]` inside a string does not end it), or a
    // `-bin` header's Buffer ({"type":"Buffer","data":[...]}).
    .replace(/"([^"\\]*)"\s*:\s*(\[\s*(?:"(?:[^"\\]|\\.)*"\s*(?:,\s*)?)*\]|"(?:[^"\\]|\\.)*"|\{[^{}"]*(?:"(?:[^"\\]|\\.)*"[^{}"]*)*\})/g, (pair, name: string) => (SECRET_HEADER.test(name) ? `"${name}":"<redacted>"` : pair))
    .replace(/\bBearer\s+\S+/gi, 'Bearer <redacted>');
}

/**
 * grpc-js lines of one level written per second: a client can make it log one per bad header, as fast
 * as it sends them; past this they are counted (log-rate.ts), as the access log's refusals are.
 */
export const GRPC_LOG_LINES_PER_SECOND = 20;

/**
 * Routes grpc-js's log lines to `log`. grpc-js has one logger per process, so the last server started
 * takes them: a service process runs one; only tests start several in one process.
 */
export function routeGrpcLogs(log: Logger): void {
  const grpcLog = log.child('grpc-js');
  const rate = new LineRate(GRPC_LOG_LINES_PER_SECOND, (level, skipped) => grpcLog.warn('grpc-js lines not logged', { level, skipped }));
  const line = (level: 'error' | 'info' | 'debug') => (message?: unknown, ...rest: unknown[]) => {
    const skipped = rate.admit(level);
    if (skipped === null) return;
    const text = redactGrpcLine(format(message, ...rest));
    // A header a client sent that grpc-js cannot take is the client's fault, not the service's.
    const at = level === 'error' && text.startsWith('Failed to add metadata entry') ? 'warn' : level;
    grpcLog[at](text, skipped > 0 ? { skipped } : undefined);
  };
  setLogger({ error: line('error'), info: line('info'), debug: line('debug') });
}
