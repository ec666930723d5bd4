/**
 * grpc.health.v1 for a fixed set of names: "" (the process) and the service's own. Written here
 * rather than taken from grpc-health-check's HealthImplementation, which answers any name and keeps
 * every name a caller ever watched in a map for good: health needs no token, so any caller could
 * fill the heap with watched multi-megabyte names. Here a request is at most MAX_REQUEST_BYTES, an
 * unknown name is answered without being stored, and a Watch holds nothing once it ends.
 */
import { type sendUnaryData, type Server, type ServerUnaryCall, type ServerWritableStream, type ServiceDefinition } from '@grpc/grpc-js';
import { service as healthDefinition } from 'grpc-health-check';
import { VlmError } from '../../shared/errors';
import { refusalStatus } from './status';

export type ServingStatus = 'SERVING' | 'NOT_SERVING';
type WatchStatus = ServingStatus | 'SERVICE_UNKNOWN';

interface HealthRequest {
  readonly service?: string;
}

/** A service name is a fully qualified proto name; 1 KiB leaves room for any real one. */
const MAX_REQUEST_BYTES = 1024;
/** The receive limit of a server that serves health alone: the bound plus the message's own framing. */
export const HEALTH_REQUEST_LIMIT = MAX_REQUEST_BYTES + 64;
const TOO_LARGE = Symbol('health request too large');

/** The health definition with requests over MAX_REQUEST_BYTES marked before they are decoded. */
function boundedDefinition(): ServiceDefinition {
  const out: Record<string, ServiceDefinition[string]> = {};
  for (const [name, method] of Object.entries(healthDefinition as unknown as ServiceDefinition)) {
    out[name] = { ...method, requestDeserialize: (bytes: Buffer) => (bytes.length > MAX_REQUEST_BYTES ? TOO_LARGE : method.requestDeserialize(bytes)) };
  }
  return out as ServiceDefinition;
}

// Built per answer: a status's metadata is not shared between calls.
const tooLargeStatus = () => refusalStatus(VlmError.invalid('service', `a health request is at most ${MAX_REQUEST_BYTES} bytes`));
// The name is not repeated: it is the caller's, of any length up to the bound.
const unknownNameStatus = () => refusalStatus(new VlmError('NOT_FOUND', 'unknown service name'));

/**
 * One Watch stream. A client that does not read its answers gets the latest status once it reads
 * again, not every status in between: each write it does not take is held in memory.
 */
class Watcher {
  /** The status to send once the stream drains; null when nothing waits. */
  private pending: ServingStatus | null = null;
  private blocked = false;

  constructor(
    readonly name: string,
    private readonly call: ServerWritableStream<HealthRequest, unknown>,
  ) {}

  send(status: ServingStatus): void {
    if (this.blocked) {
      this.pending = status;
      return;
    }
    if (this.call.write({ status })) return;
    this.blocked = true;
    this.call.once('drain', () => {
      this.blocked = false;
      const next = this.pending;
      this.pending = null;
      if (next !== null) this.send(next);
    });
  }
}

export class HealthService {
  private readonly statuses: Map<string, ServingStatus>;
  private readonly watchers = new Set<Watcher>();
  private readonly definition = boundedDefinition();

  /** `names`: every name this process answers for besides "" (the overall status). */
  constructor(names: readonly string[]) {
    this.statuses = new Map(['', ...names].map((n) => [n, 'NOT_SERVING']));
  }

  /** Sets every name's status and tells the watchers of each name whose status changed. */
  setAll(status: ServingStatus): void {
    for (const [name, was] of this.statuses) {
      if (was === status) continue;
      this.statuses.set(name, status);
      for (const w of this.watchers) if (w.name === name) w.send(status);
    }
  }

  addToServer(server: Server): void {
    server.addService(this.definition, {
      check: (call: ServerUnaryCall<HealthRequest | typeof TOO_LARGE, unknown>, callback: sendUnaryData<unknown>) => {
        if (call.request === TOO_LARGE) return callback(tooLargeStatus());
        const status = this.statuses.get(call.request.service ?? '');
        if (status === undefined) return callback(unknownNameStatus());
        callback(null, { status });
      },
      watch: (call: ServerWritableStream<HealthRequest | typeof TOO_LARGE, unknown>) => {
        if (call.request === TOO_LARGE) return call.emit('error', tooLargeStatus());
        const name = call.request.service ?? '';
        const status: WatchStatus = this.statuses.get(name) ?? 'SERVICE_UNKNOWN';
        call.write({ status });
        // An unknown name never becomes known here (the names are fixed): the stream stays open, as
        // the protocol asks, but nothing is kept for it.
        if (status === 'SERVICE_UNKNOWN') return;
        const watcher = new Watcher(name, call as ServerWritableStream<HealthRequest, unknown>);
        this.watchers.add(watcher);
        call.on('cancelled', () => this.watchers.delete(watcher));
      },
      list: (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        if (call.request === TOO_LARGE) return callback(tooLargeStatus());
        callback(null, { statuses: Object.fromEntries([...this.statuses].map(([name, status]) => [name, { status }])) });
      },
    });
  }
}
