/**
 * Clients the service tests share: the generated vlm.v1 clients, and dynamic ones (proto-loader) for
 * grpc.health.v1 and server reflection, as any external tool would use them.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { connect, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import { connect as netConnect, createServer } from 'node:net';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { credentials, loadPackageDefinition, Metadata, ServerCredentials, type ChannelOptions, type Server, type Client, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { running } from '../cli/child-running';

type Ctor = new (address: string, creds: ReturnType<typeof credentials.createInsecure>, options?: ChannelOptions) => Client;

export function healthClient(address: string, options: ChannelOptions = {}, creds = credentials.createInsecure()): Client & {
  check(req: { service: string }, cb: (err: ServiceError | null, res?: { status: string }) => void): void;
} {
  const def = loadSync(healthProtoPath, { keepCase: true, enums: String });
  const pkg = loadPackageDefinition(def) as unknown as { grpc: { health: { v1: { Health: Ctor } } } };
  return new pkg.grpc.health.v1.Health(address, creds, options) as never;
}

export function healthStatus(address: string, service = '', creds = credentials.createInsecure()): Promise<string> {
  const client = healthClient(address, {}, creds);
  return new Promise((resolve, reject) => {
    client.check({ service }, (err, res) => {
      client.close();
      if (err) reject(err);
      else resolve(res!.status);
    });
  });
}

/** Binds a test server to a free loopback port; resolves to the port. */
export function bindLoopback(server: Pick<Server, 'bindAsync'>, serverCredentials: ServerCredentials = ServerCredentials.createInsecure()): Promise<number> {
  return new Promise((resolve, reject) => server.bindAsync('127.0.0.1:0', serverCredentials, (err, port) => (err ? reject(err) : resolve(port))));
}

/** One request on a reflection v1 stream, as grpcurl makes it; resolves to the response. */
function reflect<T>(address: string, request: Record<string, unknown>): Promise<T> {
  const file = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1/reflection.proto');
  const def = loadSync(file, { keepCase: true });
  const pkg = loadPackageDefinition(def) as unknown as { grpc: { reflection: { v1: { ServerReflection: Ctor } } } };
  const client = new pkg.grpc.reflection.v1.ServerReflection(address, credentials.createInsecure()) as Client & {
    ServerReflectionInfo(): NodeJS.ReadWriteStream & { write(m: unknown): boolean; end(): void };
  };
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (res: T) => {
      resolve(res);
      call.end();
      client.close();
    });
    call.on('error', reject);
    call.write(request);
  });
}

/** Service names the server lists through reflection v1. */
export async function reflectedServices(address: string): Promise<string[]> {
  const res = await reflect<{ list_services_response?: { service: Array<{ name: string }> } }>(address, { list_services: '' });
  return (res.list_services_response?.service ?? []).map((s) => s.name);
}

/** The files reflection returns for a symbol (the one declaring it, then what it imports), decoded. */
export async function reflectedFiles(address: string, symbol: string): Promise<FileDescriptorProto[]> {
  const res = await reflect<{ file_descriptor_response?: { file_descriptor_proto: Buffer[] }; error_response?: { error_message: string } }>(address, { file_containing_symbol: symbol });
  if (!res.file_descriptor_response) throw new Error(`reflection: ${res.error_response?.error_message}`);
  return res.file_descriptor_response.file_descriptor_proto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
}

/** The leading comment of a declaration, found by its source path (e.g. [6, 0] the first service). */
export function leadingComment(file: FileDescriptorProto, sourcePath: readonly number[]): string | undefined {
  return file.sourceCodeInfo?.location.find((l) => l.path.length === sourcePath.length && l.path.every((p, i) => p === sourcePath[i]))?.leadingComments;
}

/** Reads a server stream to its end: the messages, then the status error (or null for OK). */
export function collect<T>(stream: ClientReadableStream<T>): Promise<{ messages: T[]; error: ServiceError | null }> {
  return new Promise((resolve) => {
    const messages: T[] = [];
    let error: ServiceError | null = null;
    stream.on('data', (m: T) => messages.push(m));
    stream.on('error', (e: ServiceError) => (error = e));
    // 'status' comes last, after the data and the error (if any).
    stream.on('status', (s: { code: number }) => resolve({ messages, error: s.code === 0 ? null : error }));
  });
}

export function metadataWith(entries: Record<string, string>): Metadata {
  const md = new Metadata();
  for (const [k, v] of Object.entries(entries)) md.set(k, v);
  return md;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The port a `vlm serve` process logged for `component` in its "serving" line (started with port 0
 * and `--log-level info`); undefined until it has logged one.
 */
export function servingPort(log: string, component: 'vision' | 'language'): number | undefined {
  const m = new RegExp(`"component":"${component}","msg":"serving","address":"[^"]*:(\\d+)"`).exec(log);
  return m ? Number(m[1]) : undefined;
}

/** Polls `check` until it returns true or `timeoutMs` passes. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 5000, stepMs = 20): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(stepMs);
  }
}

/**
 * Stops a `vlm serve all` parent the way its children get stopped too: SIGTERM (it forwards it to
 * both services and waits for them), then SIGKILL only if it has not exited within `graceMs`. A bare
 * SIGKILL would leave its two service processes running, orphaned.
 */
export async function stopServeAll(server: ChildProcess | undefined, graceMs = 15_000): Promise<void> {
  if (!server || !running(server)) return;
  const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
  server.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([exited, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
  clearTimeout(timer);
  if (running(server)) {
    server.kill('SIGKILL');
    await exited;
  }
}

/** The `vlm` command (bin/vlm.js) of this checkout. */
export const VLM_BIN = path.resolve(__dirname, '..', 'bin', 'vlm.js');

/**
 * How many of a line rate's one-second windows (services/common/log-rate.ts) events since `started`
 * (a performance.now() reading) can have fallen in: two for a burst, more when a loaded machine spread it.
 */
export function rateWindowsSince(started: number): number {
  return Math.floor((performance.now() - started) / 1000) + 2;
}

/** `vlm ARGS` run to completion as a user runs it, from the repository root, with `env` added. */
export function vlm(args: readonly string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [VLM_BIN, ...args], { cwd: path.resolve(__dirname, '..'), encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The `vlm serve` children of `parent` (run from the sources, tsx's esbuild service is a child too). */
export function servePids(parent: number): number[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
        const args = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
        return Number(stat.slice(stat.lastIndexOf(') ') + 2).split(' ')[1]) === parent && args.includes('serve');
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Whether nothing listens on 127.0.0.1:port: binding it is the test (a health check failing could be a slow service). */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

/**
 * Whether the process still runs. Once its parent dies it belongs to PID 1, and a container whose PID 1
 * does not reap leaves it a zombie, which signal 0 still reaches: read its state instead.
 */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(') ') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** An HTTP/2 session to 127.0.0.1:`port` from `localAddress` (127.0.0.2, ...): a client the server tells apart by its address. */
export function connectFrom(port: number, localAddress: string): ClientHttp2Session {
  return connect(`http://127.0.0.1:${port}`, { createConnection: () => netConnect({ host: '127.0.0.1', port, localAddress }) });
}

/** A gRPC message frame announcing `announced` bytes of which only `sent` follow: a request never complete. */
export function partialMessage(announced: number, sent: number): Buffer {
  const frame = Buffer.alloc(5 + sent);
  frame.writeUInt32BE(announced, 1);
  return frame;
}

/**
 * A gRPC call made by hand over HTTP/2, for what no client library sends: `write` goes out as is and
 * the stream is left open. `status` resolves to the call's grpc-status and message, from the trailers
 * or, for a trailers-only answer, from the response headers.
 */
export function rawCall(session: ClientHttp2Session, path: string, options: { headers?: Record<string, string>; write?: Buffer } = {}): { stream: ClientHttp2Stream; status: Promise<{ code: number; message: string }> } {
  const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...options.headers }, { endStream: false });
  if (options.write) stream.write(options.write);
  stream.on('error', () => undefined);
  const trailers = new Promise<IncomingHttpHeaders>((resolve) => stream.on('trailers', resolve));
  const headers = new Promise<IncomingHttpHeaders>((resolve) => stream.on('response', resolve));
  const status = Promise.race([trailers, headers.then((h) => (h['grpc-status'] !== undefined ? h : trailers))]).then((h) => ({
    code: Number(h['grpc-status']),
    message: decodeURIComponent(String(h['grpc-message'] ?? '')),
  }));
  return { stream, status };
}
