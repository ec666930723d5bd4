/**
 * `none` on both sides: the unreduced model. Its schedules carry no steps, so the runner never calls
 * `reduce`; they still report the per-layer visual token counts so that FLOPs and the achieved budget
 * are computed the same way for every method.
 */
import { VlmError } from '../errors';
import type {
  LanguageGeometry,
  LanguageReducer,
  LanguageSchedule,
  VisionGeometry,
  VisionReducer,
  VisionSchedule,
} from './types';

function rejectBudget(side: string, budget: number | null, unreduced: number): void {
  if (budget !== null && budget !== unreduced) {
    throw VlmError.invalid(
      'policy.budget',
      `${side} method 'none' keeps all ${unreduced} visual tokens, so a budget needs a reduction method: set vision_method, language_method or preset (or leave the budget unset)`,
    );
  }
}

export const noneVision: VisionReducer = {
  name: 'none',
  params: {},
  resolve(geometry: VisionGeometry, budget: number | null): VisionSchedule {
    rejectBudget('vision', budget, geometry.numPatches);
    return { method: 'none', steps: [], outputTokens: geometry.numPatches, proportionalAttention: false, needs: [], params: {} };
  },
  feasibleRange(geometry: VisionGeometry) {
    return { min: geometry.numPatches, max: geometry.numPatches };
  },
  reduce() {
    throw new VlmError('INTERNAL', "vision method 'none' has no steps; reduce() must not be called");
  },
};

export const noneLanguage: LanguageReducer = {
  name: 'none',
  params: {},
  resolve(geometry: LanguageGeometry, budget: number | null): LanguageSchedule {
    rejectBudget('language', budget, geometry.visualTokens);
    return {
      method: 'none',
      steps: [],
      positions: 'renumber',
      perLayerVisualTokens: new Array<number>(geometry.numLayers).fill(geometry.visualTokens),
      needs: [],
      params: {},
    };
  },
  feasibleRange(geometry: LanguageGeometry) {
    return { min: geometry.visualTokens, max: geometry.visualTokens };
  },
  reduce() {
    throw new VlmError('INTERNAL', "language method 'none' has no steps; reduce() must not be called");
  },
};
