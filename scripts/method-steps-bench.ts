/**
 * The methods' host-side work per request at LLaVA-1.5-7B sizes: every reduction step's `reduce()`
 * (and SparseVLM's `prepare()`, its text raters), on random scores and hidden states, at a budget of
 * 192 visual tokens. What a GPU deployment still runs on its CPU besides the graphs. A benchmark: it
 * reports, it does not judge.
 *
 *   npx tsx scripts/method-steps-bench.ts [--reps N] [method ...]   (default: every method, 10 reps)
 */
import { getLanguageReducer, getVisionReducer } from '../shared/methods/registry';
import { noReduction, optionsOf, resolveLanguageSchedule, resolveVisionSchedule, type ReductionPolicy } from '../shared/methods/policy';
import type { LanguageGeometry, Matrix, TokenMeta, VisionGeometry } from '../shared/methods/types';
import { seededRandom } from '../shared/methods/numeric';

const rand = seededRandom(12345);
const matrix = (rows: number, cols: number, scale = 1): Matrix => {
  const data = new Float32Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = (rand() * 2 - 1) * scale;
  return { rows, cols, data };
};

// LLaVA-1.5-7B: CLIP ViT-L/14-336 (24 x 24 patches + CLS, 23 layers exported, width 1024, 16 heads of
// 64), Vicuna-7B (32 layers, width 4096); the prompt around the image as the vicuna_v1 template makes it.
const PREFIX = 35;
const SUFFIX = 35;
const V = 576;
const language: LanguageGeometry = { numLayers: 32, hiddenSize: 4096, numHeads: 32, visualTokens: V, fullVisualTokens: V, anchors: { 'ficoco_l.start_layer': 5, 'sparsevlm.layers': [2, 6, 15], 'fastv.k': 2 } };
const vision: VisionGeometry = { numLayers: 23, grid: 24, numPatches: V, hasClassToken: true, hiddenSize: 1024, languageLayers: 32, anchors: { 'ficoco_v.start_layer': 12, 'tome.start_layer': 0 } };
const HEAD_DIM = 64;
const BUDGET = { tokens: 192 };

function languageRequest(method: string): { ms: number; steps: number } {
  const policy = { ...noReduction(), language: method, budget: BUDGET } as ReductionPolicy;
  const schedule = resolveLanguageSchedule(policy, language);
  const reducer = getLanguageReducer(schedule.method);
  const options = optionsOf(policy);
  let image = { start: PREFIX, length: V };
  const state: Record<string, unknown> = {};
  const embeds = matrix(PREFIX + V + SUFFIX, language.hiddenSize);
  let ms = 0;
  let t0 = performance.now();
  reducer.prepare?.({ embeds, image }, schedule, options, state);
  ms += performance.now() - t0;
  for (const step of schedule.steps) {
    const L = PREFIX + image.length + SUFFIX;
    const input = { step, hidden: { rows: L, cols: embeds.cols, data: embeds.data.subarray(0, L * embeds.cols) }, scores: matrix(L, L, 4), probs: matrix(L, L, 0.01), image, state };
    t0 = performance.now();
    image = reducer.reduce(input, schedule, options).image;
    ms += performance.now() - t0;
  }
  return { ms, steps: schedule.steps.length };
}

function visionRequest(method: string): { ms: number; steps: number } {
  const policy = { ...noReduction(), vision: method, budget: BUDGET } as ReductionPolicy;
  const schedule = resolveVisionSchedule(policy, vision);
  const reducer = getVisionReducer(schedule.method);
  const options = optionsOf(policy);
  const T = V + 1;
  let tokens: TokenMeta = { origin: Int32Array.from({ length: T }, (_, i) => i - 1), size: new Float32Array(T).fill(1) };
  const state: Record<string, unknown> = {};
  let ms = 0;
  for (const step of schedule.steps) {
    const n = step.tokensIn;
    const input = { step, hidden: matrix(n, vision.hiddenSize), scores: matrix(n, n, 4), probs: matrix(n, n, 0.01), keys: matrix(n, HEAD_DIM), tokens, state };
    const t0 = performance.now();
    tokens = reducer.reduce(input, schedule, options).tokens;
    ms += performance.now() - t0;
  }
  return { ms, steps: schedule.steps.length };
}

const METHODS: Record<string, (m: string) => { ms: number; steps: number }> = {
  'ficoco-v': visionRequest,
  tome: visionRequest,
  sparsevlm: languageRequest,
  'ficoco-l': languageRequest,
  fastv: languageRequest,
};

const args = process.argv.slice(2);
const repsAt = args.indexOf('--reps');
const reps = repsAt >= 0 ? Number(args.splice(repsAt, 2)[1]) : 10;
if (!Number.isInteger(reps) || reps < 1) throw new Error('--reps takes a whole number of requests, at least 1');
const chosen = args.length ? args : Object.keys(METHODS);
console.log(`host ms per request at LLaVA-1.5-7B sizes, budget ${BUDGET.tokens}, ${reps} requests after one warm-up`);
console.log('| method | steps | min | median |\n|---|---|---|---|');
for (const method of chosen) {
  const run = METHODS[method];
  if (!run) throw new Error(`unknown method ${method}; one of ${Object.keys(METHODS).join(', ')}`);
  const { steps } = run(method);
  const ms = Array.from({ length: reps }, () => run(method).ms).sort((a, b) => a - b);
  console.log(`| ${method} | ${steps} | ${ms[0]!.toFixed(1)} | ${ms[ms.length >> 1]!.toFixed(1)} |`);
}
