/**
 * Configuration: command-line flags and VLM_* environment variables, parsed once into a frozen Config
 * with one section per concern. A flag wins over its variable, the variable over the default.
 *
 * To add an option: a field in its section's interface, a flag in CONFIG_FLAGS, one line in that
 * section's reader. Constructors take the section they need (`config.runtime`), not the whole object.
 */
import { availableParallelism } from 'node:os';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { VlmError } from './errors';
import type { LogLevel } from './log';

export type ProviderSpec =
  | { readonly kind: 'cpu' }
  | { readonly kind: 'cuda'; readonly deviceId: number }
  | { readonly kind: 'webgpu' };

export type GraphOptimization = 'disabled' | 'basic' | 'extended' | 'all';

export interface ModelConfig {
  /** Bundle folder (absolute). */
  readonly dir: string;
  /** Recompute every file's sha256 at load (slow for 7B bundles; sizes are always checked). */
  readonly verifyHashes: boolean;
  /** Open every ONNX session at load instead of on first use. */
  readonly eagerSessions: boolean;
}

export interface RuntimeConfig {
  /** Tried in order; the first that opens a session wins and the fallback is logged. */
  readonly providers: readonly ProviderSpec[];
  /** ONNX Runtime intra-op threads per session; 0 = cores / workers. */
  readonly intraOpThreads: number;
  readonly interOpThreads: number;
  readonly graphOptimization: GraphOptimization;
  /** Let ORT's idle intra-op threads spin (lower latency on a dedicated machine; off by default). */
  readonly spinning: boolean;
  /** Worker threads of an InferencePool, each with its own copy of the model. */
  readonly workers: number;
}

export interface LimitsConfig {
  readonly maxImageBytes: number;
  /** width x height x pages, checked from the header before decoding. */
  readonly maxImagePixels: number;
  /** Longer side / shorter side, checked from the header: a 1x100000 strip is no picture to answer about. */
  readonly maxAspectRatio: number;
  readonly maxPromptChars: number;
  /** Requests waiting for a worker beyond the ones running; more is RESOURCE_EXHAUSTED. */
  readonly queueSize: number;
  readonly deadlineMs: number;
  /** Upper bound on a request's max_new_tokens. */
  readonly maxNewTokens: number;
}

export interface ServicesConfig {
  readonly host: string;
  readonly visionPort: number;
  readonly languagePort: number;
  /** A second, plaintext port answering only grpc.health.v1 (kubelet gRPC probes cannot speak TLS); 0 = off. */
  readonly healthPort: number;
}

/**
 * TLS from PEM files (re-read every `reloadIntervalMs` and on SIGHUP). A service speaks TLS when its
 * certificate and key are set, plaintext otherwise; a CA on the server makes client certificates
 * required (mutual TLS). The vision fields are the language service's side of the hop to vision.
 */
export interface TlsConfig {
  readonly certFile: string | null;
  readonly keyFile: string | null;
  /** CA that client certificates must chain to; set: clients without one are refused in the handshake. */
  readonly caFile: string | null;
  /** Language -> vision: the client certificate and key presented to vision. */
  readonly visionClientCertFile: string | null;
  readonly visionClientKeyFile: string | null;
  /** Language -> vision: the CA vision's certificate is verified against; set (or a client certificate): the hop uses TLS. */
  readonly visionCaFile: string | null;
  readonly reloadIntervalMs: number;
}

/** The gRPC shells (services/): the vision hop, chunking, auth and shutdown. */
export interface RpcConfig {
  /**
   * Where the language service finds vision: one address, a comma-separated list (balanced
   * round-robin on the client) or any gRPC target such as dns:///vision.vlm.svc:50051.
   * Empty: 127.0.0.1:<vision port>.
   */
  readonly visionTarget: string;
  /** Rows per tensor chunk on the vision hop; 0: about 1 MiB per chunk. */
  readonly rowsPerChunk: number;
  /** Bearer token clients must send (also sent on the vision hop); null: no authentication. From VLM_AUTH_TOKEN or --auth-token-file, never a flag value. */
  readonly authToken: string | null;
  /** SIGTERM: how long calls in flight may finish before they are cancelled. */
  readonly shutdownGraceMs: number;
  /** Run a worst-case dummy request before reporting SERVING. */
  readonly warmup: boolean;
  /** Concurrent calls one client connection may hold open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxConcurrentStreams: number;
  /**
   * Vision only: connections are closed (GOAWAY) after this long, so language pods re-resolve the
   * vision DNS name and spread onto replicas added by a scale-up; 0 = never.
   */
  readonly maxConnectionAgeMs: number;
}

export interface TelemetryConfig {
  /** Prometheus scrape port; 0 = off. */
  readonly metricsPort: number;
}

export interface Config {
  readonly model: ModelConfig;
  readonly runtime: RuntimeConfig;
  readonly limits: LimitsConfig;
  readonly services: ServicesConfig;
  readonly telemetry: TelemetryConfig;
  readonly rpc: RpcConfig;
  readonly tls: TlsConfig;
  readonly logLevel: LogLevel;
}

/** Flags every `vlm` subcommand accepts (util.parseArgs format); subcommands add their own. */
export const CONFIG_FLAGS = {
  model: { type: 'string' },
  'verify-hashes': { type: 'boolean' },
  'eager-sessions': { type: 'boolean' },
  provider: { type: 'string' },
  device: { type: 'string' },
  'intra-op-threads': { type: 'string' },
  'inter-op-threads': { type: 'string' },
  'graph-optimization': { type: 'string' },
  spinning: { type: 'boolean' },
  workers: { type: 'string' },
  'max-image-bytes': { type: 'string' },
  'max-image-pixels': { type: 'string' },
  'max-aspect-ratio': { type: 'string' },
  'max-prompt-chars': { type: 'string' },
  'queue-size': { type: 'string' },
  'deadline-ms': { type: 'string' },
  'max-new-tokens-limit': { type: 'string' },
  host: { type: 'string' },
  'vision-port': { type: 'string' },
  'language-port': { type: 'string' },
  'metrics-port': { type: 'string' },
  'vision-target': { type: 'string' },
  'rows-per-chunk': { type: 'string' },
  'auth-token-file': { type: 'string' },
  'shutdown-grace-ms': { type: 'string' },
  warmup: { type: 'boolean' },
  'max-concurrent-streams': { type: 'string' },
  'max-connection-age-ms': { type: 'string' },
  'health-port': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-ca': { type: 'string' },
  'vision-client-cert': { type: 'string' },
  'vision-client-key': { type: 'string' },
  'vision-ca': { type: 'string' },
  'tls-reload-ms': { type: 'string' },
  'log-level': { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

type Values = Readonly<Record<string, string | boolean | undefined>>;
type Env = Readonly<Record<string, string | undefined>>;

/** The folder holding this package's package.json, found from this file (works from src and dist). */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'vlm-token-reduction') return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new VlmError('INTERNAL', `package root not found above ${__dirname}`);
    dir = up;
  }
}

export const DEFAULT_MODEL = 'models/tiny-llava-shapes';

/** Builds the Config from parsed flag values and the environment. */
export function configFrom(values: Values, env: Env = process.env): Config {
  const r = new Reader(values, env);
  const cores = availableParallelism();
  const workers = r.int('workers', 'VLM_WORKERS', 1, 1);
  const config: Config = {
    model: {
      dir: path.resolve(r.str('model', 'VLM_MODEL_DIR', path.join(packageRoot(), DEFAULT_MODEL))),
      verifyHashes: r.bool('verify-hashes', 'VLM_VERIFY_HASHES', false),
      eagerSessions: r.bool('eager-sessions', 'VLM_EAGER_SESSIONS', false),
    },
    runtime: {
      providers: parseProviders(r.str('provider', 'VLM_PROVIDER', 'cpu'), r.str('device', 'VLM_DEVICE', '')),
      intraOpThreads: r.int('intra-op-threads', 'VLM_INTRA_OP_THREADS', 0, 0) || Math.max(1, Math.floor(cores / workers)),
      interOpThreads: r.int('inter-op-threads', 'VLM_INTER_OP_THREADS', 1, 1),
      graphOptimization: r.oneOf('graph-optimization', 'VLM_GRAPH_OPTIMIZATION', 'all', ['disabled', 'basic', 'extended', 'all'] as const),
      spinning: r.bool('spinning', 'VLM_SPINNING', false),
      workers,
    },
    limits: {
      maxImageBytes: r.int('max-image-bytes', 'VLM_MAX_IMAGE_BYTES', 20 * 1024 * 1024, 1),
      maxImagePixels: r.int('max-image-pixels', 'VLM_MAX_IMAGE_PIXELS', 40_000_000, 1),
      maxAspectRatio: r.int('max-aspect-ratio', 'VLM_MAX_ASPECT_RATIO', 32, 1),
      maxPromptChars: r.int('max-prompt-chars', 'VLM_MAX_PROMPT_CHARS', 4096, 1),
      queueSize: r.int('queue-size', 'VLM_QUEUE_SIZE', 16, 0),
      deadlineMs: r.int('deadline-ms', 'VLM_DEADLINE_MS', 60_000, 1),
      maxNewTokens: r.int('max-new-tokens-limit', 'VLM_MAX_NEW_TOKENS', 256, 1),
    },
    services: {
      host: r.str('host', 'VLM_HOST', '0.0.0.0'),
      visionPort: r.int('vision-port', 'VLM_VISION_PORT', 50051, 0),
      languagePort: r.int('language-port', 'VLM_LANGUAGE_PORT', 50052, 0),
      healthPort: r.int('health-port', 'VLM_HEALTH_PORT', 0, 0),
    },
    telemetry: {
      metricsPort: r.int('metrics-port', 'VLM_METRICS_PORT', 9464, 0),
    },
    rpc: {
      visionTarget: r.str('vision-target', 'VLM_VISION_TARGET', ''),
      rowsPerChunk: r.int('rows-per-chunk', 'VLM_ROWS_PER_CHUNK', 0, 0),
      authToken: readAuthToken(r.str('auth-token-file', 'VLM_AUTH_TOKEN_FILE', ''), env.VLM_AUTH_TOKEN),
      shutdownGraceMs: r.int('shutdown-grace-ms', 'VLM_SHUTDOWN_GRACE_MS', 10_000, 0),
      warmup: r.bool('warmup', 'VLM_WARMUP', true),
      maxConcurrentStreams: r.int('max-concurrent-streams', 'VLM_MAX_CONCURRENT_STREAMS', 100, 1),
      maxConnectionAgeMs: r.int('max-connection-age-ms', 'VLM_MAX_CONNECTION_AGE_MS', 300_000, 0),
    },
    tls: readTls(r),
    logLevel: r.oneOf('log-level', 'VLM_LOG_LEVEL', 'info', ['debug', 'info', 'warn', 'error', 'silent'] as const),
  };
  return deepFreeze(config);
}

/** Whether the operator chose the intra-op thread count (flag or env), so a launcher must not pick one. */
export function intraOpThreadsChosen(values: Readonly<Record<string, unknown>>, env: Env = process.env): boolean {
  return values['intra-op-threads'] !== undefined || !!env.VLM_INTRA_OP_THREADS;
}

/** Whether the operator chose the worker count (flag or env). */
export function workersChosen(values: Readonly<Record<string, unknown>>, env: Env = process.env): boolean {
  return values['workers'] !== undefined || !!env.VLM_WORKERS;
}

/**
 * The environment for `services` service processes started on this host: each gets an equal share
 * of the cores as its intra-op threads (each would otherwise take them all and oversubscribe),
 * unless the operator chose a count, which the children then read themselves.
 */
export function coLocatedServiceEnv(values: Values, services: number, env: Env = process.env): Record<string, string | undefined> {
  if (intraOpThreadsChosen(values, env)) return { ...env };
  return { ...env, VLM_INTRA_OP_THREADS: String(Math.max(1, Math.floor(availableParallelism() / services))) };
}

/**
 * Parses a command line: config flags plus the subcommand's own. Unknown flags are INVALID_ARGUMENT
 * (a typo must not silently fall back to a default).
 */
export function parseCommandLine<O extends NonNullable<ParseArgsConfig['options']>>(
  argv: readonly string[],
  extra: O,
  env: Env = process.env,
): { config: Config; values: Values; positionals: string[] } {
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: { ...CONFIG_FLAGS, ...extra }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', (err as Error).message);
  }
  const values = parsed.values as Values;
  return { config: configFrom(values, env), values, positionals: parsed.positionals };
}

type DeepPartial<T> = { -readonly [K in keyof T]?: T[K] extends readonly unknown[] ? T[K] : T[K] extends object ? DeepPartial<T[K]> : T[K] };

/** Defaults plus the test environment (VLM_INTRA_OP_THREADS=1 under vitest), with overrides per section. */
export function testConfig(overrides: DeepPartial<Config> = {}): Config {
  const base = configFrom({}, process.env);
  const merged: Record<string, unknown> = {};
  for (const [section, value] of Object.entries(base)) {
    const o = (overrides as Record<string, unknown>)[section];
    merged[section] = typeof value === 'object' && value !== null && o !== undefined ? { ...value, ...(o as object) } : (o ?? value);
  }
  if (overrides.model?.dir) (merged.model as { dir: string }).dir = path.resolve(overrides.model.dir);
  return deepFreeze(merged as unknown as Config);
}

/** Certificate and key come as a pair; a CA without a certificate would be a server without TLS asking for client certificates. */
function readTls(r: Reader): TlsConfig {
  const file = (flag: string, envName: string): string | null => {
    const v = r.str(flag, envName, '');
    return v === '' ? null : path.resolve(v);
  };
  const tls: TlsConfig = {
    certFile: file('tls-cert', 'VLM_TLS_CERT'),
    keyFile: file('tls-key', 'VLM_TLS_KEY'),
    caFile: file('tls-ca', 'VLM_TLS_CA'),
    visionClientCertFile: file('vision-client-cert', 'VLM_VISION_CLIENT_CERT'),
    visionClientKeyFile: file('vision-client-key', 'VLM_VISION_CLIENT_KEY'),
    visionCaFile: file('vision-ca', 'VLM_VISION_CA'),
    reloadIntervalMs: r.int('tls-reload-ms', 'VLM_TLS_RELOAD_MS', 60_000, 100),
  };
  if ((tls.certFile === null) !== (tls.keyFile === null)) throw VlmError.invalid('--tls-cert/--tls-key', 'set both VLM_TLS_CERT and VLM_TLS_KEY, or neither (plaintext)');
  if (tls.caFile !== null && tls.certFile === null) throw VlmError.invalid('--tls-ca', 'requiring client certificates needs TLS: set VLM_TLS_CERT and VLM_TLS_KEY too');
  if ((tls.visionClientCertFile === null) !== (tls.visionClientKeyFile === null)) {
    throw VlmError.invalid('--vision-client-cert/--vision-client-key', 'set both VLM_VISION_CLIENT_CERT and VLM_VISION_CLIENT_KEY, or neither');
  }
  return tls;
}

/** A token file wins over VLM_AUTH_TOKEN; surrounding whitespace (a trailing newline) is not part of it. */
function readAuthToken(file: string, fromEnv: string | undefined): string | null {
  if (file !== '') {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new VlmError('INVALID_ARGUMENT', `--auth-token-file: cannot read ${file}: ${(err as Error).message}`);
    }
    const token = text.trim();
    if (token === '') throw VlmError.invalid('--auth-token-file', `${file} is empty`);
    return token;
  }
  const token = fromEnv?.trim() ?? '';
  return token === '' ? null : token;
}

/** `cpu`, `cuda`, `cuda:1`, `webgpu`, comma-separated in fallback order. A lone GPU provider gets `cpu` appended. */
export function parseProviders(spec: string, device = ''): ProviderSpec[] {
  const out: ProviderSpec[] = [];
  for (const raw of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [kind, id] = raw.split(':');
    if (kind === 'cpu' && id === undefined) out.push({ kind: 'cpu' });
    else if (kind === 'webgpu' && id === undefined) out.push({ kind: 'webgpu' });
    else if (kind === 'cuda') {
      const deviceId = Number(id ?? (device || '0'));
      if (!Number.isInteger(deviceId) || deviceId < 0) throw VlmError.invalid('provider', `bad CUDA device in "${raw}"; use cuda:<id>`);
      out.push({ kind: 'cuda', deviceId });
    } else throw VlmError.invalid('provider', `unknown execution provider "${raw}"; use cpu, cuda:<id> or webgpu (comma-separated for a fallback order)`);
  }
  if (out.length === 0) throw VlmError.invalid('provider', 'no execution provider given');
  if (out.length === 1 && out[0]!.kind !== 'cpu') out.push({ kind: 'cpu' });
  return out;
}

export function providerName(p: ProviderSpec): string {
  return p.kind === 'cuda' ? `cuda:${p.deviceId}` : p.kind;
}

class Reader {
  constructor(
    private readonly values: Values,
    private readonly env: Env,
  ) {}

  private raw(flag: string, envName: string): { value: string | boolean; from: string } | undefined {
    const v = this.values[flag];
    if (v !== undefined) return { value: v, from: `--${flag}` };
    const e = this.env[envName];
    if (e !== undefined && e !== '') return { value: e, from: envName };
    return undefined;
  }

  str(flag: string, envName: string, dflt: string): string {
    const r = this.raw(flag, envName);
    return r === undefined ? dflt : String(r.value);
  }

  bool(flag: string, envName: string, dflt: boolean): boolean {
    const r = this.raw(flag, envName);
    if (r === undefined) return dflt;
    if (typeof r.value === 'boolean') return r.value;
    if (/^(1|true|yes|on)$/i.test(r.value)) return true;
    if (/^(0|false|no|off)$/i.test(r.value)) return false;
    throw VlmError.invalid(r.from, `expected a boolean, got "${r.value}"`);
  }

  int(flag: string, envName: string, dflt: number, min: number): number {
    const r = this.raw(flag, envName);
    if (r === undefined) return dflt;
    const n = Number(r.value);
    if (!Number.isInteger(n) || n < min) throw VlmError.invalid(r.from, `expected an integer >= ${min}, got "${String(r.value)}"`);
    return n;
  }

  oneOf<T extends string>(flag: string, envName: string, dflt: T, allowed: readonly T[]): T {
    const v = this.str(flag, envName, dflt);
    if (!(allowed as readonly string[]).includes(v)) throw VlmError.invalid(`--${flag}`, `expected one of ${allowed.join(', ')}, got "${v}"`);
    return v as T;
  }
}

function deepFreeze<T>(o: T): T {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}
