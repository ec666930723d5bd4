/**
 * Both services as child processes on loopback ports of the kernel's choosing, for the commands that
 * drive them end to end (`vlm demo`, `vlm bench load`, `vlm bench latency`): spawned, waited for until
 * each reports it is serving, stopped with SIGTERM (a graceful drain) and waited for.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import sharp from 'sharp';
import { CONFIG_FLAGS, configOptionOf, type ConfigOption, type ConfigSubset } from '../shared/config';
import { packageRoot } from '../shared/package-root';
import { VlmError } from '../shared/errors';
import { running } from './child-running';
import type { ServingMessage } from './serving-message';
import { freePort } from './free-port';
import { readItemImage, readItems, selectEvenly, type EvalItem } from './eval-items';

export interface ChildServices {
  readonly visionPort: number;
  readonly languagePort: number;
  readonly vision: ChildProcess;
  readonly language: ChildProcess;
  /** SIGTERM to each still running, then waits until both have exited. */
  stop(): Promise<void>;
}

export interface ChildServicesOptions {
  readonly modelDir: string;
  /** More `vlm serve` flags for both (the ports, host, model, log level and metrics port are set here). */
  readonly flags?: readonly string[];
  readonly env?: NodeJS.ProcessEnv;
  /** How long each may take to report SERVING. */
  readonly startTimeoutMs?: number;
}

/**
 * Settings these commands choose for the services they start, so a user's value for one would be
 * dropped: loopback and free ports (two services given one --health-port would collide), their log
 * level, and plaintext (the command's own client dials them without TLS). --model is read by the
 * command and passed on.
 */
const CHOSEN_HERE: ReadonlySet<ConfigOption> = new Set<ConfigOption>([
  'host', 'vision-port', 'language-port', 'health-port', 'metrics-port', 'vision-target', 'log-level',
  'tls-cert', 'tls-key', 'tls-ca', 'tls-client-names', 'vision-client-cert', 'vision-client-key', 'vision-ca', 'vision-server-name',
]);

/** The config flags of a command that starts both services (demo, bench latency, bench load). */
export const CHILD_SERVICES_CONFIG: ConfigSubset = {
  keys: (Object.keys(CONFIG_FLAGS) as ConfigOption[]).filter((k) => !CHOSEN_HERE.has(k)),
  othersAre: 'is chosen by this command for the services it starts (plaintext, on free loopback ports)',
};

/**
 * The config flags of a command line, to pass on to both services (--provider, --workers,
 * --queue-size, ...), less the ones set here. `ownFlags`: the command's other flags, so their values
 * are skipped rather than read as flags.
 */
export function serveFlags(argv: readonly string[], ownFlags: Readonly<Record<string, { type: string }>>): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const name = arg.replace(/^--/, '').split('=')[0]!;
    const spec = (CONFIG_FLAGS as Record<string, { type: string }>)[name] ?? ownFlags[name];
    const value = spec?.type === 'string' && !arg.includes('=') ? argv[++i] : undefined;
    // A switch turned off (--no-warmup) is passed on as written.
    const option = configOptionOf(name);
    if (option !== undefined && option !== 'model' && !CHOSEN_HERE.has(option)) out.push(arg, ...(value === undefined ? [] : [value]));
  }
  return out;
}

/** How long a stop waits for a child's drain before killing it (a child still loading may not exit on SIGTERM). */
const STOP_KILL_MS = 30_000;

/**
 * Spawns `vlm serve <role>` with an IPC channel; `serving` resolves with the port it bound once it
 * says it is serving (cli/serving-message.ts), and rejects after `timeoutMs`. Its exit is the caller's
 * to watch.
 */
function startChild(args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs: number): { child: ChildProcess; serving: Promise<number> } {
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const serving = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.off('message', onMessage);
      reject(new VlmError('DEADLINE_EXCEEDED', `${args[2]} was not serving within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const onMessage = (msg: ServingMessage): void => {
      if (msg?.type !== 'serving') return;
      clearTimeout(timer);
      child.off('message', onMessage);
      // The channel would keep this process alive after the command is done.
      if (child.connected) child.disconnect();
      resolve(msg.port);
    };
    child.on('message', onMessage);
    child.once('exit', () => clearTimeout(timer));
  });
  return { child, serving };
}

/**
 * Starts vision and language side by side (each load can take minutes on a GPU); resolves once both
 * are serving, or stops them and rejects when either exits, or is not serving in time. Language binds
 * port 0 and reports it; vision's port is picked here, since language must be told it before vision
 * has bound it.
 */
export async function startChildServices(o: ChildServicesOptions): Promise<ChildServices> {
  const bin = path.join(packageRoot(), 'bin', 'vlm.js');
  // Throwaway processes: no Prometheus endpoint, which would collide with a running `npm start` on the default port.
  const common = ['--model', o.modelDir, '--host', '127.0.0.1', '--log-level', 'warn', '--metrics-port', '0', ...(o.flags ?? [])];
  const env = o.env ?? process.env;
  const timeoutMs = o.startTimeoutMs ?? 180_000;
  const picked = await freePort();
  const vision = startChild([bin, 'serve', 'vision', ...common, '--vision-port', String(picked)], env, timeoutMs);
  const language = startChild([bin, 'serve', 'language', ...common, '--language-port', '0', '--vision-target', `127.0.0.1:${picked}`], env, timeoutMs);
  const children = [vision.child, language.child];
  // A command that exits without stop() (process.exit on a second Ctrl-C, an uncaught error) must not
  // leave the services holding their ports: 'exit' allows only synchronous work, and kill() is.
  const killLeft = (): void => {
    for (const c of children) if (running(c)) c.kill('SIGKILL');
  };
  process.on('exit', killLeft);
  const stop = async (): Promise<void> => {
    const killAfter = setTimeout(killLeft, STOP_KILL_MS);
    for (const c of children) if (running(c)) c.kill('SIGTERM');
    await Promise.all(children.map((c) => (running(c) ? new Promise((r) => c.once('exit', r)) : undefined)));
    clearTimeout(killAfter);
    process.off('exit', killLeft);
  };
  // Either child exiting before both serve ends the start (vision failing to bind its port among them).
  let onExit: () => void = () => undefined;
  const exited = new Promise<never>((_, reject) => (onExit = () => reject(new VlmError('UNAVAILABLE', 'a service exited during start-up (see its log above)'))));
  for (const c of children) c.once('exit', onExit);
  const both = Promise.all([vision.serving, language.serving]);
  // Whichever loses the race below may still reject (a stop makes the children exit): not unhandled.
  both.catch(() => undefined);
  exited.catch(() => undefined);
  try {
    const [visionPort, languagePort] = await Promise.race([both, exited]);
    return { visionPort, languagePort, vision: vision.child, language: language.child, stop };
  } catch (err) {
    await stop();
    throw err;
  } finally {
    for (const c of children) c.off('exit', onExit);
  }
}

/** The image for a bundle without eval items (a random-weight fixture): a red circle on white. */
export function generatedImage(): Promise<Buffer> {
  const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="96" height="64"><rect width="96" height="64" fill="#fff"/><circle cx="30" cy="30" r="12" fill="#d22"/></svg>';
  return sharp(Buffer.from(svg)).png().toBuffer();
}

/** The `type` of the one question a bundle without evaluation items gets (see questionItems). */
export const GENERATED_QUESTION_TYPE = 'generated';

/**
 * `count` of the bundle's evaluation items taken evenly across types, each with its image bytes; a
 * bundle without any (a random-weight fixture) gets one question about a generated image.
 */
export async function questionItems(modelDir: string, count: number): Promise<Array<EvalItem & { bytes: Buffer }>> {
  if (existsSync(path.join(modelDir, 'eval', 'items.jsonl'))) {
    const items = selectEvenly(await readItems(modelDir), count);
    return Promise.all(items.map(async (it) => ({ ...it, bytes: await readItemImage(modelDir, it) })));
  }
  const bytes = await generatedImage();
  return [{ image: '(generated)', question: 'What color is the circle?', answer: '', type: GENERATED_QUESTION_TYPE, bytes }];
}
