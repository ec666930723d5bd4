/**
 * FiCoCo-V (Filter, Correlate, Compress inside the vision encoder): pruning-spec.md §1.2.
 *
 * Each step sits in an encoder layer after the attention residual and before the MLP and removes
 * r = tokensIn - tokensOut tokens, merging each discarded token into the tokens it correlates with.
 *
 * clean (default): the spec's recommended re-implementation (§1.2.4): paper λ placement on the
 *   head-mean attention probabilities, CLS kept at index 0, original token order, a grid-correct 2x2
 *   local penalty from each token's original patch position (discarded cells are padding), per-token
 *   target counts n_i, targets restricted to preserved patches, the self-preserving average written
 *   into the intended token, ties broken by lower index.
 * exact: the released code (§1.2.3): head-mean pre-softmax logits, code λ placement (0.35 on the CLS
 *   term) after L2 normalisation, the keep-score-sorted output order with index 0 last, one K = max
 *   n_i for every discarded token, targets over all columns and the mis-addressed scatter slots. The
 *   code's process-wide local-penalty tensor becomes per-request state here (fresh for every image),
 *   which is what the code does for the first image after process start. Its hard-coded 576 patches
 *   and 144 windows generalise to P patches and (grid/2)^2 windows.
 */
import { VlmError } from '../errors';
import { fromRecipes, type RowRecipe } from './combination';
import { argsortAscending, l2normalize, mean, quantileLinear, row, softmax, topkIndices } from './numeric';
import { anchorInt, checkBudgetInRange, distributeVisionRemoval, numberParam } from './schedule';
import type {
  MethodOptions,
  VisionGeometry,
  VisionReducer,
  VisionSchedule,
  VisionStepInput,
  VisionStepOutput,
} from './types';

/** The released operating point: r=42 from layer 12 leaves 114 of 576 patches. */
const DEFAULT_KEEP_FRACTION = 114 / 576;

interface FicocoVParams {
  lambda: number;
  epsilon: number;
  window: number;
  penalty: number;
}

/** The released code's λ, quantile and local penalty (spec §1.2). */
const DEFAULTS: FicocoVParams = Object.freeze({ lambda: 0.35, epsilon: 0.998, window: 2, penalty: 2 });

function params(options: MethodOptions): FicocoVParams {
  const num = (k: keyof FicocoVParams): number => numberParam(options, k, DEFAULTS[k]);
  return { lambda: num('lambda'), epsilon: num('epsilon'), window: num('window'), penalty: num('penalty') };
}

export const ficocoV: VisionReducer = {
  name: 'ficoco-v',
  params: {
    // Weights and the quantile are fractions; the local penalty divides by `penalty` and groups patches
    // in windows of `window` (a zero or a fraction of either would divide by zero or by less than one).
    lambda: { type: 'number', min: 0, max: 1, default: DEFAULTS.lambda },
    epsilon: { type: 'number', min: 0, max: 1, default: DEFAULTS.epsilon },
    window: { type: 'integer', min: 1, max: 64, default: DEFAULTS.window },
    penalty: { type: 'number', min: 1, max: 1000, default: DEFAULTS.penalty },
    start_layer: { type: 'integer', min: 0, default: { rule: "the bundle's anchor (ficoco_v.start_layer, else half the encoder's layers), earlier where the budget needs it" } },
  },

  feasibleRange(g: VisionGeometry, options: MethodOptions) {
    if (options.mode !== 'exact') return { min: 1, max: g.numPatches };
    // exact: a step can remove at most half its tokens (see stepCap), so at best every layer halves.
    let t = g.numPatches + (g.hasClassToken ? 1 : 0);
    for (let l = 0; l < g.numLayers; l++) t -= stepCap('exact', t, 1);
    // At least one patch stays (CLS aside), however deep the encoder.
    return { min: Math.max(1, t - 1), max: g.numPatches };
  },

  resolve(g: VisionGeometry, budget: number | null, options: MethodOptions): VisionSchedule {
    const p = params(options);
    const P = g.numPatches;
    if (!g.hasClassToken) {
      // The paper's no-CLS proxy (App. 10.2) is not in the released code and not implemented here.
      throw VlmError.invalid('policy.vision_method', 'ficoco-v scores tokens by their [CLS] attention and this vision tower has no class token; use tome or random');
    }
    const target = budget ?? DEFAULT_KEEP_FRACTION * P;
    checkBudgetInRange('ficoco-v', target, this.feasibleRange(g, options), options.mode === 'exact' ? 'in exact mode a layer removes at most half of its tokens' : `a vision method outputs between 1 and ${P} tokens`);
    const out = Math.max(1, Math.min(P, Math.round(target)));
    const cls = g.hasClassToken ? 1 : 0;
    // A step keeps CLS and at least one patch; compression starts at the anchor (layer 12 of 24 in
    // LLaVA) and moves earlier only if the remaining layers cannot remove enough.
    let steps = null;
    const override = options.params['start_layer'];
    // Clamped to the last layer: the search below steps down one layer at a time, and from 2^53 it
    // would hold the thread for good (the language service resolves this on its event loop).
    const first = Math.min(g.numLayers - 1, typeof override === 'number' && Number.isInteger(override) ? override : anchorInt(g.anchors, 'ficoco_v.start_layer', Math.floor(g.numLayers / 2)));
    for (let start = first; start >= 0 && steps === null; start--) {
      steps = distributeVisionRemoval(P + cls, P - out, start, g.numLayers, (t) => stepCap(options.mode, t, cls));
    }
    if (steps === null) throw new VlmError('INTERNAL', `ficoco-v could not schedule ${P - out} removals`);
    return {
      method: 'ficoco-v',
      steps,
      outputTokens: out,
      proportionalAttention: false,
      needs: options.mode === 'exact' ? ['scores'] : ['probs'],
      // Where compression starts: the anchor or the request's layer (clamped to the last), or an
      // earlier one where the budget needed more layers.
      params: { ...p, start_layer: steps[0]?.layer ?? first, grid: g.grid },
    };
  },

  reduce(input: VisionStepInput, schedule: VisionSchedule, options: MethodOptions): VisionStepOutput {
    const T = input.tokens.origin.length;
    if (T !== input.step.tokensIn) {
      throw new VlmError('INTERNAL', `ficoco-v step at layer ${input.step.layer} expected ${input.step.tokensIn} tokens, got ${T}`);
    }
    const r = input.step.tokensIn - input.step.tokensOut;
    const grid = schedule.params['grid'];
    if (typeof grid !== 'number') throw new VlmError('INTERNAL', 'ficoco-v schedule lacks the patch grid size');
    return options.mode === 'exact' ? reduceExact(input, r, grid, params(options)) : reduceClean(input, r, grid, params(options));
  },
};

/**
 * Most tokens one step may remove. clean: all but CLS and one patch. exact: half, because the
 * code's slot arithmetic (j − r for targets j ≥ T − r) only lands inside Y when r ≤ T − r; beyond
 * that the official scatter_add_ fails with a negative index.
 */
function stepCap(mode: MethodOptions['mode'], tokensIn: number, cls: number): number {
  return mode === 'exact' ? Math.floor(tokensIn / 2) : tokensIn - cls - 1;
}

// ---------------------------------------------------------------------------------------------
// exact

function reduceExact(input: VisionStepInput, r: number, grid: number, p: FicocoVParams): VisionStepOutput {
  const S = input.scores;
  if (!S) throw new VlmError('INTERNAL', 'ficoco-v exact needs the scores (pre-softmax logits) of the layer');
  const T = S.rows;

  // FILTER: code λ placement (0.35 on the CLS term), both vectors L2-normalised, on logits.
  const cls = new Float64Array(T - 1);
  const patch = new Float64Array(T - 1);
  const s0 = row(S, 0);
  for (let i = 1; i < T; i++) {
    cls[i - 1] = s0[i]!;
    patch[i - 1] = mean(row(S, i), 1, T);
  }
  const cn = l2normalize(cls);
  const pn = l2normalize(patch);
  const u = new Float64Array(T - 1);
  for (let i = 0; i < T - 1; i++) u[i] = Math.fround(p.lambda * cn[i]! - (1 - p.lambda) * pn[i]!);

  codeLocalPenalty(u, penaltyGrid(input.state, grid), grid, p);

  // Index 0 gets +inf so it sorts last: the output order is ascending keep-score with index 0 last.
  const z = Float64Array.from([Infinity, ...u]);
  const order = argsortAscending(z);
  const discard = order.slice(0, r);
  const remain = order.slice(r);

  // CORRELATE: one K for every discarded token, the largest per-row count above the quantile.
  let K = 0;
  for (const i of discard) {
    const si = row(S, i);
    const tau = Math.fround(quantileLinear(si, p.epsilon));
    let n = 0;
    for (let j = 0; j < T; j++) if (si[j]! > tau) n++;
    K = Math.max(K, n);
  }

  // COMPRESS: Y = X[remain]; the contribution for target j lands on slot j (or j - r), which indexes
  // the reordered Y, so it reaches token remain[slot], not token j (the code's mis-addressing).
  const keep = T - r;
  const recipes: Array<Array<[number, number]>> = remain.map((j) => [[j, 1]]);
  const denom = new Float64Array(keep).fill(1);
  if (K > 0) {
    for (const i of discard) {
      const prob = softmax(row(S, i));
      const targets = topkIndices(prob, K);
      const total = targets.reduce((a, j) => a + prob[j]!, 0);
      for (const j of targets) {
        const slot = j < keep ? j : j - r;
        const w = prob[j]! / total;
        recipes[slot]!.push([i, w]);
        denom[slot] = denom[slot]! + w;
      }
    }
  }
  return finish(input, remain, recipes, denom);
}

/** The code's module-level (1, P) tensor, kept per request; it starts at 1e9 everywhere. */
function penaltyGrid(state: Record<string, unknown>, grid: number): Float64Array {
  let g = state['ficocoVPenaltyGrid'];
  if (!(g instanceof Float64Array)) {
    g = new Float64Array(grid * grid).fill(1e9);
    state['ficocoVPenaltyGrid'] = g;
  }
  return g as Float64Array;
}

function codeLocalPenalty(u: Float64Array, G: Float64Array, grid: number, p: FicocoVParams): void {
  // a. write u into the still-finite slots of G, in slot order
  let k = 0;
  for (let slot = 0; slot < G.length && k < u.length; slot++) if (G[slot] !== Infinity) G[slot] = u[k++]!;
  // b. argmin of G in each window (first occurrence, window cells in row-major order)
  const w = p.window;
  const windows = Math.floor(grid / w);
  const picked: number[] = [];
  for (let wy = 0; wy < windows; wy++) {
    for (let wx = 0; wx < windows; wx++) {
      let best = -1;
      for (let dy = 0; dy < w; dy++) {
        for (let dx = 0; dx < w; dx++) {
          const cell = (wy * w + dy) * grid + wx * w + dx;
          if (best < 0 || G[cell]! < G[best]!) best = cell;
        }
      }
      picked.push(best);
    }
  }
  // c-e. the grid positions are used as indices into the current u (the code's shortcut)
  for (const pos of picked) {
    if (pos >= u.length) continue;
    u[pos] = u[pos]! > 0 ? u[pos]! / p.penalty : u[pos]! * p.penalty;
    G[pos] = Infinity;
  }
}

// ---------------------------------------------------------------------------------------------
// clean

function reduceClean(input: VisionStepInput, r: number, grid: number, p: FicocoVParams): VisionStepOutput {
  const A = input.probs;
  if (!A) throw new VlmError('INTERNAL', 'ficoco-v clean needs the probs (head-mean attention) of the layer');
  const T = A.rows;
  const origin = input.tokens.origin;
  if (origin[0] !== -1) throw new VlmError('INTERNAL', 'ficoco-v clean expects the class token at index 0');

  // FILTER (paper Eq. 1): redundancy s_i = λ·mean_j A[i, patches] − (1−λ)·A[CLS, i]; clean puts λ
  // on the patch term as the paper does (the code puts it on the CLS term). With A a softmax over all
  // keys, the patch mean (the token's own key included) is (1 − A[i, CLS]) / (T − 1): the paper's
  // "patch redundancy" is how little the token attends to CLS. The released code reads logits, whose
  // row means do differ across keys; exact mode does that.
  const s = new Float64Array(T).fill(-Infinity);
  const a0 = row(A, 0);
  for (let i = 1; i < T; i++) s[i] = p.lambda * mean(row(A, i), 1, T) - (1 - p.lambda) * a0[i]!;

  // Local penalty on the original grid: in every window the most redundant present token becomes
  // more redundant (×2 if positive, ÷2 if negative). Cells of discarded patches are padding.
  const best = new Map<number, number>();
  for (let i = 1; i < T; i++) {
    const o = origin[i]!;
    if (o < 0) continue;
    const win = Math.floor(Math.floor(o / grid) / p.window) * grid + Math.floor((o % grid) / p.window);
    const cur = best.get(win);
    if (cur === undefined || s[i]! > s[cur]!) best.set(win, i);
  }
  for (const i of best.values()) s[i] = s[i]! > 0 ? s[i]! * p.penalty : s[i]! / p.penalty;

  const discard = topkIndices(s, r);
  const dropped = new Set(discard);
  const remain: number[] = [];
  for (let i = 0; i < T; i++) if (!dropped.has(i)) remain.push(i);
  const preservedPatches = remain.filter((i) => i !== 0);

  // CORRELATE: per-token targets among preserved patches, C_ij ≥ quantile_ε(C_i).
  const slotOf = new Map(remain.map((j, k) => [j, k] as const));
  const recipes: Array<Array<[number, number]>> = remain.map((j) => [[j, 1]]);
  const denom = new Float64Array(remain.length).fill(1);
  for (const i of discard) {
    const ai = row(A, i);
    const c = preservedPatches.map((j) => ai[j]!);
    if (c.length === 0) continue;
    const tau = quantileLinear(c, p.epsilon);
    const targets = preservedPatches.filter((_, k) => c[k]! >= tau);
    const total = targets.reduce((acc, j) => acc + ai[j]!, 0);
    if (!(total > 0)) continue;
    // COMPRESS into the intended token: (X_j + Σ α X_i) / (1 + Σ α).
    for (const j of targets) {
      const slot = slotOf.get(j)!;
      const w = ai[j]! / total;
      recipes[slot]!.push([i, w]);
      denom[slot] = denom[slot]! + w;
    }
  }
  return finish(input, remain, recipes, denom);
}

function finish(input: VisionStepInput, remain: number[], recipes: Array<Array<[number, number]>>, denom: Float64Array): VisionStepOutput {
  const normalised: RowRecipe[] = recipes.map((rec, k) => rec.map(([src, w]) => [src, w / denom[k]!] as const));
  const combine = fromRecipes(normalised);
  const origin = Int32Array.from(remain.map((j) => input.tokens.origin[j]!));
  // size is bookkeeping only (FiCoCo has no proportional attention): patches each row carries.
  const size = Float32Array.from(recipes.map((rec) => rec.reduce((a, [src, w]) => a + w * input.tokens.size[src]!, 0)));
  return { combine, tokens: { origin, size } };
}
