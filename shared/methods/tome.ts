/**
 * ToMe (bipartite soft matching): pruning-spec.md §4.
 *
 * Each step sits in an encoder layer after the attention residual and before the MLP. The metric is
 * the head-mean key of the layer; tokens alternate into sets A (even) and B (odd), each A token's
 * best cosine match in B is its merge target, and the r A tokens with the strongest matches are
 * merged (size-weighted average). Sizes travel in TokenMeta.size and the schedule asks the runner to
 * add log(size) to every later attention logit (proportional attention).
 *
 * exact: the official output order [unmerged A tokens, then all B tokens], the unmerged A tokens by
 *   index with a class token and strongest match first without one, as the official code leaves them.
 * clean: the same matching and merge at each step, output in original token order (CLS first), ties
 *   broken by lower index. The order does not matter inside a ViT with absolute positions, but it
 *   becomes the LLM's visual token order, where raster order is what the model was trained on. Sets
 *   A and B are taken by position, so from the second step on the two orders split the tokens into
 *   different sets and the modes' matchings differ.
 */
import { VlmError } from '../errors';
import { fromRecipes, type RowRecipe } from './combination';
import { row } from './numeric';
import { anchorInt, checkBudgetInRange, distributeVisionRemoval } from './schedule';
import type { MethodOptions, VisionGeometry, VisionReducer, VisionSchedule, VisionStepInput, VisionStepOutput } from './types';

/** Default operating point: a third of the patches (SparseVLM's "192 of 576" row). */
const DEFAULT_KEEP_FRACTION = 1 / 3;

function protectedCount(g: { hasClassToken: boolean }): number {
  return g.hasClassToken ? 1 : 0;
}

function startLayer(g: VisionGeometry): number {
  return Math.min(g.numLayers - 1, Math.max(0, anchorInt(g.anchors, 'tome.start_layer', 0)));
}

function schedule(g: VisionGeometry, out: number, start: number) {
  const cls = protectedCount(g);
  return distributeVisionRemoval(g.numPatches + cls, g.numPatches - out, start, g.numLayers, (t) => Math.floor((t - cls) / 2));
}

/** Fewest tokens reachable from layer 0: every layer halves the unprotected tokens. */
function minimumOutput(g: VisionGeometry): number {
  const cls = protectedCount(g);
  let t = g.numPatches + cls;
  for (let l = 0; l < g.numLayers; l++) t -= Math.floor((t - cls) / 2);
  return t - cls;
}

export const tome: VisionReducer = {
  name: 'tome',
  params: {},

  feasibleRange(g: VisionGeometry) {
    return { min: minimumOutput(g), max: g.numPatches };
  },

  resolve(g: VisionGeometry, budget: number | null, options: MethodOptions): VisionSchedule {
    const target = budget ?? DEFAULT_KEEP_FRACTION * g.numPatches;
    const range = this.feasibleRange(g, options);
    checkBudgetInRange('tome', target, range, 'each layer can merge at most half of its tokens');
    const out = Math.max(range.min, Math.min(g.numPatches, Math.round(target)));
    // Start at the anchor; small budgets move the first merging layer earlier.
    let steps = null;
    for (let start = startLayer(g); start >= 0 && steps === null; start--) steps = schedule(g, out, start);
    if (steps === null) throw new VlmError('INTERNAL', `tome could not schedule ${out} output tokens`);
    return { method: 'tome', steps, outputTokens: out, proportionalAttention: true, needs: ['keys'], params: {} };
  },

  reduce(input: VisionStepInput, _schedule: VisionSchedule, options: MethodOptions): VisionStepOutput {
    const metric = input.keys;
    if (!metric) throw new VlmError('INTERNAL', 'tome needs the head-mean keys of the layer');
    const T = metric.rows;
    if (T !== input.step.tokensIn) throw new VlmError('INTERNAL', `tome step expected ${input.step.tokensIn} tokens, got ${T}`);
    const hasCls = input.tokens.origin[0] === -1;
    const r = Math.min(input.step.tokensIn - input.step.tokensOut, Math.floor((T - (hasCls ? 1 : 0)) / 2));

    // Sets by position: A the even rows, B the odd ones, each token's key normalised (cosine). Laid
    // out contiguously per set for bestMatches: the matching is most of a step's time (576 tokens on
    // LLaVA's ViT, 23 layers per request).
    const dh = metric.cols;
    const A = Array.from({ length: Math.ceil(T / 2) }, (_, k) => 2 * k);
    const B = Array.from({ length: Math.floor(T / 2) }, (_, k) => 2 * k + 1);
    const unitA = new Float64Array(A.length * dh);
    const unitB = new Float64Array(B.length * dh);
    for (let i = 0; i < T; i++) {
      const v = row(metric, i);
      let n = 0;
      for (let d = 0; d < dh; d++) n += v[d]! * v[d]!;
      n = Math.sqrt(n);
      const dst = i % 2 === 0 ? unitA : unitB;
      const o = (i >> 1) * dh;
      for (let d = 0; d < dh; d++) dst[o + d] = v[d]! / n;
    }
    const nodeMax = new Float64Array(A.length);
    const nodeIdx = new Int32Array(A.length);
    // A rows in pairs (the odd last one paired with itself); the CLS row (A's first) never merges.
    const first = hasCls ? 1 : 0;
    if (hasCls) nodeMax[0] = -Infinity;
    for (let ai = first; ai < A.length; ai += 2) {
      const next = ai + 1 < A.length ? ai + 1 : ai;
      bestMatches(unitA, ai * dh, next * dh, unitB, B.length, dh, nodeMax, nodeIdx, ai, next);
    }
    // Strongest matches first; equal scores keep index order.
    const edge = Array.from({ length: A.length }, (_, i) => i).sort((x, y) => nodeMax[y]! - nodeMax[x]! || x - y);
    const src = edge.slice(0, r);
    // The official code re-sorts the unmerged A tokens by index only with a class token; without one
    // they stay strongest-match first, which exact keeps (it decides the next step's sets A and B).
    const unm = edge.slice(r);
    if (hasCls) unm.sort((x, y) => x - y);

    const size = input.tokens.size;
    const bRecipes: Array<Array<[number, number]>> = B.map((b) => [[b, size[b]!]]);
    for (const ai of src) bRecipes[nodeIdx[ai]!]!.push([A[ai]!, size[A[ai]!]!]);

    const rows: Array<{ token: number; recipe: Array<[number, number]> }> = [
      ...unm.map((ai) => ({ token: A[ai]!, recipe: [[A[ai]!, size[A[ai]!]!]] as Array<[number, number]> })),
      ...B.map((b, bi) => ({ token: b, recipe: bRecipes[bi]! })),
    ];
    // exact keeps the official [unmerged A, B] order; clean restores original order.
    if (options.mode === 'clean') rows.sort((x, y) => x.token - y.token);

    const newSize = rows.map(({ recipe }) => recipe.reduce((acc, [, w]) => acc + w, 0));
    const recipes: RowRecipe[] = rows.map(({ recipe }, k) => recipe.map(([s, w]) => [s, w / newSize[k]!] as const));
    return {
      combine: fromRecipes(recipes),
      tokens: { origin: Int32Array.from(rows.map(({ token }) => input.tokens.origin[token]!)), size: Float32Array.from(newSize) },
    };
  },
};

/**
 * For two A rows (at offsets oa and ob), the B row with the largest dot product (the first on a
 * tie), written to max/idx at ia and ib. Two A rows times four B rows per pass over d, so each B value
 * is read once for both: each dot is still summed in order over d, so the values (and the ties) are
 * the one-pair-at-a-time loop's exactly. (SparseVLM's textDots is the same block over Float32Array
 * rows, kept apart so that each stays monomorphic.)
 */
function bestMatches(unitA: Float64Array, oa: number, ob: number, unitB: Float64Array, nB: number, dh: number, max: Float64Array, idx: Int32Array, ia: number, ib: number): void {
  let bestA = -Infinity;
  let argA = 0;
  let bestB = -Infinity;
  let argB = 0;
  let bi = 0;
  for (; bi + 3 < nB; bi += 4) {
    const o0 = bi * dh;
    const o1 = o0 + dh;
    const o2 = o1 + dh;
    const o3 = o2 + dh;
    let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    for (let d = 0; d < dh; d++) {
      const x = unitA[oa + d]!;
      const y = unitA[ob + d]!;
      const c0 = unitB[o0 + d]!, c1 = unitB[o1 + d]!, c2 = unitB[o2 + d]!, c3 = unitB[o3 + d]!;
      a0 += x * c0;
      a1 += x * c1;
      a2 += x * c2;
      a3 += x * c3;
      b0 += y * c0;
      b1 += y * c1;
      b2 += y * c2;
      b3 += y * c3;
    }
    if (a0 > bestA) (bestA = a0), (argA = bi);
    if (a1 > bestA) (bestA = a1), (argA = bi + 1);
    if (a2 > bestA) (bestA = a2), (argA = bi + 2);
    if (a3 > bestA) (bestA = a3), (argA = bi + 3);
    if (b0 > bestB) (bestB = b0), (argB = bi);
    if (b1 > bestB) (bestB = b1), (argB = bi + 1);
    if (b2 > bestB) (bestB = b2), (argB = bi + 2);
    if (b3 > bestB) (bestB = b3), (argB = bi + 3);
  }
  for (; bi < nB; bi++) {
    const o = bi * dh;
    let sa = 0;
    let sb = 0;
    for (let d = 0; d < dh; d++) {
      sa += unitA[oa + d]! * unitB[o + d]!;
      sb += unitA[ob + d]! * unitB[o + d]!;
    }
    if (sa > bestA) (bestA = sa), (argA = bi);
    if (sb > bestB) (bestB = sb), (argB = bi);
  }
  max[ia] = bestA;
  idx[ia] = argA;
  max[ib] = bestB;
  idx[ib] = argB;
}
