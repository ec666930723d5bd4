import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync, inflateSync } from 'node:zlib';
import { VlmError } from '../../errors';
import { spansFromOtlp } from '../analysis/otlp-json';
import type { SpanRecord } from '../analysis/span-record';
import { decodeTraceRequest, encodeTraceResponse } from './otlp-proto';

/**
 * A minimal OTLP/HTTP trace receiver: `POST /v1/traces` with an ExportTraceServiceRequest as
 * `application/x-protobuf` (the SDK's default, http/protobuf) or `application/json`, optionally gzip
 * or deflate encoded. Spans are flattened to SpanRecords and handed to `onSpans`. Metrics and logs
 * posted to the same endpoint (an SDK with OTLP metrics on) are accepted and dropped, so the sender
 * does not retry or log errors.
 */
export interface TraceReceiverOptions {
  port: number;
  host?: string;
  onSpans: (spans: SpanRecord[]) => void;
  /** Largest accepted body after decompression. */
  maxBodyBytes?: number;
}

export interface TraceReceiver {
  readonly port: number;
  readonly url: string;
  /** Requests received per path, and spans accepted. */
  readonly stats: { requests: Record<string, number>; spans: number };
  close(): Promise<void>;
}

const DEFAULT_MAX_BODY = 64 * 1024 * 1024;

export async function startTraceReceiver(options: TraceReceiverOptions): Promise<TraceReceiver> {
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY;
  const stats = { requests: {} as Record<string, number>, spans: 0 };
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    stats.requests[path] = (stats.requests[path] ?? 0) + 1;
    handle(req, res, path).catch((err: unknown) => {
      const e = VlmError.from(err);
      const status = e.code === 'INVALID_ARGUMENT' ? 400 : e.code === 'RESOURCE_EXHAUSTED' ? 413 : 500;
      if (!res.headersSent) res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(e.code === 'INTERNAL' ? 'internal error' : e.message);
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (req.method !== 'POST') {
      res.writeHead(405, { allow: 'POST' }).end();
      return;
    }
    if (path !== '/v1/traces' && path !== '/v1/metrics' && path !== '/v1/logs') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`no OTLP endpoint at ${path}; spans go to /v1/traces`);
      return;
    }
    const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    const json = contentType === 'application/json';
    if (!json && contentType !== 'application/x-protobuf') {
      res.writeHead(415, { 'content-type': 'text/plain' }).end(`content-type ${contentType || '(none)'}: OTLP/HTTP takes application/x-protobuf or application/json`);
      return;
    }
    const body = decompress(await readBody(req, maxBody), req.headers['content-encoding'], maxBody);
    if (path === '/v1/traces') {
      const doc = json ? parseJson(body) : decodeProtobuf(body);
      const spans = isEmptyObject(doc) ? [] : spansFromOtlp(doc);
      stats.spans += spans.length;
      if (spans.length > 0) options.onSpans(spans);
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

function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new VlmError('RESOURCE_EXHAUSTED', `request body over ${max} bytes`));
        req.destroy();
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
