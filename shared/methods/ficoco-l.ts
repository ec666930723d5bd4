/**
 * FiCoCo-L (Filter, Correlate, Compress inside the language decoder): pruning-spec.md §1.3.
 *
 * Steps sit in decoder layers from the start layer on, after the attention residual and before the
 * MLP, at prefill. They read the head-mean pre-softmax logits of the layer WITHOUT the causal mask
 * (the `scores` output), so visual queries see text keys.
 *
 * clean (default): the true image span is the visual set and the tokens after it are the text (the
 *   question); paper Eq. 3-5 normalisation (means over visual and text tokens, (1/M) on the indirect
 *   term), targets are preserved image tokens with per-token counts n_i, weights a softmax over each
 *   token's targets, and the self-preserving average (X_j + Σ α X_i) / (1 + Σ α).
 * exact: the released code (checkpoint version, §1.3.4): the visual set is rows [0, V) with V the
 *   code's slot count (it starts at the number of image tokens and loses r per step), row 0 is
 *   protected, the visual-visual term is a sum, the indirect term a plain product sum, one K = max
 *   n_i, targets over all V columns (a discarded target loses the contribution), no division.
 */
import { VlmError } from '../errors';
import { fromRecipes, type RowRecipe } from './combination';
import { constantRateCuts, declineCuts, meanOfCuts, perLayerCounts, stepsFromCuts } from './language-schedule';
import { quantileLinear, row, softmax, topkIndices } from './numeric';
import { anchorInt, checkBudgetInRange, numberParam, scaleLayer, solveMonotone } from './schedule';
import type { BudgetRange, LanguageGeometry, LanguageReducer, LanguageSchedule, LanguageStepInput, LanguageStepOutput, Matrix, MethodOptions } from './types';

interface FicocoLParams {
  beta: number;
  gamma: number;
  epsilon: number;
}

/** The released code's g, a and quantile (spec §1.3.1). */
const DEFAULTS: FicocoLParams = Object.freeze({ beta: 0.6, gamma: 0.6, epsilon: 0.998 });

function params(options: MethodOptions): FicocoLParams {
  const num = (k: keyof FicocoLParams): number => numberParam(options, k, DEFAULTS[k]);
  return { beta: num('beta'), gamma: num('gamma'), epsilon: num('epsilon') };
}

/** Share of the layers after the start over which the tokens decline to their floor. */
const DEFAULT_DECLINE_FRACTION = 1 / 3;

function numberOr(v: unknown, fallback: number): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback;
}

function anchorStart(g: LanguageGeometry): number {
  return Math.min(g.numLayers - 2, Math.max(0, anchorInt(g.anchors, 'ficoco_l.start_layer', scaleLayer(5, 32, g.numLayers))));
}

function minimumAt(g: LanguageGeometry, start: number): number {
  return meanOfCuts(g.numLayers, g.visualTokens, constantRateCuts(g.numLayers, g.visualTokens, start, g.visualTokens));
}

export const ficocoL: LanguageReducer = {
  name: 'ficoco-l',
  params: {
    // Weights and the quantile are fractions (beyond them the merge weights overflow to non-finite values).
    beta: { type: 'number', min: 0, max: 1, default: DEFAULTS.beta },
    gamma: { type: 'number', min: 0, max: 1, default: DEFAULTS.gamma },
    epsilon: { type: 'number', min: 0, max: 1, default: DEFAULTS.epsilon },
    decline_layers: { type: 'integer', min: 1, max: 1000, default: { rule: 'a third of the layers after the start layer (only with a budget)' } },
  },

  feasibleRange(g: LanguageGeometry): BudgetRange {
    if (g.numLayers < 2) return { min: g.visualTokens, max: g.visualTokens };
    return { min: Math.min(g.visualTokens, minimumAt(g, 0)), max: g.visualTokens };
  },

  resolve(g: LanguageGeometry, budget: number | null, options: MethodOptions): LanguageSchedule {
    const V = g.visualTokens;
    const L = g.numLayers;
    const anchor = anchorStart(g);
    let start = anchor;
    let x: number;
    // Without a budget the released schedule runs, which has no decline to shape: a value sent would
    // silently do nothing, and the answer would look like the schedule the caller asked for.
    if (budget === null && options.params['decline_layers'] !== undefined) throw VlmError.invalid('policy.params[decline_layers]', 'shapes the schedule of a budget; set policy.budget too');
    if (budget === null) {
      // The released operating point: 14 of 576 visual tokens leave per layer from the anchor.
      x = (14 * V) / 576;
    } else {
      checkBudgetInRange('ficoco-l', budget, this.feasibleRange(g, options), `layers up to the first step see all ${V} visual tokens`);
      x = 0;
    }
    let cuts = L >= 2 ? constantRateCuts(L, V, start, x) : [];
    let decline = 0;
    if (budget !== null && L >= 2) {
      // Tokens leave at a constant rate over `decline` layers from the start, down to a floor that
      // then stays to the last layer; the floor is solved so the mean is the budget. Small budgets
      // shorten the decline, then move the start earlier.
      const wanted = Math.max(1, Math.round(numberOr(options.params['decline_layers'], DEFAULT_DECLINE_FRACTION * (L - 1 - anchor))));
      const fits = (s: number, m: number) => meanOfCuts(L, V, declineCuts(L, V, s, m, 1)) <= budget + 1e-9;
      let found = false;
      for (start = anchor; start >= 0 && !found; start--) {
        for (decline = Math.min(wanted, L - 1 - start); decline >= 1 && !found; decline--) found = fits(start, decline);
      }
      start++;
      decline++;
      const floor = V - solveMonotone((v) => meanOfCuts(L, V, declineCuts(L, V, start, decline, V - v)), budget, 0, V - 1);
      cuts = declineCuts(L, V, start, decline, floor);
    }
    return {
      method: 'ficoco-l',
      steps: stepsFromCuts('after-attn', V, cuts),
      // Both modes: a decoded token's position is the layer's cache length. The released code instead
      // subtracts 14 per merging layer cumulatively in decode (spec §1.3.5), 14 below that length at
      // every layer from 5 on, so its new token collides with cached positions; exact does not copy that.
      positions: 'renumber',
      perLayerVisualTokens: perLayerCounts(L, V, cuts),
      needs: ['scores'],
      params: { ...params(options), start_layer: start, ...(decline ? { decline_layers: decline } : {}) },
      // exact: the counts are the code's [0, V) slots, which include the prompt prefix; how many true
      // image tokens each step removes depends on the scores, so the runner reports what it measured.
      ...(options.mode === 'exact' ? { dataDependent: true } : {}),
    };
  },

  reduce(input: LanguageStepInput, _schedule: LanguageSchedule, options: MethodOptions): LanguageStepOutput {
    const S = input.scores;
    if (!S) throw new VlmError('INTERNAL', 'ficoco-l needs the unmasked head-mean logits (scores) of the layer');
    const r = input.step.tokensIn - input.step.tokensOut;
    // Exact's slot count may include prompt-prefix tokens (dataDependent); clean's span must be the step's.
    if (options.mode !== 'exact' && input.image.length !== input.step.tokensIn) {
      throw new VlmError('INTERNAL', `ficoco-l step expected ${input.step.tokensIn} image tokens, got ${input.image.length}`);
    }
    return options.mode === 'exact' ? reduceExact(input, S, r, params(options)) : reduceClean(input, S, r, params(options));
  },
};

function at(S: Matrix, i: number, j: number): number {
  return S.data[i * S.cols + j]!;
}

/**
 * out[j] = Σ_{k in [kFrom, kTo)} S[i, k] · S[k, colFrom + j] for j < out.length. Reads S along its
 * rows, four text rows per pass over out; every sum still adds its terms one by one in k order, so
 * the result is the same double as the plain column-by-column loop.
 */
function indirectRow(S: Matrix, i: number, kFrom: number, kTo: number, colFrom: number, out: Float64Array): void {
  const s = S.data;
  const cols = S.cols;
  const n = out.length;
  out.fill(0);
  let k = kFrom;
  for (; k + 4 <= kTo; k += 4) {
    const a0 = s[i * cols + k]!, a1 = s[i * cols + k + 1]!, a2 = s[i * cols + k + 2]!, a3 = s[i * cols + k + 3]!;
    const r0 = k * cols + colFrom, r1 = r0 + cols, r2 = r1 + cols, r3 = r2 + cols;
    for (let j = 0; j < n; j++) {
      let v = out[j]!;
      v += a0 * s[r0 + j]!;
      v += a1 * s[r1 + j]!;
      v += a2 * s[r2 + j]!;
      v += a3 * s[r3 + j]!;
      out[j] = v;
    }
  }
  for (; k < kTo; k++) {
    const a = s[i * cols + k]!;
    const r = k * cols + colFrom;
    for (let j = 0; j < n; j++) out[j] = out[j]! + a * s[r + j]!;
  }
}

// ---------------------------------------------------------------------------------------------
// exact

function reduceExact(input: LanguageStepInput, S: Matrix, r: number, p: FicocoLParams): LanguageStepOutput {
  const L = S.rows;
  // The code's visual slot count: [0, V) is "visual", [V, L) "text", whatever the prompt layout.
  const V = typeof input.state['ficocoLSlots'] === 'number' ? (input.state['ficocoLSlots'] as number) : input.image.length;
  if (V > L) throw new VlmError('INTERNAL', `ficoco-l exact: ${V} visual slots in a ${L}-token sequence`);

  // FILTER: 0.6·Σ_j S_vv (a sum, diagonal included) − 0.4·mean_k S_vt; row 0 protected.
  const red = new Float64Array(V);
  for (let i = 0; i < V; i++) {
    const Si = row(S, i);
    let vv = 0;
    for (let j = 0; j < V; j++) vv += Si[j]!;
    let vt = 0;
    for (let k = V; k < L; k++) vt += Si[k]!;
    red[i] = Math.fround(p.beta * vv - (1 - p.beta) * (vt / (L - V)));
  }
  red[0] = -Infinity;
  const discard = topkIndices(red, r);
  const dropped = new Set(discard);
  const remain: number[] = [];
  for (let i = 0; i < V; i++) if (!dropped.has(i)) remain.push(i);

  // CORRELATE: C = 0.6·S_vv + 0.4·(S_vt @ S_tv) with −inf diagonal, over all V columns.
  const ind = new Float64Array(V);
  const C = discard.map((i) => {
    const c = new Float64Array(V);
    indirectRow(S, i, V, L, 0, ind);
    for (let j = 0; j < V; j++) c[j] = i === j ? -Infinity : Math.fround(p.gamma * at(S, i, j) + (1 - p.gamma) * ind[j]!);
    return c;
  });
  let K = 0;
  for (const c of C) {
    const tau = Math.fround(quantileLinear(c, p.epsilon));
    let n = 0;
    for (const v of c) if (v > tau) n++;
    K = Math.max(K, n);
  }

  // COMPRESS: X'[j] += w·X[i] on original positions, keep X'[remain]; no normalisation.
  const recipes = new Map<number, Array<[number, number]>>(remain.map((j) => [j, [[j, 1]]]));
  discard.forEach((i, d) => {
    const prob = softmax(C[d]!);
    const targets = topkIndices(prob, K);
    const total = targets.reduce((a, j) => a + prob[j]!, 0);
    // A target that is itself discarded is dropped with it: its contribution is lost.
    for (const j of targets) recipes.get(j)?.push([i, prob[j]! / total]);
  });
  input.state['ficocoLSlots'] = V - r;

  // The true image span after the step: kept rows keep their order, so kept image rows stay contiguous.
  const imgStart = input.image.start;
  const imgEnd = imgStart + input.image.length;
  // Rows at V and after are all kept: an image that starts past the slots (a long prompt prefix, late
  // in an exact schedule) moves up by the r rows removed before it.
  const keptBefore = remain.filter((j) => j < imgStart).length + Math.max(0, imgStart - V);
  const removedInImage = discard.filter((i) => i >= imgStart && i < imgEnd).length;
  return {
    span: { start: 0, length: V },
    combine: fromRecipes(remain.map((j) => recipes.get(j)!)),
    image: { start: keptBefore, length: input.image.length - removedInImage },
  };
}

// ---------------------------------------------------------------------------------------------
// clean

function reduceClean(input: LanguageStepInput, S: Matrix, r: number, p: FicocoLParams): LanguageStepOutput {
  const L = S.rows;
  const { start, length: N } = input.image;
  const textStart = start + N;
  const M = L - textStart;
  if (M <= 0) throw new VlmError('INTERNAL', 'ficoco-l needs text tokens after the image');

  // FILTER (Eq. 3): β·mean over image keys − (1−β)·mean over text keys. The image mean includes the
  // token's own key, as the released code's sum does (it builds a -inf-diagonal copy and never uses
  // it); the paper's Σ_j does not say.
  const red = new Float64Array(N);
  const s = S.data;
  const cols = S.cols;
  for (let i = 0; i < N; i++) {
    const rowAt = (start + i) * cols;
    let vv = 0;
    for (let j = start; j < start + N; j++) vv += s[rowAt + j]!;
    let vt = 0;
    for (let k = textStart; k < L; k++) vt += s[rowAt + k]!;
    red[i] = p.beta * (vv / N) - (1 - p.beta) * (vt / M);
  }
  const discard = topkIndices(red, r);
  const dropped = new Set(discard);
  const remain: number[] = [];
  for (let i = 0; i < N; i++) if (!dropped.has(i)) remain.push(i);

  // CORRELATE (Eq. 4): direct γ·S_ij plus indirect (1−γ)·(1/M) Σ_k S_ik S_kj, preserved targets only.
  // On logits, as the released code computes it (the paper writes attention A): a product of two
  // negative logits (both avoiding the text token k) adds as much as two positive ones, which the
  // paper's non-negative A·A would not.
  const recipes: Array<Array<[number, number]>> = remain.map((j) => [[j, 1]]);
  const denom = new Float64Array(remain.length).fill(1);
  const ind = new Float64Array(N);
  const c = new Float64Array(remain.length);
  for (const i of discard) {
    if (c.length === 0) continue;
    // Σ_k S_ik S_kj for every image column at once, text row by text row, so S is read along its
    // rows; each column's sum still adds its terms in k order (the same value as column by column).
    indirectRow(S, start + i, textStart, L, start, ind);
    const rowAt = (start + i) * cols;
    remain.forEach((j, k) => (c[k] = p.gamma * s[rowAt + start + j]! + (1 - p.gamma) * (ind[j]! / M)));
    const tau = quantileLinear(c, p.epsilon);
    const chosen = remain.map((_, k) => k).filter((k) => c[k]! >= tau);
    // Correlations are logits (possibly negative), so the weights are a softmax over the targets.
    const w = softmax(chosen.map((k) => c[k]!));
    // COMPRESS (Eq. 5) into the intended token.
    chosen.forEach((k, t) => {
      recipes[k]!.push([i, w[t]!]);
      denom[k] = denom[k]! + w[t]!;
    });
  }
  const normalised: RowRecipe[] = recipes.map((rec, k) => rec.map(([s, w]) => [s, w / denom[k]!] as const));
  return { span: input.image, combine: fromRecipes(normalised), image: { start, length: remain.length } };
}
