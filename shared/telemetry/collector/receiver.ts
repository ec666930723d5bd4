import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync, inflateSync } from 'node:zlib';
import { RPC_CODE, VlmError } from '../../errors';
import { spansFromOtlp } from '../analysis/otlp-json';
import type { SpanRecord } from '../analysis/span-record';
import { Status } from '../../../gen/google/rpc/status';
import { decodeTraceRequest, encodeTraceResponse } from './otlp-proto';

/**
 * A minimal OTLP/HTTP trace receiver: `POST /v1/traces` with an ExportTraceServiceRequest as
 * `application/x-protobuf` (the SDK's default, http/protobuf) or `application/json`, optionally gzip
 * or deflate encoded. Spans are flattened to SpanRecords and handed to `onSpans`. Metrics and logs
 * posted to the same endpoint (an SDK with OTLP metrics on) are accepted and dropped, so the sender
 * does not retry or log errors.
 *
 * Failures follow OTLP/HTTP: a body that cannot be decoded, or holds a malformed span (a field of the
 * wrong type, a bad id, a time that is not a non-negative whole number of nanoseconds), is 400 Bad
 * Request, and the whole request is refused: nothing of it reaches `onSpans`, so the file never holds
 * half a batch, and the exporter, which does not retry a 400, logs the message instead of the batch
 * vanishing span by span. (partial_success would keep the good spans, but a producer that writes one
 * malformed span is broken and should be seen.) A body over `maxBodyBytes`, on the wire or once
 * decompressed, is 413. Error bodies are a google.rpc.Status in the request's encoding.
 */
export interface TraceReceiverOptions {
  port: number;
  host?: string;
  onSpans: (spans: SpanRecord[]) => void;
  /** Largest accepted body, both as received and after decompression. */
  maxBodyBytes?: number;
  /**
   * Told of every refused request, e.g. to log it, since the sender may not: the status and the
   * message sent, or for a 500 the cause, which is not sent.
   */
  onRejected?: (status: number, message: string) => void;
}

export interface TraceReceiver {
  readonly port: number;
  readonly url: string;
  /** Requests received per path, and spans accepted. */
  readonly stats: { requests: Record<string, number>; spans: number };
  close(): Promise<void>;
}

const DEFAULT_MAX_BODY = 64 * 1024 * 1024;
/**
 * Bodies read at once. Each may hold up to the body limit (64 MiB): sixteen senders at once took a
 * review's receiver to 1.6 GB. An exporter retries a 503 after its Retry-After.
 */
const MAX_BODIES_READ = 4;
const OTLP_PATHS: ReadonlySet<string> = new Set(['/v1/traces', '/v1/metrics', '/v1/logs']);

export async function startTraceReceiver(options: TraceReceiverOptions): Promise<TraceReceiver> {
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY;
  const stats = { requests: {} as Record<string, number>, spans: 0 };
  let reading = 0;
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    // Any other path under one key: a sender of many unique paths would grow the map for good.
    const counted = OTLP_PATHS.has(path) ? path : 'other';
    stats.requests[counted] = (stats.requests[counted] ?? 0) + 1;
    handle(req, res, path).catch((err: unknown) => {
      const status = answerError(req, res, err);
      options.onRejected?.(status, status === 500 ? `internal error: ${err instanceof Error ? err.message : String(err)}` : VlmError.from(err).message);
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (req.method !== 'POST') {
      res.writeHead(405, { allow: 'POST' }).end();
      return;
    }
    if (!OTLP_PATHS.has(path)) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`no OTLP endpoint at ${path}; spans go to /v1/traces`);
      return;
    }
    const contentType = contentTypeOf(req);
    const json = contentType === 'application/json';
    if (!json && contentType !== 'application/x-protobuf') {
      res.writeHead(415, { 'content-type': 'text/plain' }).end(`content-type ${contentType || '(none)'}: OTLP/HTTP takes application/x-protobuf or application/json`);
      return;
    }
    if (reading >= MAX_BODIES_READ) {
      res.writeHead(503, { 'retry-after': '1', 'content-type': 'text/plain', connection: 'close' }).end(`${MAX_BODIES_READ} requests are being read already; retry later`, () => req.destroy());
      return;
    }
    reading++;
    let body: Buffer;
    try {
      body = decompress(await readBody(req, maxBody), req.headers['content-encoding'], maxBody);
    } finally {
      reading--;
    }
    if (path === '/v1/traces') {
      const doc = json ? parseJson(body) : decodeProtobuf(body);
      const spans = isEmptyObject(doc) ? [] : spansFromOtlp(doc);
      // Counted once written: a failed write is not reported as spans received.
      if (spans.length > 0) options.onSpans(spans);
      stats.spans += spans.length;
    }
    // An empty ExportXServiceResponse means full success, in either encoding.
    if (json) res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    else res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end(Buffer.from(encodeTraceResponse()));
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port, address, family } = server.address() as AddressInfo;
  const host = family === 'IPv6' ? `[${address}]` : address;
  return {
    port,
    url: `http://${host}:${port}`,
    stats,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeIdleConnections();
      }),
  };
}

/**
 * Answers a failed request: 400 for a malformed payload, 413 for one too large, 500 for our own
 * faults (whose cause is not sent). The body is a google.rpc.Status, as JSON or protobuf like the
 * request. Returns the HTTP status answered.
 */
function answerError(req: IncomingMessage, res: ServerResponse, err: unknown): number {
  const e = VlmError.from(err);
  // The sender's fault (a malformed or oversize body): its message is the sender's to read.
  const sendersFault = e.code === 'INVALID_ARGUMENT' || e.code === 'RESOURCE_EXHAUSTED';
  const status = e.code === 'INVALID_ARGUMENT' ? 400 : e.code === 'RESOURCE_EXHAUSTED' ? 413 : 500;
  const code = RPC_CODE[sendersFault ? e.code : 'INTERNAL'];
  const message = sendersFault ? e.message : 'internal error';
  const type = contentTypeOf(req);
  const [contentType, body] =
    type === 'application/json' ? [type, JSON.stringify({ code, message })] : type === 'application/x-protobuf' ? [type, Buffer.from(Status.encode({ code, message, details: [] }).finish())] : ['text/plain', message];
  // A body left unread (too large) cannot be skipped on a kept-alive connection: close it once the
  // answer is out, rather than before, so the sender reads the 413 instead of a reset.
  const unread = !req.complete;
  if (!res.headersSent) res.writeHead(status, { 'content-type': contentType, ...(unread ? { connection: 'close' } : {}) });
  res.end(body, () => {
    if (unread) req.destroy();
  });
  return status;
}

function contentTypeOf(req: IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}

function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on('data', (c: Buffer) => {
      if (refused) return;
      size += c.length;
      if (size > max) {
        refused = true;
        chunks.length = 0;
        // Stop reading; answerError closes the connection after the 413 is written.
        req.pause();
        reject(new VlmError('RESOURCE_EXHAUSTED', `request body over ${max} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function decompress(body: Buffer, encoding: string | undefined, max: number): Buffer {
  const enc = (encoding ?? 'identity').toLowerCase();
  try {
    if (enc === 'gzip') return gunzipSync(body, { maxOutputLength: max });
    if (enc === 'deflate') return inflateSync(body, { maxOutputLength: max });
  } catch (err) {
    // zlib stops at maxOutputLength with this code: the body is too large, not corrupt (413 like
    // a body too large as sent, so a small compressed bomb gets the same answer as a big body).
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') throw new VlmError('RESOURCE_EXHAUSTED', `decompressed body over ${max} bytes`);
    throw new VlmError('INVALID_ARGUMENT', `cannot ${enc}-decode the body: ${(err as Error).message}`);
  }
  if (enc !== 'identity') throw new VlmError('INVALID_ARGUMENT', `unsupported content-encoding ${enc}; use gzip, deflate or none`);
  return body;
}

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `body is not JSON: ${(err as Error).message}`);
  }
}

function decodeProtobuf(body: Buffer): unknown {
  try {
    return decodeTraceRequest(body);
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `body is not an ExportTraceServiceRequest: ${(err as Error).message}`);
  }
}

function isEmptyObject(doc: unknown): boolean {
  return typeof doc === 'object' && doc !== null && !Array.isArray(doc) && Object.keys(doc).length === 0;
}
