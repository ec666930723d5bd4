import type { Attributes } from '@opentelemetry/api';
import type { ReductionPolicy } from '../methods/policy';
import {
  ATTR_VLM_REDUCTION_BUDGET,
  ATTR_VLM_REDUCTION_LANGUAGE_METHOD,
  ATTR_VLM_REDUCTION_METHOD,
  ATTR_VLM_REDUCTION_VISION_METHOD,
} from './names';

/**
 * A request's policy as span attributes: the one method name the trace report groups by (the preset
 * name for FiCoCo-V + FiCoCo-L, the active side's name when the other is `none`, `vision+language`
 * otherwise), both sides, and the budget (a token count, `N%`, or `full`).
 */
export function policyAttributes(policy: Pick<ReductionPolicy, 'vision' | 'language' | 'budget'>): Attributes {
  return {
    [ATTR_VLM_REDUCTION_METHOD]: methodName(policy.vision, policy.language),
    [ATTR_VLM_REDUCTION_VISION_METHOD]: policy.vision,
    [ATTR_VLM_REDUCTION_LANGUAGE_METHOD]: policy.language,
    [ATTR_VLM_REDUCTION_BUDGET]: policy.budget === null ? 'full' : 'tokens' in policy.budget ? policy.budget.tokens : `${policy.budget.percent}%`,
  };
}

export function methodName(vision: string, language: string): string {
  if (vision === 'ficoco-v' && language === 'ficoco-l') return 'ficoco-vl';
  if (language === 'none') return vision;
  if (vision === 'none') return language;
  return `${vision}+${language}`;
}
