/**
 * A gRPC server with what both services need around their handlers: interceptors, grpc.health.v1
 * (NOT_SERVING until the owner calls setServing(true) after load and warm-up), server reflection,
 * deliberate message size limits, and a graceful stop:
 *   health NOT_SERVING, refuse new calls, tryShutdown (close the port, GOAWAY on every connection)
 *   -> wait for calls in flight (up to the grace period) -> end those left with UNAVAILABLE
 *   SHUTTING_DOWN (through their handlers' signals, or at once if still receiving their request) and
 *   give their statuses a moment -> forceShutdown.
 * Sessions are disposed by the owner after stop() resolves.
 */
import { VlmError } from '../../shared/errors';
import type { ActiveCalls } from './active-calls';
import { Server, ServerCredentials, type ServerInterceptor, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { HEALTH_REQUEST_LIMIT, HealthService } from './health';
import { CONFIG_OPTIONS, type Config } from '../../shared/config';
import { hostPort } from '../../shared/net-address';
import { receiveLimit, SEND_LIMIT } from './message-limits';
import type { Logger } from '../../shared/log';
import { lenientDefinition } from './lenient-decode';
import { reflectionDefinition } from './reflection';
import type { BearerTokens } from './bearer-tokens';
import type { ServiceCredentials } from './credentials';
import { stalledCallInterceptor, type CallLimit } from './stalled-calls';
import { callLifetimeBoundMs } from './call-context';
import { boundGrpcTimeouts } from './grpc-timeout';
import { Admission } from './admission';
import { routeGrpcLogs } from './grpc-log';
import type { LineRate } from './log-rate';
import { accessLogInterceptor, accessLogRate, HEALTH_PATH_PREFIX, REFLECTION_PATH_PREFIX, clientCertificateNameInterceptor, anonymousCallerInterceptor, bearerAuthInterceptor, refuseAtHeadersInterceptor, requestArrivalInterceptor, requestEncodingInterceptor, requestIdInterceptor, uncompressedRequestsInterceptor } from './interceptors';

export interface GrpcServerOptions {
  /** Fully qualified service name, e.g. "vlm.v1.VisionService" (the health check's service key). */
  readonly serviceName: string;
  readonly definition: ServiceDefinition;
  readonly implementation: UntypedServiceImplementation;
  /** Proto files (relative to proto/) that reflection describes. */
  readonly protoFiles: readonly string[];
  readonly log: Logger;
  /** Largest request accepted by the transport; set above the image byte limit so the service, not the transport, judges oversize images. */
  readonly maxReceiveMessageBytes: number;
  readonly maxSendMessageBytes: number;
  /** Clients must send one of these bearer tokens; null: no authentication. */
  readonly auth: BearerTokens | null;
  /** Vision only: a caller forwarded by the language service (`x-vlm-on-behalf-of`) names the call's caller under its token. */
  readonly acceptOnBehalfOf?: boolean;
  readonly shutdownGraceMs: number;
  /** The handlers' calls (their adapters' `calls`): a drain past its grace ends them as SHUTTING_DOWN. */
  readonly activeCalls?: ActiveCalls;
  /** TLS (services/common/tls.ts); absent: plaintext. */
  readonly credentials?: ServerCredentials;
  /** Calls one client connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxConcurrentStreams?: number;
  /** Calls (health and reflection aside) this server holds at once before refusing more with RESOURCE_EXHAUSTED; 0 or absent: no limit. */
  readonly maxInFlightCalls?: number;
  /** Methods allowed past the in-flight cap, up to twice it (GetModelInfo: what clients ask under load too). */
  readonly lightMethods?: readonly string[];
  /** Connections get GOAWAY after this long (clients reconnect and re-resolve); 0 or absent: never. Calls in flight keep their deadline. */
  readonly maxConnectionAgeMs?: number;
  /** Longest a call may still run on a connection past its age limit (the services' default deadline). */
  readonly maxConnectionAgeGraceMs?: number;
  /** Longest a call may wait for its request message after its headers (the services' default deadline). */
  readonly requestArrivalMs?: number;
  /**
   * Why a call of `path` from `caller` would be refused now (its inference pool full, shut down or
   * without a worker), asked when its headers arrive: a refused call's request message (up to the
   * receive limit, an image of tens of MiB) is then never buffered. Null: let it in.
   */
  readonly refuseAtHeaders?: (path: string, caller: string) => VlmError | null;
  /** With client certificates required: the names one of which a client's certificate must carry (empty: any from the CA). */
  readonly clientNames?: readonly string[];
  /** The handlers' deadline for calls that carry none: such a call not over this long (plus stalledStatusGraceMs) after its request arrived is reset. */
  readonly defaultDeadlineMs?: number;
  /** The longest a call may run, whatever deadline it carries (--max-deadline-ms); none when unset. */
  readonly maxDeadlineMs?: number;
  /** How long past its deadline a call's status may wait behind responses its client does not read (stalled-calls.ts). */
  readonly stalledStatusGraceMs?: number;
  /** How long a reflection stream may stay open (Admission). */
  readonly reflectionLifetimeMs?: number;
}

/** The services' --deadline-ms default, for servers built without their config (tests). */
const DEFAULT_DEADLINE_MS = CONFIG_OPTIONS['deadline-ms'].default;
const DEFAULT_REQUEST_ARRIVAL_MS = DEFAULT_DEADLINE_MS;

export class GrpcServer {
  readonly health: HealthService;
  private readonly admission: Admission;
  /** The access log's rate of refused calls, flushed at the stop (its report timers do not hold the exit). */
  private readonly accessRate: LineRate;
  private readonly server: Server;
  /** Plaintext, grpc.health.v1 only (kubelet probes cannot speak TLS); started by listenHealth(). */
  private healthServer: Server | null = null;
  private stopping: Promise<void> | null = null;
  /** host:port as bound (the kernel's port for port 0), which drain() names. */
  private boundAddress: string | null = null;
  /** Set while refuseConnections() repeats. */
  private refusing: NodeJS.Timeout | undefined;

  constructor(private readonly options: GrpcServerOptions) {
    routeGrpcLogs(options.log);
    this.health = new HealthService([options.serviceName]);
    this.admission = new Admission(options.maxInFlightCalls ?? 0, new Set(options.lightMethods), options.reflectionLifetimeMs);
    const defaultDeadlineMs = options.defaultDeadlineMs ?? DEFAULT_DEADLINE_MS;
    const limitOf = (path: string): CallLimit | undefined =>
      path.startsWith(HEALTH_PATH_PREFIX)
        ? undefined
        : path.startsWith(REFLECTION_PATH_PREFIX)
          ? { ms: this.admission.reflectionLifetimeMs, from: 'headers' }
          : { ms: defaultDeadlineMs, from: 'request', maxMs: options.maxDeadlineMs };
    const accessLog = options.log.child('access');
    this.accessRate = accessLogRate(accessLog);
    const interceptors: ServerInterceptor[] = [
      // First: only the base call knows the request's encoding (requestEncodingInterceptor says why).
      requestEncodingInterceptor(),
      stalledCallInterceptor({ limitOf, graceMs: options.stalledStatusGraceMs, log: options.log }),
      requestIdInterceptor(),
      accessLogInterceptor(accessLog, this.accessRate),
      uncompressedRequestsInterceptor(),
    ];
    if (options.clientNames?.length) interceptors.push(clientCertificateNameInterceptor(options.clientNames, options.log));
    interceptors.push(options.auth !== null ? bearerAuthInterceptor(options.auth, { acceptOnBehalfOf: options.acceptOnBehalfOf }) : anonymousCallerInterceptor());
    interceptors.push(requestArrivalInterceptor(options.requestArrivalMs ?? DEFAULT_REQUEST_ARRIVAL_MS), this.admission.interceptor());
    if (options.refuseAtHeaders) interceptors.push(refuseAtHeadersInterceptor(options.refuseAtHeaders));
    // Before any call arrives: grpc-js would end a call with a grpc-timeout of 24.8 days or more at once.
    boundGrpcTimeouts();
    this.server = new Server({
      interceptors,
      'grpc.max_receive_message_length': options.maxReceiveMessageBytes,
      'grpc.max_send_message_length': options.maxSendMessageBytes,
      // Keep idle connections from a load balancer alive; a dead peer is noticed within a minute.
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      ...(options.maxConcurrentStreams ? { 'grpc.max_concurrent_streams': options.maxConcurrentStreams } : {}),
      ...(options.maxConnectionAgeMs
        ? { 'grpc.max_connection_age_ms': options.maxConnectionAgeMs, 'grpc.max_connection_age_grace_ms': options.maxConnectionAgeGraceMs ?? options.shutdownGraceMs }
        : {}),
    });
    this.setServing(false);
    this.server.addService(lenientDefinition(options.definition), options.implementation);
    this.health.addToServer(this.server);
    new ReflectionService(reflectionDefinition(options.protoFiles, options.log)).addToServer(this.server);
  }

  /** Binds and starts; resolves to the bound port (useful with port 0). */
  listen(host: string, port: number): Promise<number> {
    const address = hostPort(host, port);
    return new Promise((resolve, reject) => {
      this.server.bindAsync(address, this.options.credentials ?? ServerCredentials.createInsecure(), (err, bound) => {
        if (err) reject(cannotListen(`cannot listen on ${address}`, err));
        else {
          this.boundAddress = hostPort(host, bound);
          resolve(bound);
        }
      });
    });
  }

  /**
   * GOAWAY on every connection of the main port, which stays open, until acceptConnections(): clients
   * reconnect, re-resolve, and reach other replicas. Without it a client's long-lived connection kept
   * sending its share of calls to a replica that refuses them all until the liveness probe restarted
   * it. Until readiness takes this replica out of the endpoints (seconds) and a client re-resolves, a
   * reconnect may land here again: connections opened since are told to go too, every
   * RECLOSE_CONNECTIONS_MS. Calls in flight get `graceMs` to end.
   */
  refuseConnections(graceMs: number): void {
    if (this.stopping !== null) return;
    const close = (): void => {
      if (this.boundAddress !== null && this.stopping === null) this.server.drain(this.boundAddress, graceMs);
    };
    close();
    this.refusing ??= setInterval(close, RECLOSE_CONNECTIONS_MS).unref();
  }

  /** Ends refuseConnections(): the replica serves again. */
  acceptConnections(): void {
    clearInterval(this.refusing);
    this.refusing = undefined;
  }

  /** A second, plaintext server answering only grpc.health.v1 from the same statuses; resolves to its port. */
  listenHealth(host: string, port: number): Promise<number> {
    // Open to anyone who reaches it and never sent anything but a short name: no compression, and
    // the transport refuses a request past the health service's own bound. Its own admission, so a
    // flood of the main port cannot refuse the probes here: Watch streams capped per address and in
    // all (30 000 from one client took a language process from 157 to 443 MiB), and a request that
    // does not arrive within seconds ended; arrivals are not capped (the kubelet's probes are).
    const server = (this.healthServer ??= new Server({
      interceptors: [requestEncodingInterceptor(), uncompressedRequestsInterceptor(), Admission.forHealthPort().interceptor()],
      'grpc.max_receive_message_length': HEALTH_REQUEST_LIMIT,
      ...(this.options.maxConcurrentStreams ? { 'grpc.max_concurrent_streams': this.options.maxConcurrentStreams } : {}),
    }));
    this.health.addToServer(server);
    const address = hostPort(host, port);
    return new Promise((resolve, reject) => {
      server.bindAsync(address, ServerCredentials.createInsecure(), (err, bound) => {
        if (err) reject(cannotListen(`cannot listen for health checks on ${address}`, err));
        else resolve(bound);
      });
    });
  }

  /** Overall health ("") and the service's own entry move together. */
  setServing(serving: boolean): void {
    this.health.setAll(serving ? 'SERVING' : 'NOT_SERVING');
  }

  get activeCalls(): number {
    return this.admission.active;
  }

  /** Graceful stop; idempotent (a second SIGTERM gets the same promise). */
  stop(): Promise<void> {
    this.stopping ??= this.drainAndShutdown();
    return this.stopping;
  }

  private async drainAndShutdown(): Promise<void> {
    this.acceptConnections();
    const log = this.options.log;
    const grace = this.options.shutdownGraceMs;
    this.setServing(false);
    this.admission.startDraining();
    log.info('draining', { inFlight: this.admission.active, graceMs: grace });
    const started = Date.now();
    // At once, not after the drain: GOAWAY tells every client to take its next calls elsewhere while
    // the calls in flight finish here. A connection left open would keep a client (a pinned L4
    // connection, a round-robin channel) sending its retries into this replica's refusals for the
    // whole grace period.
    const shutDown = new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    const drained = await within(this.admission.idle(), grace);
    const left = Math.max(0, grace - (Date.now() - started));
    // Once admitted calls are done, what tryShutdown still waits for is calls admission exempts:
    // a health Watch stream never ends by itself, so it gets a moment to close, not the whole grace.
    const closed = drained && (await within(shutDown, Math.min(left, EXEMPT_CLOSE_MS)));
    if (!closed) {
      if (drained) log.info('closing health watches and other streams outside admission');
      else {
        const over = VlmError.shuttingDown(`the service is shutting down and its ${grace} ms drain is over; retry on another replica`);
        // Calls in a handler end through their signals; calls still sending their request, here.
        const ended = (this.options.activeCalls?.abortAll(over) ?? 0) + this.admission.refuseUnread(over);
        log.warn('grace period over; ending calls still in flight', { inFlight: this.admission.active, ended });
        // Their statuses go out as their handlers see the abort (a worker stops at its next layer or
        // decode step); what is still running after that is cut off by the transport (CANCELLED).
        if (ended > 0 && (await within(this.admission.idle(), STATUS_FLUSH_MS))) await new Promise((r) => setTimeout(r, 20));
      }
      this.server.forceShutdown();
    }
    // Probes watched the drain as NOT_SERVING; the health port goes last.
    this.healthServer?.forceShutdown();
    this.accessRate.flush();
    log.info('stopped', { drained, ms: Date.now() - started });
  }
}

const EXEMPT_CLOSE_MS = 1000;
/** How long calls ended at the end of a drain get to send their statuses. */
const STATUS_FLUSH_MS = 1000;

/** A start that cannot bind is the operator's to fix, and a port in use is the usual reason. */
function cannotListen(what: string, err: Error): VlmError {
  const inUse = /EADDRINUSE/.test(err.message) ? ' (the port is taken: is another vlm serve running? stop it, or choose another port)' : '';
  return new VlmError('FAILED_PRECONDITION', `${what}: ${err.message}${inUse}`, { cause: err });
}

function within(p: Promise<void>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    void p.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** How often a replica refusing connections (refuseConnections) tells the ones opened since to go. */
const RECLOSE_CONNECTIONS_MS = 2_000;

/**
 * The transport options both services take from the config alike: limits, auth, drain, TLS, streams,
 * connection age. Aged-out connections matter on both sides: language pods hold long-lived channels
 * to vision and re-resolve to find new replicas, and so do backend apps dialing the headless language
 * Service; through the ClusterIP a connection stays on the pod it first reached, and replicas the
 * autoscaler adds would get no traffic from it.
 */
export function transportOptions(config: Config, credentials: Pick<ServiceCredentials, 'server' | 'tokens'>): Pick<
  GrpcServerOptions,
  'maxReceiveMessageBytes' | 'maxSendMessageBytes' | 'auth' | 'shutdownGraceMs' | 'credentials' | 'maxConcurrentStreams' | 'maxInFlightCalls' | 'requestArrivalMs' | 'defaultDeadlineMs' | 'maxDeadlineMs' | 'maxConnectionAgeMs' | 'maxConnectionAgeGraceMs' | 'clientNames'
> {
  return {
    clientNames: config.tls.clientNames,
    maxConnectionAgeMs: config.rpc.maxConnectionAgeMs,
    // A call on an aged-out connection is never cut off by the transport: none lives longer than this.
    maxConnectionAgeGraceMs: callLifetimeBoundMs(config.limits),
    defaultDeadlineMs: config.limits.deadlineMs,
    maxDeadlineMs: config.limits.maxDeadlineMs,
    maxReceiveMessageBytes: receiveLimit(config.limits),
    requestArrivalMs: config.limits.deadlineMs,
    maxSendMessageBytes: SEND_LIMIT,
    auth: credentials.tokens,
    shutdownGraceMs: config.rpc.shutdownGraceMs,
    credentials: credentials.server ?? undefined,
    maxConcurrentStreams: config.rpc.maxConcurrentStreams,
    maxInFlightCalls: config.rpc.maxInFlightCalls,
  };
}
