/**
 * FastV (baseline): pruning-spec.md §3. One cut before layer K, scored by the head-mean
 * post-softmax attention of layer K−1 from the last prompt token to each image token; the top-k image
 * tokens survive in original order and keep their original positions.
 *
 * Both modes score with the last row, as the official code does. The paper describes the average
 * attention a token receives from all others; under a causal mask that average favours early tokens
 * (they are attended by more queries), which is a positional bias rather than importance, so clean
 * keeps the code's rule rather than inventing a normalisation the authors never ran.
 */
import { VlmError } from '../errors';
import { selection } from './combination';
import { singleCut, singleCutRange, perLayerCounts, stepsFromCuts } from './language-schedule';
import { row, topkIndices } from './numeric';
import { anchorInt, checkBudgetInRange, scaleLayer } from './schedule';
import type { LanguageGeometry, LanguageReducer, LanguageSchedule, LanguageStepInput, LanguageStepOutput, MethodOptions } from './types';

function fastvAnchorK(g: LanguageGeometry): number {
  return Math.max(1, anchorInt(g.anchors, 'fastv.k', Math.max(1, scaleLayer(2, 32, g.numLayers))));
}

/** Shared with language-side random: one cut, K moved earlier when the budget needs it. */
export function singleCutSchedule(
  method: 'fastv' | 'random',
  g: LanguageGeometry,
  budget: number | null,
  positions: LanguageSchedule['positions'],
  needs: LanguageSchedule['needs'],
): LanguageSchedule {
  const V = g.visualTokens;
  const L = g.numLayers;
  const anchorK = fastvAnchorK(g);
  // Default: the paper's R = 50 % at K.
  const target = budget ?? (anchorK * V + (L - anchorK) * Math.round(V / 2)) / L;
  const range = singleCutRange(L, V);
  checkBudgetInRange(method, target, range, `layers before the cut see all ${V} visual tokens; the earliest cut is after layer 0`);
  const cut = singleCut(L, V, target, anchorK);
  if (cut === null) throw new VlmError('INTERNAL', `${method} could not place a cut for budget ${target}`);
  const cuts = cut.keep < V ? [{ layer: cut.K - 1, out: cut.keep }] : [];
  return {
    method,
    steps: stepsFromCuts('after-layer', V, cuts),
    positions,
    perLayerVisualTokens: perLayerCounts(L, V, cuts),
    needs,
    params: { k: cut.K },
  };
}

export const fastv: LanguageReducer = {
  name: 'fastv',
  // K and the keep count come from the budget and the `fastv.k` anchor alone.
  params: {},

  feasibleRange(g: LanguageGeometry) {
    return singleCutRange(g.numLayers, g.visualTokens);
  },

  resolve(g: LanguageGeometry, budget: number | null): LanguageSchedule {
    return singleCutSchedule('fastv', g, budget, 'keep', ['probs']);
  },

  reduce(input: LanguageStepInput, _schedule: LanguageSchedule, _options: MethodOptions): LanguageStepOutput {
    const A = input.probs;
    if (!A) throw new VlmError('INTERNAL', 'fastv needs the head-mean attention probabilities of layer K-1');
    const { start, length } = input.image;
    if (length !== input.step.tokensIn) throw new VlmError('INTERNAL', `fastv step expected ${input.step.tokensIn} image tokens, got ${length}`);
    const last = row(A, A.rows - 1).subarray(start, start + length);
    const keep = topkIndices(last, input.step.tokensOut).sort((a, b) => a - b);
    return { span: input.image, combine: selection(keep), image: { start, length: keep.length } };
  },
};
