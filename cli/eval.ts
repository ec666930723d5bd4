/**
 * `vlm eval [--model DIR] [--limit N] [--vision-method M] [--language-method M] [--budget N|P%]
 *           [--mode clean|exact] [--max-new-tokens N] [--json]`
 *
 * Runs the bundle's evaluation items (`<model>/eval/items.jsonl`: image, question, answer, type)
 * through an InferencePool with as many workers as the cores allow (one intra-op thread each unless
 * told otherwise). Progress goes to stderr; the result is printed last on stdout, with --json as one
 * single-line JSON object.
 */
import { GREEDY } from '../shared/engine/sampling';
import { VlmError } from '../shared/errors';
import { optionChosen, parseCommandLine, type Config, type ConfigSubset } from '../shared/config';
import type { CommandFlags } from './help';
import { setLogLevel, type LogLevel } from '../shared/log';
import type { ReductionPolicy } from '../shared/methods/policy';
import type { LanguageMethodName, ReductionMode, VisionMethodName } from '../shared/methods/types';
import { isLanguageMethod, isVisionMethod, languageMethodNames, visionMethodNames } from '../shared/methods/registry';
import { addFlops, emptyFlops, macs, totalFlops, type StageFlops } from '../shared/flops/flops';
import { InferencePool, type AskResult } from '../shared/worker';
import { integerFlag, parseBudgetFlag, seedFlag } from './numeric-flags';
import { isCorrect, readItemImage, readItems, selectEvenly, type EvalItem } from './eval-items';

/** Options an inference pool in the command's own process reads (vlm eval, bench accuracy): the model, its runtime and request limits. */
export const IN_PROCESS_CONFIG: ConfigSubset = {
  keys: ['model', 'model-hash', 'verify-hashes', 'eager-sessions', 'provider', 'vision-provider', 'language-provider', 'device', 'intra-op-threads', 'inter-op-threads', 'graph-optimization', 'spinning', 'stuck-worker-ms', 'workers', 'max-image-bytes', 'max-image-pixels', 'max-aspect-ratio', 'max-prompt-chars', 'queue-size', 'max-new-tokens-limit', 'log-level'],
  othersAre: 'is a setting of the services (vlm serve); this command runs the model in its own process and does not take it',
};

const FLAGS = {
  limit: { type: 'string', arg: 'N', help: 'evaluate N items taken evenly across the question types [default: all]' },
  'vision-method': { type: 'string', arg: 'NAME', help: `${visionMethodNames().join(', ')} [default: none]` },
  'language-method': { type: 'string', arg: 'NAME', help: `${languageMethodNames().join(', ')} [default: none]` },
  budget: { type: 'string', arg: 'N|P%', help: 'mean visual tokens per decoder layer, absolute or a percentage [default: the method\'s own]' },
  mode: { type: 'string', arg: 'MODE', help: 'clean or exact [default: clean]' },
  'max-new-tokens': { type: 'string', arg: 'N', help: 'most answer tokens per item [default: the model\'s]' },
  seed: { type: 'string', arg: 'N', help: 'seed of the random methods [default: 0]' },
  json: { type: 'boolean', help: 'print the result as one JSON line' },
} as const satisfies CommandFlags;

/** Eval runs many small requests: one intra-op thread per worker and a worker per core, unless told otherwise. */
export function evalRuntime(config: Config, values: Record<string, unknown>): Config {
  const intraOpThreads = optionChosen('intra-op-threads', values) ? config.runtime.intraOpThreads : 1;
  const workers = optionChosen('workers', values) ? config.runtime.workers : InferencePool.workersFor(intraOpThreads);
  return { ...config, runtime: { ...config.runtime, intraOpThreads, workers }, limits: { ...config.limits, queueSize: Math.max(config.limits.queueSize, workers) } };
}

/**
 * What eval and bench accuracy read alike, judged before any model loads: the mode, the seed, the
 * items (--limit) and --max-new-tokens (against the limit the workers enforce). Progress-only logging
 * unless a log level was asked for.
 */
export async function evalRunFlags(values: Record<string, unknown>, config: Config): Promise<{
  mode: ReductionMode; seed: number; items: EvalItem[]; maxNewTokens: number | undefined; logLevel: LogLevel;
}> {
  const logLevel = optionChosen('log-level', values) ? (config.logLevel as LogLevel) : 'warn';
  const mode = (values['mode'] ?? 'clean') as ReductionMode;
  if (mode !== 'clean' && mode !== 'exact') throw VlmError.invalid('--mode', `expected clean or exact, got "${String(values['mode'])}"`);
  const seed = seedFlag(values) ?? 0;
  const maxNewTokens = integerFlag(values, 'max-new-tokens', 1, config.limits.maxNewTokens);
  const items = selectEvenly(await readItems(config.model.dir), integerFlag(values, 'limit', 1, Number.MAX_SAFE_INTEGER));
  return { mode, seed, items, maxNewTokens, logLevel };
}

function methodFlag<N extends VisionMethodName | LanguageMethodName>(values: Record<string, string | boolean | undefined>, flag: string, known: (name: string) => name is N, names: readonly string[]): N {
  const name = String(values[flag] ?? 'none');
  if (!known(name)) throw VlmError.invalid(`--${flag}`, `unknown method "${name}"; valid: ${names.join(', ')}`);
  return name;
}

export async function run(argv: string[]): Promise<number> {
  const parsed = parseCommandLine(argv, FLAGS, process.env, IN_PROCESS_CONFIG);
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const config = evalRuntime(parsed.config, values);
  const { mode, seed, items, maxNewTokens: maxNewTokensFlag, logLevel } = await evalRunFlags(values, config);
  setLogLevel(logLevel);
  const policy: ReductionPolicy = {
    vision: methodFlag(values, 'vision-method', isVisionMethod, visionMethodNames()),
    language: methodFlag(values, 'language-method', isLanguageMethod, languageMethodNames()),
    budget: parseBudgetFlag(values.budget as string | undefined),
    mode,
    params: {},
    seed,
  };
  const progress = (s: string) => process.stderr.write(`[eval] ${s}\n`);
  progress(`${items.length} items, model ${config.model.dir}, vision ${policy.vision}, language ${policy.language}, budget ${values.budget ?? 'default'}, ${config.runtime.workers} workers x ${config.runtime.intraOpThreads} threads`);

  const started = performance.now();
  const pool = await InferencePool.start({ model: config.model, runtime: config.runtime, limits: config.limits, logLevel });
  const maxNewTokens = maxNewTokensFlag ?? Math.min(pool.manifest.generation.max_new_tokens, config.limits.maxNewTokens);
  const byType = new Map<string, { items: number; correct: number }>();
  let correct = 0;
  let visualTokens = 0;
  let visionTokensOut = 0;
  let flops: StageFlops = emptyFlops();
  let done = 0;
  let latencyMs = 0;
  const controller = new AbortController();

  const one = async (item: EvalItem): Promise<void> => {
    const image = await readItemImage(config.model.dir, item);
    const t0 = performance.now();
    const r: AskResult = await pool.ask(image, item.question, { ...GREEDY, maxNewTokens }, policy, { signal: controller.signal });
    latencyMs += performance.now() - t0;
    const ok = isCorrect(r.generate.text, item.answer);
    const t = byType.get(item.type) ?? { items: 0, correct: 0 };
    t.items++;
    if (ok) {
      t.correct++;
      correct++;
    }
    byType.set(item.type, t);
    visualTokens += r.generate.achievedBudget;
    visionTokensOut += r.encode.embeds.dims[0];
    flops = addFlops(flops, addFlops(r.encode.flops, r.generate.flops));
    done++;
    if (done % Math.max(1, Math.floor(items.length / 10)) === 0 || done === items.length) {
      progress(`${done}/${items.length} accuracy ${(correct / done).toFixed(4)} (${((performance.now() - started) / 1000).toFixed(1)} s)`);
    }
  };

  try {
    let next = 0;
    const lanes = Array.from({ length: pool.stats.workers }, async () => {
      while (next < items.length && !controller.signal.aborted) {
        const item = items[next++]!;
        try {
          await one(item);
        } catch (err) {
          controller.abort(err);
          throw err;
        }
      }
    });
    await Promise.all(lanes);
  } finally {
    await pool.close();
  }

  const n = items.length;
  const perItem = (x: number) => (n ? x / n : 0);
  const avgFlops: StageFlops = { vision: perItem(flops.vision), projector: perItem(flops.projector), prefill: perItem(flops.prefill), decode: perItem(flops.decode), overhead: perItem(flops.overhead) };
  const result = {
    model_id: pool.manifest.model_id,
    content_hash: pool.manifest.content_hash,
    items: n,
    correct,
    accuracy: perItem(correct),
    by_type: Object.fromEntries([...byType].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, { items: v.items, correct: v.correct, accuracy: v.items ? v.correct / v.items : 0 }])),
    policy: { vision: policy.vision, language: policy.language, budget: policy.budget, mode: policy.mode },
    visual_tokens_avg: perItem(visualTokens),
    vision_tokens_out_avg: perItem(visionTokensOut),
    flops: { ...avgFlops, total: totalFlops(avgFlops), unit: 'FLOPs per item (2 x multiply-accumulates)' },
    macs: { ...macs(avgFlops), total: totalFlops(avgFlops) / 2 },
    latency_ms_avg: perItem(latencyMs),
    wall_s: (performance.now() - started) / 1000,
    workers: config.runtime.workers,
    intra_op_threads: config.runtime.intraOpThreads,
    provider: pool.provider,
  };
  if (values.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else {
    const lines = [
      `model ${result.model_id}: ${correct}/${n} correct, accuracy ${result.accuracy.toFixed(4)}`,
      ...Object.entries(result.by_type).map(([k, v]) => `  ${k.padEnd(12)} ${v.correct}/${v.items}  ${v.accuracy.toFixed(4)}`),
      `visual tokens per decoder layer (avg) ${result.visual_tokens_avg.toFixed(1)}; GFLOPs per item ${(result.flops.total / 1e9).toFixed(3)}`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  return 0;
}
