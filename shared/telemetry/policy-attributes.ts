import type { Attributes } from '@opentelemetry/api';
import { METHOD_PRESETS, type ReductionPolicy } from '../methods/policy';
import { isLanguageMethod, isVisionMethod } from '../methods/registry';
import {
  ATTR_VLM_REDUCTION_BUDGET,
  ATTR_VLM_REDUCTION_LANGUAGE_METHOD,
  ATTR_VLM_REDUCTION_METHOD,
  ATTR_VLM_REDUCTION_VISION_METHOD,
} from './names';

/**
 * A request's policy as span attributes: the one method name the trace report groups by (the preset
 * name for FiCoCo-V + FiCoCo-L, the active side's name when the other is `none`, `vision+language`
 * otherwise; see methodName), both sides, and the budget (budgetAttribute).
 */
export function policyAttributes(policy: Pick<ReductionPolicy, 'vision' | 'language' | 'budget'>): Attributes {
  return {
    [ATTR_VLM_REDUCTION_METHOD]: methodName(policy.vision, policy.language),
    [ATTR_VLM_REDUCTION_VISION_METHOD]: policy.vision,
    [ATTR_VLM_REDUCTION_LANGUAGE_METHOD]: policy.language,
    [ATTR_VLM_REDUCTION_BUDGET]: budgetAttribute(policy.budget),
  };
}

/**
 * A token count (`192`), `N%`, or `default` when the request set none: each method then runs at its
 * own default operating point, which is a reduction, not the full token count. Always a string, so a
 * backend with typed columns keeps one column for the attribute, not one per type.
 */
export function budgetAttribute(budget: ReductionPolicy['budget']): string {
  if (budget === null) return 'default';
  return 'tokens' in budget ? String(budget.tokens) : `${budget.percent}%`;
}

/**
 * A name a method has on both sides (`random`) says which side it ran on (`random (vision)`), so
 * requests that reduce different sides never share a group.
 */
export function methodName(vision: string, language: string): string {
  const preset = Object.entries(METHOD_PRESETS).find(([, pair]) => pair.vision === vision && pair.language === language);
  if (preset) return preset[0];
  if (language === 'none') return vision !== 'none' && isLanguageMethod(vision) ? `${vision} (vision)` : vision;
  if (vision === 'none') return isVisionMethod(language) ? `${language} (language)` : language;
  return `${vision}+${language}`;
}
