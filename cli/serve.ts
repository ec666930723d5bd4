/**
 * `vlm serve vision|language|all [config flags]`
 *
 * vision: VisionService on --vision-port (50051); language: LanguageService on --language-port
 * (50052), calling vision at --vision-target (default 127.0.0.1:<vision port>); all: both, as two
 * child processes as in production (each its own pool, logs and trace service name). Defaults: the
 * embedded model, CPU. SIGTERM/SIGINT stop gracefully (not serving, drain, exit); `all` passes the
 * signal to both children and exits when they have; a second signal SIGKILLs the ones still running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { coLocatedServiceEnv, packageRoot, parseCommandLine } from '../shared/config';
import { VlmError } from '../shared/errors';
import { createLogger, setLogLevel } from '../shared/log';
import { stopOnSignals } from '../services/common/lifecycle';
import { running } from './child-running';
import { SERVICE_LANGUAGE, SERVICE_VISION } from '../shared/telemetry/names';
import { shutdownTelemetry, startTelemetry } from '../shared/telemetry/sdk';
import type * as LanguageServer from '../services/language/server';
import type * as VisionServer from '../services/vision/server';

const ROLES = ['vision', 'language', 'all'] as const;
type Role = (typeof ROLES)[number];

export async function run(argv: string[]): Promise<number> {
  const { config, values, positionals } = parseCommandLine(argv, {});
  setLogLevel(config.logLevel);
  const role = positionals[0] as Role | undefined;
  if (role === undefined || !ROLES.includes(role) || positionals.length > 1) {
    throw VlmError.invalid('serve', `expected one of ${ROLES.join(', ')}, got "${positionals.join(' ')}"`);
  }
  if (role === 'all') return serveBoth(argv.filter((a) => a !== 'all'), coLocatedServiceEnv(values, 2), config.telemetry.metricsPort, config.services.healthPort);
  const log = createLogger(role);
  // Before the service modules are required: the grpc instrumentation patches @grpc/grpc-js on load.
  startTelemetry({ serviceName: role === 'vision' ? SERVICE_VISION : SERVICE_LANGUAGE, metricsPort: config.telemetry.metricsPort });
  // Loaded on demand: `serve vision` never loads the language side's modules and vice versa.
  const service =
    role === 'vision'
      ? await (require('../services/vision/server') as typeof VisionServer).startVisionService(config, { log })
      : await (require('../services/language/server') as typeof LanguageServer).startLanguageService(config, { log });
  // Spans of the drained requests are flushed after the server has stopped.
  stopOnSignals(() => service.stop().finally(shutdownTelemetry), log);
  // Runs until a signal; stopOnSignals exits the process.
  return new Promise<number>(() => undefined);
}

/** The two services as child processes sharing the cores: each gets half unless threads are set. */
function serveBoth(flags: string[], env: NodeJS.ProcessEnv, metricsPort: number, healthPort: number): Promise<number> {
  const log = createLogger('serve');
  const bin = path.join(packageRoot(), 'bin', 'vlm.js');
  const children = new Map<string, ChildProcess>();
  for (const role of ['vision', 'language']) {
    // One host, two Prometheus endpoints: language takes the next port (the last --metrics-port wins).
    // So does the plaintext health port.
    const own =
      role === 'language'
        ? [...(metricsPort > 0 ? ['--metrics-port', String(metricsPort + 1)] : []), ...(healthPort > 0 ? ['--health-port', String(healthPort + 1)] : [])]
        : [];
    children.set(role, spawn(process.execPath, [bin, 'serve', role, ...flags, ...own], { env, stdio: ['ignore', 'inherit', 'inherit'] }));
  }
  let stopping = false;
  const stopAll = (signal: NodeJS.Signals): void => {
    stopping = true;
    for (const child of children.values()) if (running(child)) child.kill(signal);
  };
  // The first signal drains both services; a second one (an operator out of patience) kills what
  // still runs, so a child stuck in its drain cannot keep `serve all` alive.
  let signals = 0;
  const onSignal = (): void => {
    signals += 1;
    if (signals > 1) log.warn('second signal: killing the services that still run');
    stopAll(signals > 1 ? 'SIGKILL' : 'SIGTERM');
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return new Promise((resolve) => {
    let worst = 0;
    let left = children.size;
    for (const [role, child] of children) {
      child.on('exit', (code, signal) => {
        const status = code ?? (signal ? 1 : 0);
        worst = Math.max(worst, status);
        if (!stopping) {
          // One service gone means the pair cannot answer: take the other down too.
          log.error('service exited; stopping the other', { role, code, signal });
          stopAll('SIGTERM');
        }
        if (--left === 0) resolve(worst);
      });
    }
  });
}
