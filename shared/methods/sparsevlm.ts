/**
 * SparseVLM: pruning-spec.md §2. Text raters chosen once from the layer-0 embeddings (`prepare`);
 * after each pruning layer, every image token is scored by the mean post-softmax attention the
 * raters pay it, the top ones are kept (original order), and the best 30 % of the pruned ones are
 * recycled into a few density-peak cluster tokens appended after the kept ones. Positions are
 * renumbered contiguously (v1 / v1.5).
 *
 * Counts: v1.5 (default) has a fixed keep count per pruning layer. Its budget tables (RETAIN_TOKN
 * 64/96/128/192 of 576 at layers 2/6/15 of 32) are scaled to this model: the layers come from the
 * manifest anchors, the shape of the counts is interpolated from the tables at the requested ratio,
 * and one multiplier is solved so the per-layer mean hits the budget. `params.version = 'v1'` uses the
 * v1 rule instead, keep = ⌊rank(P)·scale + bias⌋ at layers 2/6/15/19 (scaled), which depends on the
 * data: the budget must then be unset and the schedule's counts are upper bounds.
 *
 * exact and clean differ only where the official code is non-deterministic or adds a fudge: the
 * density noise of the clustering is replaced by an index tie-break in both modes (dpc-knn.ts), and
 * the cluster mean divides by count + 1e-6 in exact mode (as the code does) and by count in clean.
 */
import { VlmError } from '../errors';
import { dpcKnn } from './dpc-knn';
import { fromRecipes, type RowRecipe } from './combination';
import { perLayerCounts, stepsFromCuts } from './language-schedule';
import { average, anchorIntList, checkBudgetInRange, numberParam, scaleLayer } from './schedule';
import { row, softmax, symmetricEigenvalues, topkIndices } from './numeric';
import type {
  BudgetRange,
  LanguageGeometry,
  LanguagePrepareInput,
  LanguageReducer,
  LanguageSchedule,
  LanguageStepInput,
  LanguageStepOutput,
  MethodOptions,
} from './types';

/** v1.5 per-layer visual counts (keep + recycled clusters) over 576, at layers 2 / 6 / 15 (§2.6). */
/**
 * The v1.5 settings (spec §2.6): visual tokens per layer after the prunes at layers 2, 6 and 15 of
 * LLaVA's 32, cluster tokens included, as fractions of 576. SparseVLM labels a setting by the mean
 * it counts after each layer's prune (192, 128, ...); this project's budget counts what enters each
 * layer's attention, so the pruning layer itself still sees all 576 and a setting's budget is its
 * `ratio` here (the 192 setting is 206.5 of 576). Keyed by that ratio, a budget picks the shape of
 * the setting it equals.
 */
const V15_SETTINGS: ReadonlyArray<readonly [number, number, number]> = [
  [82, 32, 18], // "64"
  [249, 55, 27], // "96"
  [312, 117, 39], // "128"
  [309, 204, 113], // "192": RETAIN_TOKN's default
];
const V15_TABLE: ReadonlyArray<{ ratio: number; fractions: readonly number[] }> = V15_SETTINGS.map(([a, b, c]) => ({
  ratio: (3 * 576 + 4 * a + 9 * b + 16 * c) / 32 / 576,
  fractions: [a / 576, b / 576, c / 576],
}));
/** The default operating point: RETAIN_TOKN = 192, as a budget of this project. */
const DEFAULT_RATIO = V15_TABLE[V15_TABLE.length - 1]!.ratio;
const FLOAT32_EPS = 1.1920928955078125e-7;

/** Pruned tokens recycled into clusters: the best 30 % (+1). */
function recycledTokens(pruned: number): number {
  return Math.floor(pruned * 0.3) + 1;
}

/** Clusters made from `pruned` pruned tokens: 30 % (+1) are recycled, one cluster per ten (+1). */
export function recycledClusters(pruned: number): number {
  return Math.floor(recycledTokens(pruned) / 10) + 1;
}

function outAfter(tokensIn: number, keep: number): number {
  return keep + recycledClusters(tokensIn - keep);
}

/** The largest keep in [1, tokensIn-1] whose count (with clusters) does not exceed `target`. */
function keepFor(tokensIn: number, target: number): number {
  let keep = Math.max(1, Math.min(tokensIn - 1, target));
  while (keep > 1 && outAfter(tokensIn, keep) > target) keep--;
  return keep;
}

/** v1.5's budgets, and v1's keep = floor(rank x 13.5 + 0) (spec §2.4). */
const DEFAULTS = Object.freeze({ version: 'v1.5', scale: 13.5, bias: 0 } as const);

function version(options: MethodOptions): 'v1' | 'v1.5' {
  const v = options.params['version'] ?? DEFAULTS.version;
  if (v === 'v1.5') return 'v1.5';
  if (v === 'v1') return 'v1';
  throw VlmError.invalid('policy.params[version]', `must be 'v1' or 'v1.5', got ${String(v)}`);
}

function strictlyIncreasing(layers: number[], numLayers: number): number[] {
  const out: number[] = [];
  for (const l of layers) {
    const v = Math.max(l, out.length ? out[out.length - 1]! + 1 : 0);
    if (v < numLayers - 1) out.push(v);
  }
  return out;
}

function stageLayers(g: LanguageGeometry, v: 'v1' | 'v1.5'): number[] {
  const reference = v === 'v1' ? [2, 6, 15, 19] : [2, 6, 15];
  const fallback = reference.map((l) => scaleLayer(l, 32, g.numLayers));
  const key = v === 'v1' ? 'sparsevlm.v1_layers' : 'sparsevlm.layers';
  return strictlyIncreasing(anchorIntList(g.anchors, key, fallback), g.numLayers);
}

function shiftEarlier(layers: number[], d: number, numLayers: number): number[] {
  return strictlyIncreasing(layers.map((l) => Math.max(0, l - d)), numLayers);
}

function cutsFromKeeps(V: number, layers: readonly number[], keeps: readonly number[]): Array<{ layer: number; out: number }> {
  let current = V;
  return layers.map((layer, k) => {
    current = current > 1 ? outAfter(current, Math.min(keeps[k]!, current - 1)) : current;
    return { layer, out: current };
  });
}

function meanFor(g: LanguageGeometry, layers: readonly number[], keeps: readonly number[]): number {
  return average(perLayerCounts(g.numLayers, g.visualTokens, cutsFromKeeps(g.visualTokens, layers, keeps)));
}

function minimumAt(g: LanguageGeometry, layers: readonly number[]): number {
  return meanFor(g, layers, layers.map(() => 1));
}

function shapeAt(ratio: number): number[] {
  const t = V15_TABLE;
  if (ratio <= t[0]!.ratio) return [...t[0]!.fractions];
  if (ratio >= t[t.length - 1]!.ratio) return [...t[t.length - 1]!.fractions];
  let k = 0;
  while (t[k + 1]!.ratio < ratio) k++;
  const a = t[k]!;
  const b = t[k + 1]!;
  const w = (ratio - a.ratio) / (b.ratio - a.ratio);
  return a.fractions.map((f, i) => f + w * (b.fractions[i]! - f));
}

/** Keep counts for a target mean: v1.5 shape × one multiplier, then the last stage fine-tuned. */
function keepsFor(g: LanguageGeometry, layers: readonly number[], budget: number): number[] {
  const V = g.visualTokens;
  const base = shapeAt(budget / V);
  // Stages beyond the table's three (a model with more anchors) continue its last fraction.
  const shape = layers.map((_, k) => base[Math.min(k, base.length - 1)]!);
  const keepsAt = (alpha: number): number[] => {
    const keeps: number[] = [];
    let current = V;
    for (const f of shape) {
      const keep = keepFor(current, Math.max(1, Math.round(alpha * f * V)));
      keeps.push(keep);
      current = outAfter(current, keep);
    }
    return keeps;
  };
  let lo = 0;
  let hi = 1 / Math.min(...shape);
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (meanFor(g, layers, keepsAt(mid)) < budget) lo = mid;
    else hi = mid;
  }
  const candidates = [keepsAt(lo), keepsAt(hi)];
  let best = candidates[0]!;
  for (const c of candidates) if (Math.abs(meanFor(g, layers, c) - budget) < Math.abs(meanFor(g, layers, best) - budget)) best = c;
  // The last stage spans the most layers and moves the mean in the finest steps.
  const last = best.length - 1;
  const tuned = [...best];
  for (let delta = -40; delta <= 40; delta++) {
    const k = best[last]! + delta;
    if (k < 1) continue;
    const trial = [...best.slice(0, last), k];
    if (Math.abs(meanFor(g, layers, trial) - budget) < Math.abs(meanFor(g, layers, tuned) - budget)) tuned[last] = k;
  }
  return tuned;
}

export const sparsevlm: LanguageReducer = {
  name: 'sparsevlm',
  params: {
    version: { type: 'text', values: ['v1', 'v1.5'], default: DEFAULTS.version },
    // v1 only: keep = floor(rank * scale + bias).
    // Bounded so rank * scale + bias stays finite (scale 1e308 with bias -1e308 made it NaN).
    scale: { type: 'number', min: 0, max: 10_000, default: { value: DEFAULTS.scale, onlyWith: 'version v1' } },
    bias: { type: 'number', min: -10_000, max: 10_000, default: { value: DEFAULTS.bias, onlyWith: 'version v1' } },
  },

  feasibleRange(g: LanguageGeometry, options: MethodOptions): BudgetRange {
    const layers = stageLayers(g, version(options));
    if (layers.length === 0 || g.visualTokens < 2) return { min: g.visualTokens, max: g.visualTokens };
    return { min: minimumAt(g, shiftEarlier(layers, layers[0]!, g.numLayers)), max: g.visualTokens };
  },

  resolve(g: LanguageGeometry, budget: number | null, options: MethodOptions): LanguageSchedule {
    const V = g.visualTokens;
    const v = version(options);
    const anchorLayers = stageLayers(g, v);
    if (v === 'v1') {
      if (budget !== null) {
        throw VlmError.invalid('policy.budget', "sparsevlm v1 derives its counts from the rank of the raters' attention; leave the budget unset and tune params.scale / params.bias");
      }
      const scale = numberParam(options, 'scale', DEFAULTS.scale);
      const bias = numberParam(options, 'bias', DEFAULTS.bias);
      return {
        method: 'sparsevlm',
        steps: anchorLayers.map((layer) => ({ layer, at: 'after-layer' as const, tokensIn: V, tokensOut: V })),
        positions: 'renumber',
        perLayerVisualTokens: new Array<number>(g.numLayers).fill(V),
        needs: ['probs'],
        params: { version: 'v1', scale, bias },
        dataDependent: true,
      };
    }
    // v1.5 takes its counts from the budget: v1's rank rule would be dropped without a word.
    for (const name of ['scale', 'bias']) {
      if (options.params[name] !== undefined) throw VlmError.invalid(`policy.params[${name}]`, "applies to sparsevlm version 'v1' only (keep = rank x scale + bias); v1.5 takes its counts from the budget");
    }
    // Default operating point: RETAIN_TOKN = 192, raised into the feasible range on a model too
    // shallow for it (an unset budget must not fail as an infeasible one).
    const range = this.feasibleRange(g, options);
    const target = budget ?? Math.max(DEFAULT_RATIO * V, range.min);
    checkBudgetInRange('sparsevlm', target, range, `layers up to the first pruning layer see all ${V} visual tokens`);
    let layers = anchorLayers;
    for (let d = 1; d <= anchorLayers[0]! && minimumAt(g, layers) > target + 1e-9; d++) layers = shiftEarlier(anchorLayers, d, g.numLayers);
    const keeps = keepsFor(g, layers, target);
    const cuts = cutsFromKeeps(V, layers, keeps);
    return {
      method: 'sparsevlm',
      steps: stepsFromCuts('after-layer', V, cuts),
      positions: 'renumber',
      perLayerVisualTokens: perLayerCounts(g.numLayers, V, cuts),
      needs: ['probs'],
      params: { version: 'v1.5', layers: layers.join(','), keeps: keeps.join(',') },
    };
  },

  prepare(input: LanguagePrepareInput, _schedule: LanguageSchedule, _options: MethodOptions, state: Record<string, unknown>): void {
    state['sparsevlmRaters'] = selectRaters(input);
  },

  reduce(input: LanguageStepInput, schedule: LanguageSchedule, options: MethodOptions): LanguageStepOutput {
    const A = input.probs;
    if (!A) throw new VlmError('INTERNAL', 'sparsevlm needs the head-mean attention probabilities of the layer');
    const raters = input.state['sparsevlmRaters'];
    if (!(raters instanceof Int32Array)) throw new VlmError('INTERNAL', 'sparsevlm.prepare() must run before its first step');
    const { start, length: Lv } = input.image;
    const textStart = start + Lv;
    const score = raterScores(A, raters, start, Lv, textStart);

    let keep: number;
    if (schedule.params['version'] === 'v1') {
      const rank = matrixRank(A, raters, start, Lv, textStart);
      if (rank === Lv) return { span: input.image, combine: fromRecipes(Array.from({ length: Lv }, (_, i) => [[i, 1]] as const)), image: input.image };
      keep = Math.max(0, Math.min(Math.trunc(rank * Number(schedule.params['scale']) + Number(schedule.params['bias'])), Lv - 1));
    } else {
      if (Lv !== input.step.tokensIn) throw new VlmError('INTERNAL', `sparsevlm step expected ${input.step.tokensIn} image tokens, got ${Lv}`);
      keep = keepFor(Lv, input.step.tokensOut);
    }
    return { span: input.image, ...recycle(input, score, keep, options.mode) };
  },
};

/**
 * Text raters (§2.3): softmax over the text of the raw dot products between image and text
 * embeddings, averaged over image rows; raters are the text tokens above the mean (strictly, as the
 * code does). Offsets are relative to the first token after the image.
 */
export function selectRaters(input: LanguagePrepareInput): Int32Array {
  const E = input.embeds;
  const { start, length: Lv } = input.image;
  const textStart = start + Lv;
  const Lt = E.rows - textStart;
  if (Lt <= 0) throw new VlmError('INVALID_ARGUMENT', 'sparsevlm needs text after the image to choose raters');
  const relevance = new Float64Array(Lt);
  const dots = new Float64Array(Lt);
  const data = E.data;
  const D = E.cols;
  const other = new Float64Array(Lt);
  const add = (d: Float64Array) => {
    const p = softmax(d);
    for (let t = 0; t < Lt; t++) relevance[t] = relevance[t]! + p[t]! / Lv;
  };
  // Image rows in pairs (the odd last one paired with itself), added in row order.
  for (let i = 0; i < Lv; i += 2) {
    const pair = i + 1 < Lv;
    textDots(data, D, (start + i) * D, (start + (pair ? i + 1 : i)) * D, textStart * D, Lt, dots, other);
    add(dots);
    if (pair) add(other);
  }
  let mean = 0;
  for (const x of relevance) mean += x / Lt;
  const raters: number[] = [];
  for (let t = 0; t < Lt; t++) if (relevance[t]! > mean) raters.push(t);
  // All relevances equal (a one-token question): every text token rates.
  return Int32Array.from(raters.length > 0 ? raters : Array.from({ length: Lt }, (_, t) => t));
}

/**
 * Dot products of two image rows (at offsets a and b) with `count` consecutive text rows (from
 * offset t0): two image rows times four text rows per pass over d, so each text value is read once
 * for both. Every product is still summed over d in order, the same value as one pair at a time.
 * ToMe's bestMatches has the same block over Float64Array rows; one shared kernel taking both array
 * kinds measured about 30 % slower here when both methods ran in one worker (V8 optimises a function
 * for the element kinds it has seen), so each keeps its own.
 */
function textDots(data: Float32Array, D: number, a: number, b: number, t0: number, count: number, outA: Float64Array, outB: Float64Array): void {
  let t = 0;
  for (; t + 4 <= count; t += 4) {
    const r0 = t0 + t * D, r1 = r0 + D, r2 = r1 + D, r3 = r2 + D;
    let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    for (let d = 0; d < D; d++) {
      const x = data[a + d]!;
      const y = data[b + d]!;
      const c0 = data[r0 + d]!, c1 = data[r1 + d]!, c2 = data[r2 + d]!, c3 = data[r3 + d]!;
      a0 += x * c0;
      a1 += x * c1;
      a2 += x * c2;
      a3 += x * c3;
      b0 += y * c0;
      b1 += y * c1;
      b2 += y * c2;
      b3 += y * c3;
    }
    outA[t] = a0;
    outA[t + 1] = a1;
    outA[t + 2] = a2;
    outA[t + 3] = a3;
    outB[t] = b0;
    outB[t + 1] = b1;
    outB[t + 2] = b2;
    outB[t + 3] = b3;
  }
  for (; t < count; t++) {
    const r = t0 + t * D;
    let sa = 0;
    let sb = 0;
    for (let d = 0; d < D; d++) {
      sa += data[a + d]! * data[r + d]!;
      sb += data[b + d]! * data[r + d]!;
    }
    outA[t] = sa;
    outB[t] = sb;
  }
}

function raterScores(A: { rows: number; cols: number; data: Float32Array }, raters: Int32Array, start: number, Lv: number, textStart: number): Float64Array {
  const score = new Float64Array(Lv);
  for (const off of raters) {
    const r = textStart + off;
    if (r >= A.rows) throw new VlmError('INTERNAL', `sparsevlm rater row ${r} beyond the ${A.rows}-token sequence`);
    for (let j = 0; j < Lv; j++) score[j] = score[j]! + A.data[r * A.cols + start + j]! / raters.length;
  }
  return score;
}

/**
 * torch.linalg.matrix_rank of P (raters x image, fp32): singular values above σ_max·max(m,n)·eps32.
 * The singular values are the square roots of the eigenvalues of the smaller Gram matrix, in float64.
 */
export function matrixRank(A: { cols: number; data: Float32Array }, raters: Int32Array, start: number, Lv: number, textStart: number): number {
  const m = raters.length;
  const rowsAreSmall = m <= Lv;
  const n = rowsAreSmall ? m : Lv;
  const gram = new Float64Array(n * n);
  const P = (i: number, j: number): number => A.data[(textStart + raters[i]!) * A.cols + start + j]!;
  for (let a = 0; a < n; a++) {
    for (let b = a; b < n; b++) {
      let s = 0;
      if (rowsAreSmall) for (let j = 0; j < Lv; j++) s += P(a, j) * P(b, j);
      else for (let i = 0; i < m; i++) s += P(i, a) * P(i, b);
      gram[a * n + b] = s;
      gram[b * n + a] = s;
    }
  }
  const sigma = Array.from(symmetricEigenvalues(gram, n), (e) => Math.sqrt(Math.max(e, 0)));
  const tol = Math.max(...sigma) * Math.max(m, Lv) * FLOAT32_EPS;
  return sigma.filter((s) => s > tol).length;
}

/** Keep the top `keep`, recycle the best 30 % of the rest into clusters appended after them (§2.5). */
function recycle(input: LanguageStepInput, score: Float64Array, keep: number, mode: MethodOptions['mode']): Pick<LanguageStepOutput, 'combine' | 'image'> {
  const { start, length: Lv } = input.image;
  const kept = topkIndices(score, keep).sort((a, b) => a - b);
  const keptSet = new Set(kept);
  const pruned: number[] = [];
  for (let j = 0; j < Lv; j++) if (!keptSet.has(j)) pruned.push(j);
  const recipes: RowRecipe[] = kept.map((j) => [[j, 1]] as const);
  if (pruned.length > 0) {
    // The same counts the schedule planned with (outAfter), so the step lands on tokensOut.
    const recycled = topkIndices(pruned.map((j) => score[j]!), recycledTokens(pruned.length)).map((k) => pruned[k]!);
    const C = recycledClusters(pruned.length);
    const { assign } = dpcKnn(recycled.map((j) => row(input.hidden, start + j)), C);
    const members: number[][] = Array.from({ length: C }, () => []);
    recycled.forEach((j, k) => members[assign[k]!]!.push(j));
    for (const m of members) {
      // exact: the code's 1/(count + 1e-6); clean: the plain mean.
      const w = mode === 'exact' ? 1 / (m.length + 1e-6) : 1 / m.length;
      recipes.push(m.map((j) => [j, w] as const));
    }
  }
  return { combine: fromRecipes(recipes), image: { start, length: recipes.length } };
}
