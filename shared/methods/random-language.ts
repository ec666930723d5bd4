/**
 * Language-side random pruning (baseline): FastV's single cut (same K and count for the budget) with
 * a seeded uniform choice instead of attention, positions renumbered.
 */
import { VlmError } from '../errors';
import { selection } from './combination';
import { singleCutSchedule } from './fastv';
import { singleCutRange } from './language-schedule';
import { sampleIndices, seededRandom } from './numeric';
import type { LanguageGeometry, LanguageReducer, LanguageSchedule, LanguageStepInput, LanguageStepOutput, MethodOptions } from './types';

export const randomLanguage: LanguageReducer = {
  name: 'random',
  params: {},

  feasibleRange(g: LanguageGeometry) {
    return singleCutRange(g.numLayers, g.visualTokens);
  },

  resolve(g: LanguageGeometry, budget: number | null): LanguageSchedule {
    return singleCutSchedule('random', g, budget, 'renumber', []);
  },

  reduce(input: LanguageStepInput, _schedule: LanguageSchedule, options: MethodOptions): LanguageStepOutput {
    const { start, length } = input.image;
    if (length !== input.step.tokensIn) throw new VlmError('INTERNAL', `random step expected ${input.step.tokensIn} image tokens, got ${length}`);
    const rand = seededRandom(options.seed, Math.imul(input.step.layer + 101, 0x85ebca77));
    const keep = sampleIndices(length, input.step.tokensOut, rand);
    return { span: input.image, combine: selection(keep), image: { start, length: keep.length } };
  },
};
