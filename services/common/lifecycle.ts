/**
 * Start-up and shutdown shared by both services: once the model is loaded, listen (probes get
 * NOT_SERVING through the warm-up; during the load itself they get a refused connection, which the
 * startup probe allows for), warm up, then SERVING; on stop, drain the server and close the pool.
 */
import { type Config } from '../../shared/config';
import { hostPort, isLoopbackAddress, localAddress } from '../../shared/net-address';
import type { Logger } from '../../shared/log';
import type { InferenceBackend } from './inference-backend';
import type { PoolCloseReport } from '../../shared/worker';
import { VlmError } from '../../shared/errors';
import type { GrpcServer } from './grpc-server';
import { callLifetimeBoundMs } from './call-context';

export interface RunningService {
  /** The bound port (the configured one, or the one picked for port 0). */
  readonly port: number;
  readonly address: string;
  readonly backend: InferenceBackend;
  /** Calls of the service's API in flight (health and reflection not counted). */
  activeCalls(): number;
  /**
   * Graceful: NOT_SERVING, drain, shutdown, then the workers are stopped. Idempotent. Workers stuck in
   * a model call are left running (the report counts them): the process must end without them.
   */
  stop(): Promise<PoolCloseReport>;
}

export async function serve(
  server: GrpcServer,
  backend: InferenceBackend,
  config: Config,
  port: number,
  warmUp: () => Promise<void>,
  log: Logger,
): Promise<RunningService> {
  let bound: number;
  try {
    bound = await server.listen(config.services.host, port);
    // Mutual TLS (a client CA) authenticates callers too.
    if (config.rpc.auth === null && config.tls.caFile === null && !isLoopbackAddress(config.services.host)) {
      log.warn('listening beyond this host without authentication: anyone who reaches the port may call it (set VLM_AUTH_TOKEN_FILE, or --host 127.0.0.1)', { address: hostPort(config.services.host, bound) });
    }
    if (config.services.healthPort > 0) {
      const health = await server.listenHealth(config.services.host, config.services.healthPort);
      log.info('plaintext health checks', { port: health });
    }
  } catch (err) {
    await server.stop();
    await backend.close();
    throw err;
  }
  let stopping: Promise<PoolCloseReport> | null = null;
  const service: RunningService = {
    port: bound,
    address: localAddress(config.services.host, bound),
    backend,
    activeCalls: () => server.activeCalls,
    stop: () =>
      (stopping ??= (async () => {
        await server.stop();
        return backend.close();
      })()),
  };
  try {
    if (config.rpc.warmup) {
      const started = performance.now();
      await warmUp();
      log.info('warm-up passed', { ms: Math.round(performance.now() - started) });
    }
  } catch (err) {
    log.error('warm-up failed; not serving', { error: err instanceof Error ? err.message : String(err) });
    const report = await service.stop();
    // The warm-up's own model call may be what hangs: its worker keeps the process from exiting.
    if (report.stuckWorkers > 0) throw new StartLeftStuckWorkers(err, report.stuckWorkers);
    throw err;
  }
  server.setServing(true);
  // A service that cannot run a job (its workers gone and not replaceable, every worker stuck in a
  // model call, its GPU failed) answers UNAVAILABLE to everything: NOT_SERVING takes it out of its
  // Service's endpoints, and the liveness probe restarts the pod unless it recovers first.
  let serving = true;
  backend.pool.onAvailability((available, why) => {
    if (stopping !== null || serving === available) return;
    serving = available;
    server.setServing(serving);
    if (serving) {
      server.acceptConnections();
      log.info('the inference pool can run requests again: SERVING');
    } else {
      // Connections closed too, so clients move to other replicas (refuseConnections says why).
      log.error('the inference pool cannot run requests: NOT_SERVING', { why, connections: 'closing' });
      server.refuseConnections(callLifetimeBoundMs(config.limits));
    }
  });
  log.info('serving', { address: hostPort(config.services.host, bound), model_id: backend.model.manifest.model_id, content_hash: backend.model.manifest.content_hash, provider: backend.provider, device: backend.device });
  return service;
}

/**
 * A terminal's Ctrl-C, or a kill of a process group, reaches every process of the group, and
 * `serve all` and npm pass it on as well: one stop arrives two or three times within moments. Only
 * a signal later than this after the first is an operator asking again.
 */
const REPEATED_SIGNAL_MS = 2000;

/**
 * Calls `onStop` for SIGTERM and SIGINT: once with `again` false, then with `again` true for each
 * signal later than REPEATED_SIGNAL_MS after the first; a repeat within it is logged and dropped.
 */
export function onStopSignals(onStop: (signal: NodeJS.Signals, again: boolean) => void, log: Logger, repeatNote: string): void {
  let firstAt: number | null = null;
  const onSignal = (signal: NodeJS.Signals): void => {
    const now = performance.now();
    if (firstAt !== null && now - firstAt < REPEATED_SIGNAL_MS) return log.info(repeatNote, { signal });
    const again = firstAt !== null;
    firstAt ??= now;
    onStop(signal, again);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/**
 * The call options of a service's warm-up job: its deadline, and a signal that ends it there. The
 * worker checks the deadline only between layers and decode steps, so without the signal a model call
 * that hangs would hold the start for ever instead of failing it.
 */
export function warmUpCall(deadlineMs: number): { deadline: number; signal: AbortSignal } {
  const controller = new AbortController();
  setTimeout(() => controller.abort(new VlmError('DEADLINE_EXCEEDED', `the warm-up did not finish within ${deadlineMs} ms (--deadline-ms)`)), deadlineMs).unref();
  return { deadline: Date.now() + deadlineMs, signal: controller.signal };
}

/** A start that failed and left workers inside a model call: the process has to end without them (exitNow). */
export class StartLeftStuckWorkers extends Error {
  constructor(
    readonly failure: unknown,
    readonly stuckWorkers: number,
  ) {
    super(failure instanceof Error ? failure.message : String(failure));
  }
}

/**
 * Ends the process without waiting for its worker threads. Not process.exit(): with a worker inside a
 * native model call it waits for that call and then aborts (the worker is torn down mid-call), or never
 * returns if the call hangs. As PID 1 the kernel ignores a SIGKILL the process sends itself: abort()
 * then, which ends it with a native stack trace (the images run node under tini, so it is not PID 1).
 */
export function exitNow(): void {
  if (process.pid === 1) process.abort();
  process.kill(process.pid, 'SIGKILL');
}

/**
 * SIGTERM/SIGINT: stop gracefully once; a second signal (past REPEATED_SIGNAL_MS) exits at once. A stop
 * that leaves workers stuck in a model call (or a replacement still loading) exits at once too, once
 * the drain and telemetry are done: waiting would only hold the GPU until the orchestrator's kill, a
 * grace period later.
 */
export function stopOnSignals(stop: () => Promise<PoolCloseReport | void>, log: Logger): void {
  onStopSignals((signal, again) => {
    if (again) {
      log.warn('second signal; exiting now', { signal });
      return exitNow();
    }
    log.info('stopping', { signal });
    stop().then(
      (report) => {
        if (!report || report.stuckWorkers === 0) return process.exit(0);
        log.error('stopped with inference workers stuck in a model call or a model load; exiting without them', { stuck: report.stuckWorkers });
        exitNow();
      },
      (err: unknown) => {
        log.error('stop failed', { error: err instanceof Error ? err.message : String(err) });
        process.exit(1);
      },
    );
  }, log, 'the same stop again; still draining');
}
