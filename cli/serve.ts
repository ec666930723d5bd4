/**
 * `vlm serve vision|language|all [config flags]`
 *
 * vision: VisionService on --vision-port (50051); language: LanguageService on --language-port
 * (50052), calling vision at --vision-target (default: vision on this host, --host and --vision-port);
 * all: both, as two child processes as in production (each its own pool, logs and trace service
 * name); --vision-provider and --language-provider put each on its own device. Defaults: the
 * embedded model, CPU. SIGTERM/SIGINT stop gracefully (not serving, drain, exit); `all` passes the
 * signal to language, then to vision once language has exited, and exits when both have; a second
 * signal SIGKILLs the ones still running. SIGHUP re-reads the TLS and token files and never stops a service; `all`
 * passes it on.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { coLocatedServiceEnv, MAX_PORT, parseCommandWords, serviceConfig, type Config } from '../shared/config';
import { hostPort, isLoopbackAddress, isWildcard, unbracketed, visionListenHost } from '../shared/net-address';
import { packageRoot } from '../shared/package-root';
import { VlmError } from '../shared/errors';
import { createLogger, setLogLevel, type Logger } from '../shared/log';
import { exitNow, onStopSignals, StartLeftStuckWorkers, stopOnSignals, type RunningService } from '../services/common/lifecycle';
import { liveWorkerThreads } from '../shared/worker/start-worker';
import { running } from './child-running';
import type { ServingMessage } from './serving-message';
import { stopWhenOrphaned } from './stop-when-orphaned';
import { SERVICE_LANGUAGE, SERVICE_VISION } from '../shared/telemetry/names';
import { shutdownTelemetry, startTelemetry } from '../shared/telemetry/sdk';
import type * as LanguageServer from '../services/language/server';
import type * as VisionServer from '../services/vision/server';

const ROLES = ['vision', 'language', 'all'] as const;
type Role = (typeof ROLES)[number];

export async function run(argv: string[]): Promise<number> {
  const { config, values, positionals, positionalIndices } = parseCommandWords(argv, {});
  setLogLevel(config.logLevel);
  const role = positionals[0] as Role | undefined;
  if (role === undefined || !ROLES.includes(role) || positionals.length > 1) {
    throw VlmError.invalid('serve', `expected one of ${ROLES.join(', ')}, got "${positionals.join(' ')}"`);
  }
  // The children get the command line less the word `all`.
  if (role === 'all') return serveBoth(argv.filter((_, i) => i !== positionalIndices[0]), coLocatedServiceEnv(values, 2), config);
  const log = createLogger(role);
  // Until it serves there is nothing to drain: a signal during the model load (a pod deleted while
  // starting) ends the process at once. Node as a container's PID 1 (an image without tini) ignores
  // signals it has no handler for, so without this the pod would load for minutes and then be killed
  // at its grace end.
  const exitWhileStarting = (signal: NodeJS.Signals): void => {
    log.info('stopped while starting', { signal, worker_threads: liveWorkerThreads() });
    // Once workers load the model (or warm it up) they sit in native calls that process.exit() would
    // tear down mid-call, aborting the process: end it without them instead (status 137 then).
    if (liveWorkerThreads() > 0) exitNow();
    else process.exit(0);
  };
  process.on('SIGTERM', exitWhileStarting);
  process.on('SIGINT', exitWhileStarting);
  const unwatchChannel = stopWithParentCommand(log);
  surviveHangup(log);
  // Until it serves, the channel's 'disconnect' listener keeps this process alive: a start that fails
  // must let go of it, or the process would stay, its command waiting for it to exit.
  const service = await startService(role, config, log).finally(unwatchChannel);
  // `serve all` waits for this to learn the port vision picked for --vision-port 0.
  // A callback takes a send on a channel that has just closed, which would otherwise be an uncaught
  // error event (the orphan check stops the service then).
  if (process.connected) process.send?.({ type: 'serving', port: service.port } satisfies ServingMessage, undefined, {}, () => undefined);
  process.off('SIGTERM', exitWhileStarting);
  process.off('SIGINT', exitWhileStarting);
  // Spans of the drained requests are flushed after the server has stopped.
  stopOnSignals(() => service.stop().finally(shutdownTelemetry), log);
  // Runs until a signal; stopOnSignals exits the process.
  return new Promise<number>(() => undefined);
}

/** One service, from the telemetry it reports through to serving. */
async function startService(role: 'vision' | 'language', config: Config, log: Logger): Promise<RunningService> {
  // Before the service modules are required: the grpc instrumentation patches @grpc/grpc-js on load.
  // /metrics listens where the service does (--host): a service kept on loopback keeps its metrics there too.
  const telemetry = startTelemetry({ serviceName: role === 'vision' ? SERVICE_VISION : SERVICE_LANGUAGE, metricsPort: config.telemetry.metricsPort, metricsHost: config.services.host });
  // A service whose /metrics cannot listen would serve on with its autoscaler blind: it does not start.
  await telemetry.ready;
  // Loaded on demand: `serve vision` never loads the language side's modules and vice versa.
  const own = serviceConfig(config, role);
  const starting =
    role === 'vision'
      ? (require('../services/vision/server') as typeof VisionServer).startVisionService(own, { log })
      : (require('../services/language/server') as typeof LanguageServer).startLanguageService(own, { log });
  return starting.catch(async (err: unknown) => {
    if (!(err instanceof StartLeftStuckWorkers)) throw err;
    log.error('start failed with inference workers stuck in a model call or a model load; exiting without them', { stuck: err.stuckWorkers, error: err.message });
    await shutdownTelemetry();
    exitNow();
    throw err.failure;
  });
}

/**
 * A service started by another vlm command (serve all, demo, the benches) has an IPC channel to it
 * (which that command closes once the service reports it serves). When the command is gone without
 * stopping it (killed by a signal it had no handler for, a closed terminal), the service is
 * re-parented: it stops as on SIGTERM, which ends a start too, instead of holding its ports as an orphan.
 */
function stopWithParentCommand(log: Logger): () => void {
  if (!process.send) return () => undefined;
  const stop = (): void => {
    log.warn('the vlm command that started this service is gone; stopping');
    process.kill(process.pid, 'SIGTERM');
  };
  // Until the service reports that it serves, the channel closing is the command gone: it may die
  // while this process still loads its modules, before the parent below could be recorded.
  if (!process.connected) {
    stop();
    return () => undefined;
  }
  process.once('disconnect', stop);
  stopWhenOrphaned(stop);
  // The command may close the channel once told the service serves: from then on only re-parenting counts.
  return () => process.removeListener('disconnect', stop);
}

/**
 * SIGHUP means "re-read the TLS and token files" (services/common/credentials.ts listens for it when
 * there are any). A service without them has nothing to re-read, but must not take SIGHUP's default action, exit, when
 * `serve all` passes a reload on or an operator sends one. Installed before the model loads.
 */
function surviveHangup(log: Logger): void {
  process.on('SIGHUP', () => {
    if (process.listenerCount('SIGHUP') === 1) log.info('SIGHUP: no TLS or token files to re-read');
  });
  // bin/vlm.js's stand-in, which covered the module loading; removed after the handler above is in,
  // since a signal left with no listener goes back to its default action (ending the process).
  for (const l of process.listeners('SIGHUP')) if (l.name === 'sighupWhileLoading') process.removeListener('SIGHUP', l);
}

/** The port serve all gives language beside one of vision's (/metrics, health): the next one; 0 (off) stays 0. */
function portAfter(port: number): number {
  return port > 0 ? port + 1 : 0;
}

/**
 * The ports serve all's two services would listen on: language's /metrics and health ports within
 * range, and no port twice on one address. Language listens on --host: on vision's address too when
 * that is a wildcard, a name for it, or the address itself (the IPv4-mapped spelling included).
 */
function checkServeAllPorts(config: Config, visionHost: string): void {
  const { metricsPort } = config.telemetry;
  const { healthPort, host } = config.services;
  // Past 65535 language could not listen, and vision would be left alone.
  for (const [flag, port] of [['--metrics-port / VLM_METRICS_PORT', metricsPort], ['--health-port / VLM_HEALTH_PORT', healthPort]] as const) {
    if (port === MAX_PORT) throw VlmError.invalid(flag, `serve all gives the language service the next port, so this must be at most ${MAX_PORT - 1}, got ${port}`);
  }
  const visionPorts = [
    ['--vision-port', config.services.visionPort],
    ['--metrics-port (vision)', metricsPort],
    ['--health-port (vision)', healthPort],
  ] as const;
  const languagePorts = [
    ['--language-port', config.services.languagePort],
    ['--metrics-port + 1 (language)', portAfter(metricsPort)],
    ['--health-port + 1 (language)', portAfter(healthPort)],
  ] as const;
  const listenAt = unbracketed(host).toLowerCase();
  const shareAddress = isWildcard(host) || listenAt === 'localhost' || listenAt === visionHost || (visionHost === '127.0.0.1' && listenAt === '::ffff:127.0.0.1');
  if (shareAddress) checkDistinctPorts([...visionPorts, ...languagePorts]);
  else for (const ports of [visionPorts, languagePorts]) checkDistinctPorts(ports);
}

/**
 * Ports that would listen on one address, each once: two on one port would race for it, and the
 * loser's "port taken" would blame some other process. 0 (any free port, or off) repeats freely.
 */
function checkDistinctPorts(ports: ReadonlyArray<readonly [string, number]>): void {
  const taken = new Map<number, string>();
  for (const [flag, port] of ports) {
    if (port === 0) continue;
    const other = taken.get(port);
    if (other) throw VlmError.invalid(flag, `is ${port}, which ${other} already takes: serve all's two services need a port each (language takes the port after each --metrics-port and --health-port)`);
    taken.set(port, flag);
  }
}

/**
 * The two services as child processes sharing the cores (coLocatedServiceEnv). Vision listens on
 * loopback whatever --host is, at --vision-port; language listens on --host and dials vision there
 * (for --vision-port 0 vision starts first and reports the port it bound), unless a --vision-target
 * was given.
 */
function serveBoth(flags: string[], env: NodeJS.ProcessEnv, config: Config): Promise<number> {
  const log = createLogger('serve');
  const bin = path.join(packageRoot(), 'bin', 'vlm.js');
  const { metricsPort } = config.telemetry;
  const { healthPort, host, visionPort } = config.services;
  // Only language dials vision, from this host: vision listens on loopback whatever --host is, or any
  // client reaching that address (every interface for a wildcard) could call it directly, with the
  // token clients use or with none.
  const visionHost = visionListenHost(host);
  checkServeAllPorts(config, visionHost);
  const waitForVisionPort = visionPort === 0 && config.rpc.visionTarget === '';
  const children = new Map<string, ChildProcess>();
  const exited = new Set<string>();
  let worst = 0;
  let stopping = false;
  let done: (code: number) => void = () => undefined;
  const finished = new Promise<number>((resolve) => (done = resolve));
  const settle = (): void => {
    // Once stopping, language is never started: the children spawned so far are all there will be.
    if ((children.size === 2 || stopping) && [...children.keys()].every((r) => exited.has(r))) done(worst);
  };
  const stopAll = (signal: NodeJS.Signals): void => {
    stopping = true;
    const language = children.get('language');
    const vision = children.get('vision');
    // SIGTERM is for this process alone (a supervisor, npm): language first, since the requests it
    // admitted still need vision, which would refuse their hop while draining too; vision stops once
    // language has finished them. SIGINT is a terminal's Ctrl-C, which reached both children at the
    // same moment: passed on at once too, so each sees it as the same stop (a late copy would read
    // as a second signal and cut vision's drain short).
    if (signal !== 'SIGTERM' || !language || !running(language)) {
      for (const child of children.values()) if (running(child)) child.kill(signal);
    } else {
      language.kill(signal);
      language.once('exit', () => {
        if (vision && running(vision)) vision.kill(signal);
      });
    }
    settle();
  };
  const start = (role: 'vision' | 'language', own: string[]): ChildProcess => {
    // An IPC channel for each: a service that has one stops when this command is gone (killed by a
    // SIGKILL it cannot pass on), instead of holding its ports as an orphan (stopWithParentCommand);
    // vision reports over it the port it bound for --vision-port 0.
    const child = spawn(process.execPath, [bin, 'serve', role, ...flags, ...own], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.on('message', (msg: ServingMessage) => {
      if (msg.type === 'serving') child.disconnect();
    });
    children.set(role, child);
    child.on('exit', (code, signal) => {
      worst = Math.max(worst, code ?? (signal ? 1 : 0));
      exited.add(role);
      if (!stopping) {
        // One service gone means the pair cannot answer: take the other down too.
        log.error('service exited; stopping the other', { role, code, signal });
        stopAll('SIGTERM');
      }
      settle();
    });
    return child;
  };
  // One host, two Prometheus endpoints: language takes the next port (the last --metrics-port wins).
  // So does the plaintext health port.
  const languageOwn = [...(metricsPort > 0 ? ['--metrics-port', String(portAfter(metricsPort))] : []), ...(healthPort > 0 ? ['--health-port', String(portAfter(healthPort))] : [])];
  // With a hop token file, that is what vision accepts (the clients' tokens stay with language).
  const hopFile = config.rpc.visionAuth?.file;
  const vision = start('vision', ['--host', visionHost, ...(hopFile ? ['--auth-token-file', hopFile] : [])]);
  if (config.rpc.visionTarget !== '' && !isLoopbackAddress(config.rpc.visionTarget)) {
    log.warn('--vision-target sends language to a vision service elsewhere; the one serve all starts listens on loopback only', { vision_target: config.rpc.visionTarget, vision_host: visionHost });
  }
  // Over a TLS hop language checks vision's certificate (serve all's one certificate, issued for
  // --host) against the host it dials: loopback now, so it is told the name to expect.
  const hopTls = config.tls.visionCaFile !== null || config.tls.visionClientCertFile !== null;
  const serverName = hopTls && config.tls.visionServerName === null && !isWildcard(host) ? ['--vision-server-name', unbracketed(host)] : [];
  // Language dials vision there, unless a --vision-target says otherwise.
  const languageWith = (visionPort: number): string[] => [...languageOwn, ...(config.rpc.visionTarget === '' ? ['--vision-target', hostPort(visionHost, visionPort), ...serverName] : [])];
  if (!waitForVisionPort) start('language', languageWith(visionPort));
  else {
    vision.on('message', (msg: ServingMessage) => {
      if (msg.type !== 'serving') return;
      log.info('vision is serving; starting language', { vision_target: hostPort(visionHost, msg.port) });
      if (!stopping) start('language', languageWith(msg.port));
    });
  }
  // The first signal drains both services; a second one (an operator out of patience) kills what
  // still runs, so a child stuck in its drain cannot keep `serve all` alive. The same stop arriving
  // again within moments (Ctrl-C reaches npm and every child as well) is not a second one.
  onStopSignals((signal, again) => {
    if (again) log.warn('second signal: killing the services that still run');
    stopAll(again ? 'SIGKILL' : signal === 'SIGINT' ? 'SIGINT' : 'SIGTERM');
  }, log, 'the same stop again; the services are draining');
  // A reload for the services (TLS files), not a reason for the parent to exit and orphan them.
  process.on('SIGHUP', () => {
    log.info('SIGHUP: passing it to the services');
    for (const child of children.values()) if (running(child)) child.kill('SIGHUP');
  });
  stopWhenOrphaned(() => {
    log.warn('the process that started serve all is gone; stopping the services');
    stopAll('SIGTERM');
  });
  return finished;
}
