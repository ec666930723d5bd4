/**
 * `vlm bench load [--duration-s 60] [--requests N] [--concurrency 16] [--light-concurrency 0]
 *                 [--queue-size 4] [--seed N] [--sample-ms 1000] [--warmup-s 10] [--json] [config flags]`
 *
 * Starts the vision and language services as two processes on free loopback ports and drives them
 * with a mixed, seeded load from `concurrency` closed-loop clients: several reduction policies, about
 * 10 % bad inputs and 10 % deadlines too tight to meet, until `requests` were sent or `duration-s`
 * passed. Every request ends in exactly one outcome (answered, shed = RESOURCE_EXHAUSTED, timed out =
 * DEADLINE_EXCEEDED, invalid = INVALID_ARGUMENT, another code, or lost: no status within its deadline
 * plus 10 s); `lost` must be 0 and the outcomes must add up to `sent`. Both services' resident memory
 * is sampled every `sample-ms`; memory's start is taken after `warmup-s` of load. Prints one JSON summary (with --json nothing else).
 *
 * `--light-concurrency N` adds a second caller: the services get a token file of two named tokens,
 * `heavy` for the `concurrency` clients above and `light` for N more clients that send only valid
 * requests, and the summary gets each caller's outcomes (`byCaller`): what the pools' fair queueing
 * between callers does for a light caller beside a heavy one.
 *
 * SIGINT or SIGTERM ends the load early: no request is sent after it, those in flight end as usual,
 * the services stop, and the summary (marked `interrupted`) is printed; a second signal quits at once.
 * The temporary token file is removed either way.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { callMetadata } from '../services/common/call-metadata';
import { coLocatedServiceEnv, parseCommandLine, type Config } from '../shared/config';
import { packageRoot } from '../shared/package-root';
import type { CommandFlags } from './help';
import { VlmError } from '../shared/errors';
import { integerFlag } from './numeric-flags';
import { ReductionPolicy, SamplingParams } from '../gen/vlm/v1/common';
import type { GenerateRequest, GenerateResponse, LanguageServiceClient } from '../gen/vlm/v1/language_service';
import { languageClient } from '../services/language/client';
import { grpcCodeName } from '../services/common/status';
import { seededRandom } from '../shared/methods/numeric';
import { questionItems, serveFlags, startChildServices, CHILD_SERVICES_CONFIG } from './child-services';
import { sentToken } from '../shared/auth-tokens';
import { MAX_TIMER_MS } from '../shared/timer-limit';

const FLAGS = {
  'duration-s': { type: 'string', arg: 'S', help: 'stop sending after S seconds [default: 60]' },
  requests: { type: 'string', arg: 'N', help: 'stop after N requests were sent, both callers together [default: 1000000]' },
  concurrency: { type: 'string', arg: 'N', help: 'closed-loop clients [default: 16]' },
  'sample-ms': { type: 'string', arg: 'MS', help: 'resident-memory sampling period [default: 1000]' },
  'warmup-s': { type: 'string', arg: 'S', help: 'load before the memory baseline is taken [default: 10]' },
  seed: { type: 'string', arg: 'N', help: 'seed of the request mix [default: 1]' },
  'light-concurrency': { type: 'string', arg: 'N', help: 'closed-loop clients of a second caller (its own token) sending only valid requests; the summary splits outcomes by caller [default: 0, off]' },
  json: { type: 'boolean', help: 'print only the JSON summary' },
} as const satisfies CommandFlags;

const POLICIES: ReadonlyArray<Partial<ReductionPolicy>> = [
  {},
  { visionMethod: 'ficoco-v', budget: { $case: 'budgetPercent', budgetPercent: 50 } },
  { visionMethod: 'tome', budget: { $case: 'budgetPercent', budgetPercent: 50 } },
  { languageMethod: 'fastv', budget: { $case: 'budgetPercent', budgetPercent: 50 } },
  { languageMethod: 'sparsevlm', budget: { $case: 'budgetPercent', budgetPercent: 50 } },
  { preset: 'ficoco-vl', budget: { $case: 'budgetPercent', budgetPercent: 50 } },
];

export type Outcome = 'answered' | 'shed' | 'timedOut' | 'invalid' | 'other' | 'lost';

export interface LoadOptions {
  readonly config: Config;
  readonly durationMs: number;
  readonly maxRequests: number;
  readonly concurrency: number;
  readonly sampleMs: number;
  /** Memory's "start" is taken this long into the load (after JIT and heap growth settle); requests in it count as usual. */
  readonly warmupMs: number;
  readonly seed: number;
  /** Clients of a second caller, `light`, sending valid requests only; 0: one caller. */
  readonly lightConcurrency?: number;
  /** Extra flags for both `vlm serve` processes (e.g. --queue-size). */
  readonly serveFlags: readonly string[];
  /** Environment of both processes (default this one's); the CLI shares the cores out between them. */
  readonly serviceEnv?: NodeJS.ProcessEnv;
  readonly onProgress?: (line: string) => void;
  /** Ends the load early: no request is sent after it aborts; the summary is marked `interrupted`. */
  readonly signal?: AbortSignal;
}

export interface Percentiles {
  readonly count: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
}

export interface MemorySample {
  /** Seconds since the load started. */
  readonly t: number;
  readonly visionMiB: number;
  readonly languageMiB: number;
}

/** One caller's outcomes (`--light-concurrency`). */
export interface CallerSummary {
  readonly clients: number;
  readonly sent: number;
  readonly answered: number;
  readonly shed: number;
  readonly timedOut: number;
  readonly invalid: number;
  readonly other: number;
  readonly lost: number;
  readonly answeredPerS: number;
  readonly latencyMs: { readonly answered: Percentiles };
}

export interface LoadSummary {
  readonly sent: number;
  readonly answered: number;
  readonly shed: number;
  readonly timedOut: number;
  readonly invalid: number;
  readonly otherErrors: Record<string, number>;
  readonly lost: number;
  /** sent === answered + shed + timedOut + invalid + other + lost */
  readonly accountedFor: boolean;
  readonly durationS: number;
  readonly answeredPerS: number;
  readonly latencyMs: { readonly answered: Percentiles; readonly all: Percentiles };
  readonly memory: {
    /** idle: SERVING, before any load; start: after the warm-up; end: when the last request finished. */
    readonly vision: { readonly idleMiB: number; readonly startMiB: number; readonly endMiB: number; readonly peakMiB: number };
    readonly language: { readonly idleMiB: number; readonly startMiB: number; readonly endMiB: number; readonly peakMiB: number };
    readonly warmupS: number;
    readonly samples: readonly MemorySample[];
  };
  readonly settings: { readonly concurrency: number; readonly queueSize: number; readonly workers: number; readonly model: string };
  /** With --light-concurrency: the heavy caller (the `concurrency` clients, the whole mix) and the light one. */
  readonly byCaller?: { readonly heavy: CallerSummary; readonly light: CallerSummary };
  /** The load was ended early (`LoadOptions.signal`), before its duration or request count. */
  readonly interrupted?: true;
}

/** Resident set size of a process in MiB (Linux /proc); NaN where unavailable. */
export function rssMiB(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : NaN;
  } catch {
    return NaN;
  }
}

export function percentiles(values: readonly number[]): Percentiles {
  const s = [...values].sort((a, b) => a - b);
  const at = (q: number): number => (s.length === 0 ? 0 : Math.round(s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]! * 10) / 10);
  return { count: s.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1) };
}

interface Planned {
  readonly request: GenerateRequest;
  readonly deadlineMs: number;
}

type Items = ReadonlyArray<{ bytes: Buffer; question: string }>;

/** A valid request under a random policy: the light caller's whole mix. */
function planValid(rand: () => number, pool: Items, deadlineMs: number): Planned {
  const item = pool[Math.floor(rand() * pool.length)]!;
  const policy = ReductionPolicy.fromPartial(POLICIES[Math.floor(rand() * POLICIES.length)]!);
  const sampling = SamplingParams.fromPartial({ maxTokens: 2 + Math.floor(rand() * 12) });
  return { request: { image: item.bytes, prompt: item.question, sampling, policy, limits: undefined }, deadlineMs };
}

/** The i-th request of the mix: 10 % bad input, 10 % a deadline too tight to meet, the rest valid under a random policy. */
function plan(rand: () => number, pool: Items, deadlineMs: number): Planned {
  const valid = planValid(rand, pool, deadlineMs);
  const { image, prompt } = valid.request;
  const r = rand();
  if (r < 0.1) {
    const bad = [
      { image: Buffer.alloc(0), prompt },
      { image: image.subarray(0, 40), prompt },
      { image, prompt: '' },
    ][Math.floor(rand() * 3)]!;
    return { request: { ...valid.request, ...bad }, deadlineMs };
  }
  return r < 0.2 ? { ...valid, deadlineMs: 2 + Math.floor(rand() * 30) } : valid;
}

/**
 * One Generate to its end: the outcome's gRPC code and latency; 'lost' if no status comes within
 * deadline + 10 s. `authToken`: the services' own (they inherit VLM_AUTH_TOKEN and --auth-token-file).
 */
function generate(client: LanguageServiceClient, p: Planned, authToken: string | null): Promise<{ code: GrpcCode | 'lost'; ms: number }> {
  const started = performance.now();
  const md = callMetadata({ authToken });
  return new Promise((resolve) => {
    const call = client.generate(p.request, md, { deadline: Date.now() + p.deadlineMs });
    const watchdog = setTimeout(() => {
      call.cancel();
      resolve({ code: 'lost', ms: performance.now() - started });
    }, Math.min(p.deadlineMs + 10_000, MAX_TIMER_MS));
    call.on('data', (_m: GenerateResponse) => undefined);
    call.on('error', (_e: ServiceError) => undefined);
    call.on('status', (s: { code: GrpcCode }) => {
      clearTimeout(watchdog);
      resolve({ code: s.code, ms: performance.now() - started });
    });
  });
}

/** Outcomes counted as requests end: every request once. */
class Tally {
  sent = 0;
  readonly counts: Record<Outcome, number> = { answered: 0, shed: 0, timedOut: 0, invalid: 0, other: 0, lost: 0 };
  readonly other: Record<string, number> = {};
  readonly answeredMs: number[] = [];
  readonly allMs: number[] = [];

  record(code: GrpcCode | 'lost', ms: number): void {
    this.allMs.push(ms);
    const c = this.counts;
    if (code === 'lost') c.lost++;
    else if (code === GrpcCode.OK) {
      c.answered++;
      this.answeredMs.push(ms);
    } else if (code === GrpcCode.RESOURCE_EXHAUSTED) c.shed++;
    else if (code === GrpcCode.DEADLINE_EXCEEDED) c.timedOut++;
    else if (code === GrpcCode.INVALID_ARGUMENT) c.invalid++;
    else {
      c.other++;
      const name = grpcCodeName(code);
      this.other[name] = (this.other[name] ?? 0) + 1;
    }
  }

  get ended(): number {
    const c = this.counts;
    return c.answered + c.shed + c.timedOut + c.invalid + c.other + c.lost;
  }

  caller(clients: number, durationS: number): CallerSummary {
    return { clients, sent: this.sent, ...this.counts, answeredPerS: Math.round((this.counts.answered / durationS) * 10) / 10, latencyMs: { answered: percentiles(this.answeredMs) } };
  }
}

/**
 * A token file naming two callers, in a folder of its own; `remove` deletes it, and so does the
 * process's exit if nothing did before (a second Ctrl-C quits without unwinding).
 */
function twoCallerTokens(): { file: string; heavy: string; light: string; remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'vlm-bench-tokens-'));
  const token = (): string => randomBytes(32).toString('base64url');
  const heavy = token();
  const light = token();
  const file = path.join(dir, 'tokens');
  const remove = (): void => {
    process.off('exit', remove);
    rmSync(dir, { recursive: true, force: true });
  };
  process.on('exit', remove);
  try {
    writeFileSync(file, `heavy ${heavy}\nlight ${light}\n`, { mode: 0o600 });
  } catch (err) {
    remove();
    throw err;
  }
  return { file, heavy, light, remove };
}

/** Starts both services, runs the load, stops them; the summary. */
export async function runLoad(o: LoadOptions): Promise<LoadSummary> {
  const { config } = o;
  const lightClients = o.lightConcurrency ?? 0;
  if (lightClients > 0 && config.rpc.auth !== null) {
    throw VlmError.invalid('--light-concurrency', 'gives the two callers tokens of its own: run it without --auth-token-file, VLM_AUTH_TOKEN_FILE and VLM_AUTH_TOKEN');
  }
  const pool = await questionItems(config.model.dir, 12);
  const tokens = lightClients > 0 ? twoCallerTokens() : null;
  const flags = tokens ? [...o.serveFlags, '--auth-token-file', tokens.file] : o.serveFlags;
  const services = await startChildServices({ modelDir: config.model.dir, flags, env: o.serviceEnv }).catch((err: unknown) => {
    tokens?.remove();
    throw err;
  });
  const { vision, language } = services;
  const client = languageClient(`127.0.0.1:${services.languagePort}`);
  try {
    const rand = seededRandom(o.seed);
    const all = new Tally();
    const heavy = new Tally();
    const light = new Tally();
    const samples: MemorySample[] = [];
    const started = performance.now();
    const sample = (): void => {
      samples.push({ t: Math.round((performance.now() - started) / 100) / 10, visionMiB: rssMiB(vision.pid), languageMiB: rssMiB(language.pid) });
    };
    sample();
    const sampler = setInterval(sample, o.sampleMs);
    const until = started + o.durationMs;
    o.onProgress?.(`services ready; load running for ${o.durationMs / 1000} s: ${o.concurrency} clients${lightClients > 0 ? ` (caller heavy) and ${lightClients} sending valid requests only (caller light)` : ''}`);
    const counts = all.counts;
    const progress = setInterval(() => o.onProgress?.(`${Math.round((performance.now() - started) / 1000)} s: sent ${all.sent}, answered ${counts.answered}, shed ${counts.shed}, timed out ${counts.timedOut}`), 10_000);
    const worker = (tally: Tally, next: () => Planned, token: string | null) => async (): Promise<void> => {
      while (all.sent < o.maxRequests && performance.now() < until && !o.signal?.aborted) {
        all.sent++;
        tally.sent++;
        const { code, ms } = await generate(client, next(), token);
        all.record(code, ms);
        tally.record(code, ms);
      }
    };
    const deadlineMs = config.limits.deadlineMs;
    await Promise.all([
      ...Array.from({ length: o.concurrency }, worker(heavy, () => plan(rand, pool, deadlineMs), tokens?.heavy ?? sentToken(config.rpc.auth))),
      ...Array.from({ length: lightClients }, worker(light, () => planValid(rand, pool, deadlineMs), tokens?.light ?? null)),
    ]);
    clearInterval(sampler);
    clearInterval(progress);
    sample();
    const durationS = (performance.now() - started) / 1000;
    const warm = samples.find((m) => m.t * 1000 >= o.warmupMs) ?? samples.at(-1)!;
    const mem = (key: 'visionMiB' | 'languageMiB') => ({ idleMiB: samples[0]![key], startMiB: warm[key], endMiB: samples.at(-1)![key], peakMiB: Math.max(...samples.map((s) => s[key])) });
    const sent = all.sent;
    return {
      sent,
      answered: counts.answered,
      shed: counts.shed,
      timedOut: counts.timedOut,
      invalid: counts.invalid,
      otherErrors: all.other,
      lost: counts.lost,
      accountedFor: all.ended === sent,
      durationS: Math.round(durationS * 10) / 10,
      answeredPerS: Math.round((counts.answered / durationS) * 10) / 10,
      latencyMs: { answered: percentiles(all.answeredMs), all: percentiles(all.allMs) },
      memory: { vision: mem('visionMiB'), language: mem('languageMiB'), warmupS: warm.t, samples },
      settings: { concurrency: o.concurrency, queueSize: config.limits.queueSize, workers: config.runtime.workers, model: path.relative(packageRoot(), config.model.dir) || config.model.dir },
      ...(lightClients > 0 ? { byCaller: { heavy: heavy.caller(o.concurrency, durationS), light: light.caller(lightClients, durationS) } } : {}),
      ...(o.signal?.aborted ? { interrupted: true as const } : {}),
    };
  } finally {
    client.close();
    await services.stop();
    tokens?.remove();
  }
}

function int(values: Record<string, unknown>, flag: string, dflt: number): number {
  return integerFlag(values, flag, 1, Number.MAX_SAFE_INTEGER) ?? dflt;
}

export async function run(argv: string[]): Promise<number> {
  const { config, values } = parseCommandLine(argv, FLAGS, process.env, CHILD_SERVICES_CONFIG);
  if (!existsSync(path.join(config.model.dir, 'manifest.json'))) throw new VlmError('FAILED_PRECONDITION', `no model bundle at ${config.model.dir}; pass --model DIR`);
  const json = values['json'] === true;
  const log = (line: string): void => void (json ? undefined : process.stderr.write(`${line}\n`));
  const options: LoadOptions = {
    config,
    durationMs: int(values, 'duration-s', 60) * 1000,
    maxRequests: int(values, 'requests', 1_000_000),
    concurrency: int(values, 'concurrency', 16),
    sampleMs: integerFlag(values, 'sample-ms', 1, MAX_TIMER_MS) ?? 1000,
    warmupMs: int(values, 'warmup-s', 10) * 1000,
    seed: int(values, 'seed', 1),
    lightConcurrency: integerFlag(values, 'light-concurrency', 0, 10_000) ?? 0,
    serveFlags: serveFlags(argv, FLAGS),
    // Two services on one host: each gets its share of the cores, as under `vlm serve all`.
    serviceEnv: coLocatedServiceEnv(values, 2),
    onProgress: log,
  };
  const stop = new AbortController();
  const onSignal = (): void => {
    if (stop.signal.aborted) process.exit(130);
    stop.abort();
    process.stderr.write('stopping the load: waiting for the requests in flight, then the summary (again to quit now)\n');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const summary = await runLoad({ ...options, signal: stop.signal }).finally(() => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  });
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  if (summary.interrupted) return 130;
  // Any status the plan does not provoke (a crashed service answers UNAVAILABLE from then on) fails the run.
  return summary.lost === 0 && summary.accountedFor && Object.keys(summary.otherErrors).length === 0 ? 0 : 1;
}
