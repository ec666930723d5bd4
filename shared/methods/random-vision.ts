/**
 * Vision-side random pruning (baseline): one step, at FiCoCo-V's start layer, keeps a uniformly
 * drawn set of patches (CLS always kept, original order). Seeded per request, so a request is
 * reproducible and two requests with different seeds differ.
 */
import { VlmError } from '../errors';
import { selection } from './combination';
import { sampleIndices, seededRandom } from './numeric';
import { anchorInt, checkBudgetInRange } from './schedule';
import type { MethodOptions, VisionGeometry, VisionReducer, VisionSchedule, VisionStepInput, VisionStepOutput } from './types';

export const randomVision: VisionReducer = {
  name: 'random',
  params: { start_layer: { type: 'integer', min: 0, default: { rule: "the bundle's anchor (random.start_layer, else ficoco_v.start_layer, else half the encoder's layers)" } } },

  feasibleRange(g: VisionGeometry) {
    return { min: 1, max: g.numPatches };
  },

  resolve(g: VisionGeometry, budget: number | null, options: MethodOptions): VisionSchedule {
    const target = budget ?? g.numPatches / 2;
    checkBudgetInRange('random', target, this.feasibleRange(g, options), `a vision method outputs between 1 and ${g.numPatches} tokens`);
    const out = Math.max(1, Math.min(g.numPatches, Math.round(target)));
    const cls = g.hasClassToken ? 1 : 0;
    const override = options.params['start_layer'];
    const anchored = anchorInt(g.anchors, 'random.start_layer', anchorInt(g.anchors, 'ficoco_v.start_layer', Math.floor(g.numLayers / 2)));
    const layer = Math.min(g.numLayers - 1, Math.max(0, typeof override === 'number' && Number.isInteger(override) ? override : anchored));
    const steps = out < g.numPatches ? [{ layer, tokensIn: g.numPatches + cls, tokensOut: out + cls }] : [];
    return { method: 'random', steps, outputTokens: out, proportionalAttention: false, needs: [], params: { start_layer: layer } };
  },

  reduce(input: VisionStepInput, _schedule: VisionSchedule, options: MethodOptions): VisionStepOutput {
    const T = input.tokens.origin.length;
    if (T !== input.step.tokensIn) throw new VlmError('INTERNAL', `random step expected ${input.step.tokensIn} tokens, got ${T}`);
    const cls = input.tokens.origin[0] === -1 ? 1 : 0;
    const rand = seededRandom(options.seed, Math.imul(input.step.layer + 1, 0x9e3779b1));
    const keep = [...(cls ? [0] : []), ...sampleIndices(T - cls, input.step.tokensOut - cls, rand).map((i) => i + cls)];
    return {
      combine: selection(keep),
      tokens: {
        origin: Int32Array.from(keep.map((i) => input.tokens.origin[i]!)),
        size: Float32Array.from(keep.map((i) => input.tokens.size[i]!)),
      },
    };
  },
};
