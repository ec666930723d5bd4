/**
 * Configuration: command-line flags and VLM_* environment variables, parsed once into a frozen Config
 * with one section per concern. A flag wins over its variable, the variable over the default.
 *
 * To add an option: a field in its section's interface, a row in CONFIG_OPTIONS (flag, variable,
 * default, bounds, help), one line in that section's reader. Constructors take the section they
 * need (`config.runtime`), not the whole object.
 */
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { VlmError } from './errors';
import { envToken, readTokenFile, type AuthTokens } from './auth-tokens';
import type { LogLevel } from './log';
import { packageRoot } from './package-root';

export type ProviderSpec =
  | { readonly kind: 'cpu' }
  | { readonly kind: 'cuda'; readonly deviceId: number }
  | { readonly kind: 'webgpu' };

export type GraphOptimization = 'disabled' | 'basic' | 'extended' | 'all';

export interface ModelConfig {
  /** Bundle folder (absolute). */
  readonly dir: string;
  /**
   * The manifest content_hash the operator pinned (`sha256:<hex>`); a bundle with another one fails
   * the load, so a pod pointed at the wrong or a replaced folder never becomes Ready. null: any.
   */
  readonly expectedHash: string | null;
  /** Recompute every file's sha256 at load (slow for 7B bundles; sizes are always checked). */
  readonly verifyHashes: boolean;
  /** Open every ONNX session at load instead of on first use. */
  readonly eagerSessions: boolean;
}

export interface RuntimeConfig {
  /** Tried in order; the first that opens a session wins and the fallback is logged. One entry: no fallback. */
  readonly providers: readonly ProviderSpec[];
  /** A service's own providers over `providers` (two services on one host, a device each); null: `providers`. */
  readonly serviceProviders: Readonly<Record<'vision' | 'language', readonly ProviderSpec[] | null>>;
  /** ONNX Runtime intra-op threads per session; 0 = cores / workers. */
  readonly intraOpThreads: number;
  readonly interOpThreads: number;
  readonly graphOptimization: GraphOptimization;
  /** Let ORT's idle intra-op threads spin (lower latency on a dedicated machine; off by default). */
  readonly spinning: boolean;
  /** Worker threads of an InferencePool, each with its own copy of the model. */
  readonly workers: number;
  /**
   * How long a worker may go without answering after its request was stopped before it counts as
   * stuck (a model call that never returns); with every worker stuck the service says NOT_SERVING
   * and the liveness probe restarts it. 0 = never.
   */
  readonly stuckWorkerMs: number;
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
  /** The deadline of a call that carries none. */
  readonly deadlineMs: number;
  /**
   * The longest a call may run, whatever deadline it carries: a longer one ends DEADLINE_EXCEEDED
   * here. Also how long an aged-out connection waits for its calls, so none is cut off by the
   * transport (a bare RST_STREAM reads to the client as an INTERNAL the service never sent).
   */
  readonly maxDeadlineMs: number;
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
  /**
   * With caFile: the names a client certificate may carry (a DNS subject alternative name, or the
   * subject common name of one without alternative names); a certificate from the CA naming none of
   * them is PERMISSION_DENIED.
   * Empty: any certificate the CA issued (a CA of this deployment's own).
   */
  readonly clientNames: readonly string[];
  /** Language -> vision: the client certificate and key presented to vision. */
  readonly visionClientCertFile: string | null;
  readonly visionClientKeyFile: string | null;
  /** Language -> vision: the CA vision's certificate is verified against; set (or a client certificate): the hop uses TLS. */
  readonly visionCaFile: string | null;
  /**
   * Language -> vision: the name every vision certificate must carry, checked instead of the target's
   * host (for a list of IPs grpc-js checks every replica against the first one). null: the host.
   */
  readonly visionServerName: string | null;
  readonly reloadIntervalMs: number;
}

/** The gRPC shells (services/): the vision hop, chunking, auth and shutdown. */
export interface RpcConfig {
  /**
   * Where the language service finds vision: one address, a comma-separated list (balanced
   * round-robin on the client) or any gRPC target such as dns:///vision.vlm.svc:50051.
   * Empty: the vision service on this host (localAddress of host and vision port).
   */
  readonly visionTarget: string;
  /** Rows per tensor chunk on the vision hop; 0: about 1 MiB per chunk. */
  readonly rowsPerChunk: number;
  /**
   * The bearer tokens clients must send, any one of them (shared/auth-tokens.ts); null: no
   * authentication. From --auth-token-file (re-read while serving) or VLM_AUTH_TOKEN, never a flag value.
   */
  readonly auth: AuthTokens | null;
  /**
   * Language only: the token sent to vision (the file's first), from --vision-token-file; null: the
   * first of `auth`. Kept apart so vision, which parses untrusted images, need not hold client tokens.
   */
  readonly visionAuth: AuthTokens | null;
  /** SIGTERM: how long calls in flight may finish before they are cancelled. */
  readonly shutdownGraceMs: number;
  /** Run a worst-case dummy request before reporting SERVING. */
  readonly warmup: boolean;
  /** Concurrent calls one client connection may hold open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxConcurrentStreams: number;
  /** Calls one service holds at once (received, queued, running, on the hop) before refusing more; 0: no limit. */
  readonly maxInFlightCalls: number;
  /**
   * Both services close connections (GOAWAY) after this long, so clients re-resolve the DNS name (the
   * language pods for vision, backend apps for language) and spread onto replicas added by a
   * scale-up; 0 = never.
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

/** Timers (setTimeout) and gRPC's integer channel options take at most a signed 32-bit count. */
const INT32_MAX = 2 ** 31 - 1;
export const MAX_PORT = 65_535;
const PORT = { min: 0, max: MAX_PORT } as const;
/** Threads and workers: far above any machine's cores, low enough to catch a typo (a port, a byte count). */
const THREADS = 1024;

export const DEFAULT_MODEL = 'models/tiny-llava-shapes';

interface OptionBase {
  readonly env: string;
  readonly help: string;
  /** The value's placeholder in `--help` (N, DIR, ...). */
  readonly arg?: string;
  /** What `--help` shows as the default when the raw default says nothing (a computed one). */
  readonly shown?: string;
}
export type OptionSpec =
  | (OptionBase & { readonly type: 'string'; readonly default: string; readonly choices?: readonly string[] })
  | (OptionBase & { readonly type: 'int'; readonly default: number; readonly min: number; readonly max: number })
  | (OptionBase & { readonly type: 'boolean'; readonly default: boolean });

/**
 * Every config option: its flag (the key), variable, default, bounds and help. configFrom reads
 * through this table and `vlm <command> --help` prints it, so neither can drift from the other.
 */
export const CONFIG_OPTIONS = {
  model: { type: 'string', env: 'VLM_MODEL_DIR', default: DEFAULT_MODEL, arg: 'DIR', shown: `${DEFAULT_MODEL} (in the package)`, help: 'the model bundle folder' },
  'model-hash': { type: 'string', env: 'VLM_MODEL_HASH', default: '', arg: 'sha256:HEX', shown: 'any', help: "refuse to start unless the bundle's manifest content_hash is this" },
  'verify-hashes': { type: 'boolean', env: 'VLM_VERIFY_HASHES', default: false, help: "recompute every bundle file's sha256 at load (reads the bundle twice; sizes are always checked)" },
  'eager-sessions': { type: 'boolean', env: 'VLM_EAGER_SESSIONS', default: false, help: 'open every ONNX session of the service\'s side (the methods\' scores graphs included) at load, and warm every worker with each method: no slow first request per method, and a device out of memory fails the start, not a request' },
  provider: { type: 'string', env: 'VLM_PROVIDER', default: 'cpu', arg: 'LIST', help: 'cpu, cuda:<id> or webgpu; a comma-separated list is a fallback order (cuda:0,cpu); a single provider never falls back' },
  'vision-provider': { type: 'string', env: 'VLM_VISION_PROVIDER', default: '', arg: 'LIST', shown: '--provider', help: 'the vision service\'s providers, over --provider: two services on one host with a GPU each (serve all --vision-provider cuda:0 --language-provider cuda:1)' },
  'language-provider': { type: 'string', env: 'VLM_LANGUAGE_PROVIDER', default: '', arg: 'LIST', shown: '--provider', help: 'the language service\'s providers, over --provider' },
  device: { type: 'string', env: 'VLM_DEVICE', default: '', arg: 'ID', shown: '0', help: 'CUDA device for a provider given as plain "cuda"' },
  'intra-op-threads': { type: 'int', env: 'VLM_INTRA_OP_THREADS', default: 0, min: 0, max: THREADS, arg: 'N', shown: 'cores / workers (serve all: cores / 2 / workers; eval and bench accuracy: 1)', help: 'ONNX Runtime threads per session; 0 = the default' },
  'inter-op-threads': { type: 'int', env: 'VLM_INTER_OP_THREADS', default: 1, min: 1, max: THREADS, arg: 'N', help: 'ONNX Runtime inter-op threads per session' },
  'graph-optimization': { type: 'string', env: 'VLM_GRAPH_OPTIMIZATION', default: 'all', choices: ['disabled', 'basic', 'extended', 'all'], arg: 'LEVEL', help: 'ONNX Runtime graph optimization level' },
  spinning: { type: 'boolean', env: 'VLM_SPINNING', default: false, help: "let ONNX Runtime's idle threads spin (a dedicated machine only)" },
  'stuck-worker-ms': { type: 'int', env: 'VLM_STUCK_WORKER_MS', default: 60_000, min: 0, max: INT32_MAX, arg: 'MS', shown: '60000 (0 = never)', help: 'a worker that has not answered this long after its request was stopped (cancelled, past its deadline) counts as stuck in a model call; with every worker stuck the service reports NOT_SERVING, so the liveness probe restarts it' },
  workers: { type: 'int', env: 'VLM_WORKERS', default: 1, min: 1, max: 256, arg: 'N', shown: '1 (eval and bench accuracy: one per core the intra-op threads leave)', help: 'inference worker threads, each with its own copy of the model' },
  // At most 1000 MiB: the transport's receive limit (twice this, the prompt and an envelope:
  // message-limits.ts) must stay a 32-bit gRPC length at every option's maximum.
  // At least 64 KiB: the vision service's warm-up image (a few kB, vision/server.ts) must pass it.
  'max-image-bytes': { type: 'int', env: 'VLM_MAX_IMAGE_BYTES', default: 20 * 1024 * 1024, min: 64 * 1024, max: 1000 * 1024 * 1024, arg: 'N', help: 'largest image accepted, in bytes (the transport limit sits above it)' },
  'max-image-pixels': { type: 'int', env: 'VLM_MAX_IMAGE_PIXELS', default: 40_000_000, min: 1, max: INT32_MAX, arg: 'N', help: 'largest width x height x pages, checked from the header before decoding' },
  'max-aspect-ratio': { type: 'int', env: 'VLM_MAX_ASPECT_RATIO', default: 32, min: 1, max: 1_000_000, arg: 'N', help: 'largest longer side / shorter side' },
  'max-prompt-chars': { type: 'int', env: 'VLM_MAX_PROMPT_CHARS', default: 4096, min: 1, max: 1_000_000, arg: 'N', help: 'longest question' },
  'queue-size': { type: 'int', env: 'VLM_QUEUE_SIZE', default: 16, min: 0, max: 100_000, arg: 'N', help: 'requests waiting for a worker before RESOURCE_EXHAUSTED' },
  'deadline-ms': { type: 'int', env: 'VLM_DEADLINE_MS', default: 60_000, min: 1, max: INT32_MAX, arg: 'MS', help: 'deadline for calls that carry none' },
  'max-deadline-ms': { type: 'int', env: 'VLM_MAX_DEADLINE_MS', default: 600_000, min: 1, max: INT32_MAX, arg: 'MS', help: "the longest a call may run, whatever deadline it carries (at least --deadline-ms; unset, it rises to a longer --deadline-ms); a connection aged out by --max-connection-age-ms waits for its calls that long, plus --deadline-ms for a request still arriving and 5 s for a slow reader" },
  'max-new-tokens-limit': { type: 'int', env: 'VLM_MAX_NEW_TOKENS', default: 256, min: 1, max: 1_000_000, arg: 'N', help: "upper bound on a request's max_new_tokens" },
  host: { type: 'string', env: 'VLM_HOST', default: '0.0.0.0', arg: 'ADDR', help: 'listen address, of /metrics and the health port too (serve all: vision, its /metrics and health port listen on loopback whatever this is)' },
  'vision-port': { type: 'int', env: 'VLM_VISION_PORT', default: 50051, ...PORT, arg: 'PORT', help: "vision's gRPC port (0 = any free port)" },
  'language-port': { type: 'int', env: 'VLM_LANGUAGE_PORT', default: 50052, ...PORT, arg: 'PORT', help: "language's gRPC port (0 = any free port)" },
  'health-port': { type: 'int', env: 'VLM_HEALTH_PORT', default: 0, ...PORT, arg: 'PORT', help: 'a second, plaintext port answering only grpc.health.v1 (0 = off; serve all gives language the next one)' },
  'metrics-port': { type: 'int', env: 'VLM_METRICS_PORT', default: 9464, ...PORT, arg: 'PORT', help: 'Prometheus /metrics (0 = off; serve all gives language the next one)' },
  'vision-target': { type: 'string', env: 'VLM_VISION_TARGET', default: '', arg: 'TARGET', shown: 'vision on this host (--host, --vision-port)', help: 'where language finds vision: an address, a comma-separated list, or dns:///name:port' },
  'rows-per-chunk': { type: 'int', env: 'VLM_ROWS_PER_CHUNK', default: 0, min: 0, max: 1_000_000, arg: 'N', shown: '0 (about 1 MiB per chunk)', help: 'rows per tensor chunk on the vision hop' },
  'auth-token-file': { type: 'string', env: 'VLM_AUTH_TOKEN_FILE', default: '', arg: 'FILE', shown: 'off', help: 'the bearer tokens clients must send, one a line as NAME TOKEN (a single one may stand alone), any one accepted and, without --vision-token-file, the first sent to vision; re-read like the TLS files (a single token may come in VLM_AUTH_TOKEN; the file wins)' },
  'vision-token-file': { type: 'string', env: 'VLM_VISION_TOKEN_FILE', default: '', arg: 'FILE', shown: 'the first token of --auth-token-file', help: 'language: the bearer token sent to vision (the first of the file, same format), apart from the tokens clients send, so vision need not hold them; re-read like the TLS files' },
  'shutdown-grace-ms': { type: 'int', env: 'VLM_SHUTDOWN_GRACE_MS', default: 10_000, min: 0, max: INT32_MAX, arg: 'MS', help: 'how long calls in flight may finish after SIGTERM' },
  warmup: { type: 'boolean', env: 'VLM_WARMUP', default: true, help: 'run a worst-case request before reporting SERVING (--no-warmup or VLM_WARMUP=false turns it off)' },
  'max-concurrent-streams': { type: 'int', env: 'VLM_MAX_CONCURRENT_STREAMS', default: 100, min: 1, max: INT32_MAX, arg: 'N', help: 'calls one client connection may hold open' },
  'max-inflight-calls': { type: 'int', env: 'VLM_MAX_INFLIGHT_CALLS', default: 0, min: 0, max: INT32_MAX, arg: 'N', shown: 'no limit', help: 'calls a service holds at once, over all connections, before refusing more with RESOURCE_EXHAUSTED at their headers: each may hold a request of up to the receive limit, so this bounds their memory; its last quarter is kept for authenticated callers below a fair share' },
  'max-connection-age-ms': { type: 'int', env: 'VLM_MAX_CONNECTION_AGE_MS', default: 300_000, min: 0, max: INT32_MAX, arg: 'MS', help: 'each service closes a connection (GOAWAY) after this long, so clients reconnect and spread over new replicas; calls in flight on it run to their end, which the connection waits for (see --max-deadline-ms) (0 = never)' },
  'tls-cert': { type: 'string', env: 'VLM_TLS_CERT', default: '', arg: 'FILE', shown: 'off', help: 'server certificate chain (PEM); with --tls-key the port speaks TLS only' },
  'tls-key': { type: 'string', env: 'VLM_TLS_KEY', default: '', arg: 'FILE', shown: 'off', help: 'server private key (PEM)' },
  'tls-ca': { type: 'string', env: 'VLM_TLS_CA', default: '', arg: 'FILE', shown: 'off', help: 'CA that client certificates must chain to (mutual TLS)' },
  'tls-client-names': { type: 'string', env: 'VLM_TLS_CLIENT_NAMES', default: '', arg: 'NAMES', shown: 'any', help: "with --tls-ca: comma-separated names one of which a client certificate must carry (a DNS name, or the common name of one without alternative names), so a CA shared with other workloads lets only these in" },
  'vision-client-cert': { type: 'string', env: 'VLM_VISION_CLIENT_CERT', default: '', arg: 'FILE', shown: 'off', help: 'language: client certificate presented to vision' },
  'vision-client-key': { type: 'string', env: 'VLM_VISION_CLIENT_KEY', default: '', arg: 'FILE', shown: 'off', help: 'language: its private key' },
  'vision-ca': { type: 'string', env: 'VLM_VISION_CA', default: '', arg: 'FILE', shown: 'off', help: "language: CA that vision's certificate is verified with (turns TLS on for the hop)" },
  'vision-server-name': { type: 'string', env: 'VLM_VISION_SERVER_NAME', default: '', arg: 'NAME', shown: "the target's host", help: "language: the name every vision certificate must carry (TLS; needed for a list of IPs unless each certificate carries every listed address)" },
  'tls-reload-ms': { type: 'int', env: 'VLM_TLS_RELOAD_MS', default: 60_000, min: 100, max: INT32_MAX, arg: 'MS', help: 'how often the certificate and token files are re-read (SIGHUP re-reads at once)' },
  'log-level': { type: 'string', env: 'VLM_LOG_LEVEL', default: 'info', choices: ['debug', 'info', 'warn', 'error', 'silent'], arg: 'LEVEL', help: 'log level' },
} as const satisfies Record<string, OptionSpec>;

export type ConfigOption = keyof typeof CONFIG_OPTIONS;

/** Flags every `vlm` subcommand accepts (util.parseArgs format); subcommands add their own. */
export const CONFIG_FLAGS = Object.fromEntries(
  Object.entries(CONFIG_OPTIONS).map(([flag, o]) => [flag, { type: o.type === 'boolean' ? 'boolean' : 'string' }]),
) as { readonly [K in ConfigOption]: { readonly type: (typeof CONFIG_OPTIONS)[K]['type'] extends 'boolean' ? 'boolean' : 'string' } };

/**
 * The config option a command-line flag name sets: itself, or the switch a `no-` form turns off
 * (`no-warmup`); undefined for a command's own flags.
 */
export function configOptionOf(flag: string): ConfigOption | undefined {
  if (flag in CONFIG_FLAGS) return flag as ConfigOption;
  const negated = flag.replace(/^no-/, '');
  return negated !== flag && CONFIG_OPTIONS[negated as ConfigOption]?.type === 'boolean' ? (negated as ConfigOption) : undefined;
}

/**
 * The config flags a command takes when not all of them, and what it tells a user who gives another:
 * a flag a command takes and then ignores would look like a setting that did nothing.
 */
export interface ConfigSubset {
  readonly keys: readonly ConfigOption[];
  /** Completes "--flag ...": why this command takes no such setting. */
  readonly othersAre: string;
}

type Values = Readonly<Record<string, string | boolean | undefined>>;
type Env = Readonly<Record<string, string | undefined>>;

/** Builds the Config from parsed flag values and the environment. */
export function configFrom(values: Values, env: Env = process.env): Config {
  const r = new Reader(values, env);
  const cores = availableParallelism();
  const workers = r.int('workers');
  const config: Config = {
    model: {
      dir: modelDir(r),
      expectedHash: readModelHash(r),
      verifyHashes: r.bool('verify-hashes'),
      eagerSessions: r.bool('eager-sessions'),
    },
    runtime: {
      providers: parseProviders(r.str('provider'), r.str('device')),
      serviceProviders: {
        vision: r.str('vision-provider') === '' ? null : parseProviders(r.str('vision-provider'), r.str('device'), '--vision-provider / VLM_VISION_PROVIDER'),
        language: r.str('language-provider') === '' ? null : parseProviders(r.str('language-provider'), r.str('device'), '--language-provider / VLM_LANGUAGE_PROVIDER'),
      },
      intraOpThreads: r.int('intra-op-threads') || Math.max(1, Math.floor(cores / workers)),
      interOpThreads: r.int('inter-op-threads'),
      graphOptimization: r.oneOf('graph-optimization'),
      spinning: r.bool('spinning'),
      workers,
      stuckWorkerMs: r.int('stuck-worker-ms'),
    },
    limits: {
      maxImageBytes: r.int('max-image-bytes'),
      maxImagePixels: r.int('max-image-pixels'),
      maxAspectRatio: r.int('max-aspect-ratio'),
      maxPromptChars: r.int('max-prompt-chars'),
      queueSize: r.int('queue-size'),
      deadlineMs: r.int('deadline-ms'),
      maxDeadlineMs: maxDeadline(r),
      maxNewTokens: r.int('max-new-tokens-limit'),
    },
    services: {
      host: listenHost(r),
      visionPort: r.int('vision-port'),
      languagePort: r.int('language-port'),
      healthPort: r.int('health-port'),
    },
    telemetry: {
      metricsPort: r.int('metrics-port'),
    },
    rpc: {
      visionTarget: r.str('vision-target'),
      rowsPerChunk: r.int('rows-per-chunk'),
      auth: readAuthTokens(r.str('auth-token-file'), env[AUTH_TOKEN_ENV]),
      visionAuth: r.str('vision-token-file') === '' ? null : readTokenFile(r.str('vision-token-file'), r.from('vision-token-file')),
      shutdownGraceMs: r.int('shutdown-grace-ms'),
      warmup: r.bool('warmup'),
      maxConcurrentStreams: r.int('max-concurrent-streams'),
      maxInFlightCalls: r.int('max-inflight-calls'),
      maxConnectionAgeMs: r.int('max-connection-age-ms'),
    },
    tls: readTls(r),
    logLevel: r.oneOf('log-level'),
  };
  return deepFreeze(config);
}

/**
 * A default deadline past the longest one would be cut short at every call that carries none: a
 * longest deadline set below it is refused, and the default longest rises to it.
 */
function maxDeadline(r: Reader): number {
  const max = r.int('max-deadline-ms');
  const deadline = r.int('deadline-ms');
  if (max >= deadline) return max;
  if (r.isSet('max-deadline-ms')) throw VlmError.invalid(r.from('max-deadline-ms'), `must be at least the default deadline (${r.from('deadline-ms')} ${deadline}), got ${max}`);
  return deadline;
}

/** The token itself, for deployments that inject secrets as variables; it has no flag (a flag value shows in `ps`). */
export const AUTH_TOKEN_ENV = 'VLM_AUTH_TOKEN';

/** `sha256:` and 64 hex digits, as manifest.json's content_hash is written (docs/bundle-format.md). */
function readModelHash(r: Reader): string | null {
  const v = r.given('model-hash');
  if (v === undefined) return null;
  const hash = v.trim().toLowerCase();
  if (!/^sha256:[0-9a-f]{64}$/.test(hash)) throw VlmError.invalid(r.from('model-hash'), `expected sha256:<64 hex digits> (a manifest's content_hash), got "${v}"`);
  return hash;
}

/** Whether the operator set the option (its flag, or its variable to a non-empty value). */
export function optionChosen(option: ConfigOption, values: Readonly<Record<string, unknown>>, env: Env = process.env): boolean {
  return values[option] !== undefined || !!env[CONFIG_OPTIONS[option].env];
}

/**
 * The environment for `services` service processes started on this host: each worker of each gets
 * an equal share of the cores as its intra-op threads (cores / services / workers, the co-located
 * form of the cores / workers default; each would otherwise take them all and oversubscribe),
 * unless the operator chose a count, which the children then read themselves.
 */
export function coLocatedServiceEnv(values: Values, services: number, env: Env = process.env): Record<string, string | undefined> {
  if (optionChosen('intra-op-threads', values, env)) return { ...env };
  const workers = new Reader(values, env).int('workers');
  return { ...env, [CONFIG_OPTIONS['intra-op-threads'].env]: String(Math.max(1, Math.floor(availableParallelism() / services / workers))) };
}

/**
 * Thrown by parseCommandLine for --help / -h instead of reading the config: only the command knows
 * its own flags, and only the CLI entry point prints (cli/help.ts). Not a VlmError: asking for help
 * is no failure, and exits 0.
 */
export class HelpRequested extends Error {
  override readonly name = 'HelpRequested';
  constructor(
    readonly commandFlags: Readonly<Record<string, { readonly type: string; readonly help?: string; readonly arg?: string; readonly multiple?: boolean }>>,
    /** The config flags the command takes (all of them when undefined). */
    readonly configKeys?: readonly ConfigOption[],
  ) {
    super('help requested');
  }
}

/**
 * Parses a command line: config flags plus the subcommand's own. Unknown flags are INVALID_ARGUMENT
 * (a typo must not silently fall back to a default).
 */
export function parseCommandLine<O extends NonNullable<ParseArgsConfig['options']>>(
  argv: readonly string[],
  extra: O,
  env: Env = process.env,
  /** The config flags the command takes, when not all of them. */
  subset?: ConfigSubset,
): { config: Config; values: Values } {
  const parsed = parseCommandWords(argv, extra, env, subset);
  // A word no flag takes is a mistake, most often an unquoted value: `--question what color is it`
  // would otherwise ask "what" and say nothing about the rest.
  if (parsed.positionals.length > 0) {
    throw new VlmError('INVALID_ARGUMENT', `unexpected argument "${parsed.positionals.join(' ')}": this command takes only options; quote a value that holds spaces (--question "what color is it?")`);
  }
  return parsed;
}

/** As parseCommandLine, for a command that takes words besides its options (`vlm serve vision`). */
export function parseCommandWords<O extends NonNullable<ParseArgsConfig['options']>>(
  argv: readonly string[],
  extra: O,
  env: Env = process.env,
  subset?: ConfigSubset,
): { config: Config; values: Values; positionals: string[]; positionalIndices: number[] } {
  const configFlags = subset === undefined ? CONFIG_FLAGS : Object.fromEntries(subset.keys.map((k) => [k, CONFIG_FLAGS[k]]));
  let parsed;
  try {
    // allowNegative: a switch on by default (--warmup) is turned off by --no-warmup, as its variable can be.
    parsed = parseArgs({ args: [...argv], options: { ...configFlags, ...extra, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, allowNegative: true, strict: true, tokens: true });
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', parseArgsMessage(err as Error & { code?: string }, subset));
  }
  // Before the config is read: help must print even when a variable in the environment is malformed.
  const values = parsed.values as Values;
  if (values.help === true) throw new HelpRequested(extra, subset?.keys);
  // Where each positional stands in argv (a flag's value equal to one, `--graph-optimization all`, is not one).
  const positionalIndices = parsed.tokens.flatMap((t) => (t.kind === 'positional' ? [t.index] : []));
  return { config: configFrom(values, subset === undefined ? env : envOf(subset, env)), values, positionals: parsed.positionals, positionalIndices };
}

/**
 * The environment less the variables of options a command does not take: they are the services'
 * (a shell or a pod may well set them), and one malformed, or two at odds (VLM_MAX_DEADLINE_MS below
 * VLM_DEADLINE_MS), must not refuse a command that never reads them. Other variables (VLM_AUTH_TOKEN) stay.
 */
function envOf(subset: ConfigSubset, env: Env): Env {
  const taken = new Set<string>(subset.keys);
  const ignored = new Set<string>(Object.entries(CONFIG_OPTIONS).flatMap(([key, o]) => (taken.has(key) ? [] : [o.env])));
  return Object.fromEntries(Object.entries(env).filter(([name]) => !ignored.has(name)));
}

/** node:util's parser speaks of positionals and '--' where our commands take none: say what to do. */
function parseArgsMessage(err: Error & { code?: string }, subset: ConfigSubset | undefined): string {
  const option = /'(-{1,2}[^' ]+)(?: <value>)?'/.exec(err.message)?.[1];
  if (option === undefined) return err.message;
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      if (subset && configOptionOf(option.replace(/^--/, '')) !== undefined) return `${option} ${subset.othersAre}; --help lists its options`;
      return `unknown option ${option}; --help lists this command's options`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      // The same code for a switch given a value (`--json=true`) and an option given none.
      if (/does not take an argument/.test(err.message)) return `option ${option} is a switch and takes no value: write ${option} alone to turn it on`;
      return `option ${option} needs a value (one that starts with '-' is written ${option}=VALUE)`;
    default:
      return err.message;
  }
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
  const file = (key: 'tls-cert' | 'tls-key' | 'tls-ca' | 'vision-client-cert' | 'vision-client-key' | 'vision-ca'): string | null => {
    const v = r.str(key);
    return v === '' ? null : path.resolve(v);
  };
  const tls: TlsConfig = {
    certFile: file('tls-cert'),
    keyFile: file('tls-key'),
    caFile: file('tls-ca'),
    clientNames: r
      .str('tls-client-names')
      .split(',')
      .map((n) => n.trim())
      .filter((n) => n !== ''),
    visionClientCertFile: file('vision-client-cert'),
    visionClientKeyFile: file('vision-client-key'),
    visionCaFile: file('vision-ca'),
    visionServerName: r.str('vision-server-name') || null,
    reloadIntervalMs: r.int('tls-reload-ms'),
  };
  if ((tls.certFile === null) !== (tls.keyFile === null)) throw VlmError.invalid('--tls-cert/--tls-key', 'set both VLM_TLS_CERT and VLM_TLS_KEY, or neither (plaintext)');
  if (tls.caFile !== null && tls.certFile === null) throw VlmError.invalid('--tls-ca', 'requiring client certificates needs TLS: set VLM_TLS_CERT and VLM_TLS_KEY too');
  if (tls.clientNames.length > 0 && tls.caFile === null) throw VlmError.invalid('--tls-client-names', 'names client certificates, which only mutual TLS asks for: set VLM_TLS_CA too');
  if ((tls.visionClientCertFile === null) !== (tls.visionClientKeyFile === null)) {
    throw VlmError.invalid('--vision-client-cert/--vision-client-key', 'set both VLM_VISION_CLIENT_CERT and VLM_VISION_CLIENT_KEY, or neither');
  }
  return tls;
}

/** A token file wins over VLM_AUTH_TOKEN. */
function readAuthTokens(file: string, fromEnv: string | undefined): AuthTokens | null {
  return file === '' ? envToken(fromEnv) : readTokenFile(file);
}

/**
 * `cpu`, `cuda`, `cuda:1`, `webgpu`, comma-separated in fallback order; a plain `cuda` takes `device`.
 * Nothing is appended: a GPU pod configured for `cuda:0` on a broken driver must fail to start, not
 * hold its GPU while serving on the CPU; `cuda:0,cpu` asks for the fallback. `option` and
 * `deviceOption` name the settings, so an error points at the flag or variable to fix.
 */
export function parseProviders(spec: string, device = '', option = '--provider / VLM_PROVIDER', deviceOption = '--device / VLM_DEVICE'): ProviderSpec[] {
  const out: ProviderSpec[] = [];
  for (const raw of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const cuda = /^cuda(?::(.*))?$/.exec(raw);
    if (raw === 'cpu') out.push({ kind: 'cpu' });
    else if (raw === 'webgpu') out.push({ kind: 'webgpu' });
    else if (cuda) {
      const [id, from] = cuda[1] !== undefined ? [cuda[1], option] : [device === '' ? '0' : device, deviceOption];
      // Whole digits only: Number() would read "1:2" as NaN but "0x1" as 1 and " " as 0.
      if (!/^\d{1,4}$/.test(id)) throw VlmError.invalid(from, `bad CUDA device "${id}" in "${cuda[1] !== undefined ? raw : `cuda on device ${id}`}"; a device is a number from 0 (cuda:0, cuda:1, ...)`);
      out.push({ kind: 'cuda', deviceId: Number(id) });
    } else throw VlmError.invalid(option, `unknown execution provider "${raw}"; use cpu, cuda:<id> or webgpu (comma-separated for a fallback order)`);
  }
  if (out.length === 0) throw VlmError.invalid(option, 'no execution provider given');
  return out;
}

/** The bundle folder; an empty --model would resolve to the working directory and fail as "not a bundle" there. */
function modelDir(r: Reader): string {
  const given = r.given('model');
  if (given !== undefined && given.trim() === '') throw VlmError.invalid(r.from('model'), "is empty; give a model bundle's folder (or leave it out for the embedded model)");
  return path.resolve(given ?? path.join(packageRoot(), DEFAULT_MODEL));
}

/** --host as given: an empty one would reach the socket as an address of its own ("No addresses resolved"). */
function listenHost(r: Reader): string {
  const host = r.str('host');
  if (host.trim() === '') throw VlmError.invalid(r.from('host'), 'is empty; give the address to listen on (0.0.0.0 or :: for every interface, 127.0.0.1 for this host only)');
  return host;
}

/** The configuration one service runs with: its own providers where --vision-provider / --language-provider set them. */
export function serviceConfig(config: Config, service: 'vision' | 'language'): Config {
  const own = config.runtime.serviceProviders[service];
  return own === null ? config : { ...config, runtime: { ...config.runtime, providers: own } };
}

export function providerName(p: ProviderSpec): string {
  return p.kind === 'cuda' ? `cuda:${p.deviceId}` : p.kind;
}

type Spec<K extends ConfigOption> = (typeof CONFIG_OPTIONS)[K];
type OptionOfType<T extends OptionSpec['type']> = { [K in ConfigOption]: Spec<K>['type'] extends T ? K : never }[ConfigOption];
type ChoiceOption = { [K in ConfigOption]: Spec<K> extends { readonly choices: readonly string[] } ? K : never }[ConfigOption];
type ChoicesOf<K extends ChoiceOption> = Spec<K> extends { readonly choices: readonly (infer C)[] } ? C : never;

/** Reads one option by its CONFIG_OPTIONS row: the flag, else its variable, else its default. */
class Reader {
  constructor(
    private readonly values: Values,
    private readonly env: Env,
  ) {}

  private raw(key: ConfigOption): { value: string | boolean; from: string } | undefined {
    const v = this.values[key];
    if (v !== undefined) return { value: v, from: `--${key}` };
    const envName = CONFIG_OPTIONS[key].env;
    const e = this.env[envName];
    if (e !== undefined && e !== '') return { value: e, from: envName };
    return undefined;
  }

  /** Whether the flag or the variable sets the option. */
  isSet(key: ConfigOption): boolean {
    return this.raw(key) !== undefined;
  }

  /** The flag or variable the value was taken from, for error messages (the flag when neither was set). */
  from(key: ConfigOption): string {
    return this.raw(key)?.from ?? `--${key}`;
  }

  /** The value set by flag or variable; undefined when neither is (the default is the caller's to compute). */
  given(key: OptionOfType<'string'>): string | undefined {
    const r = this.raw(key);
    return r === undefined ? undefined : String(r.value);
  }

  str(key: OptionOfType<'string'>): string {
    return this.given(key) ?? CONFIG_OPTIONS[key].default;
  }

  bool(key: OptionOfType<'boolean'>): boolean {
    const r = this.raw(key);
    if (r === undefined) return CONFIG_OPTIONS[key].default;
    if (typeof r.value === 'boolean') return r.value;
    if (/^(1|true|yes|on)$/i.test(r.value)) return true;
    if (/^(0|false|no|off)$/i.test(r.value)) return false;
    throw VlmError.invalid(r.from, `expected a boolean, got "${r.value}"`);
  }

  /**
   * Bounded above too: past 2^31-1 ms a Node timer fires after 1 ms (a 3e9 ms deadline would fail
   * every call at once), and a port past 65535 or a thread count in the millions is a typo.
   */
  int(key: OptionOfType<'int'>): number {
    const spec = CONFIG_OPTIONS[key];
    const r = this.raw(key);
    if (r === undefined) return spec.default;
    // Decimal digits only: Number() reads '' and ' ' as 0 (`--queue-size=` a queue of none) and '0x10' as 16.
    const text = String(r.value).trim();
    const n = /^-?\d+$/.test(text) ? Number(text) : NaN;
    if (!Number.isInteger(n) || n < spec.min || n > spec.max) throw VlmError.invalid(r.from, `expected an integer from ${spec.min} to ${spec.max}, got "${String(r.value)}"`);
    return n;
  }

  oneOf<K extends ChoiceOption>(key: K): ChoicesOf<K> {
    const allowed: readonly string[] = CONFIG_OPTIONS[key].choices;
    const v = this.str(key);
    if (!allowed.includes(v)) throw VlmError.invalid(this.from(key), `expected one of ${allowed.join(', ')}, got "${v}"`);
    return v as ChoicesOf<K>;
  }
}

function deepFreeze<T>(o: T): T {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}
