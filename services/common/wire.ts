/**
 * Core results to wire messages and back: schedules, method parameters, budgets, FLOPs. Plain data mapping.
 */
import type { StageFlops } from '../../shared/flops/flops';
import { budgetTokens, type Budget, type ReductionPolicy } from '../../shared/methods/policy';
import type { LanguageSchedule, VisionSchedule } from '../../shared/methods/types';
import {
  PositionRule,
  StepPosition,
  type LanguageSchedule as WireLanguageSchedule,
  type ParamValue,
  type ReductionPolicy as WirePolicy,
  type ResolvedPolicy,
  type VisionSchedule as WireVisionSchedule,
} from '../../gen/vlm/v1/common';

export function paramValueToWire(v: number | string | boolean): ParamValue {
  return { kind: typeof v === 'number' ? { $case: 'number', number: v } : typeof v === 'string' ? { $case: 'text', text: v } : { $case: 'flag', flag: v } };
}

export function paramsToWire(params: Readonly<Record<string, number | string | boolean>>): Record<string, ParamValue> {
  const out: Record<string, ParamValue> = {};
  for (const [k, v] of Object.entries(params)) out[k] = paramValueToWire(v);
  return out;
}

export function paramsFromWire(params: Readonly<Record<string, ParamValue>>): Record<string, number | string | boolean> {
  const out: Record<string, number | string | boolean> = {};
  for (const [k, v] of Object.entries(params)) {
    const kind = v.kind;
    if (kind !== undefined) out[k] = kind.$case === 'number' ? kind.number : kind.$case === 'text' ? kind.text : kind.flag;
  }
  return out;
}

export function visionScheduleToWire(s: VisionSchedule): WireVisionSchedule {
  return {
    method: s.method,
    steps: s.steps.map((st) => ({ layer: st.layer, tokensIn: st.tokensIn, tokensOut: st.tokensOut })),
    outputTokens: s.outputTokens,
    proportionalAttention: s.proportionalAttention,
    params: paramsToWire(s.params),
  };
}

export function languageScheduleToWire(s: LanguageSchedule): WireLanguageSchedule {
  return {
    method: s.method,
    steps: s.steps.map((st) => ({
      layer: st.layer,
      at: st.at === 'after-attn' ? StepPosition.STEP_POSITION_AFTER_ATTN : StepPosition.STEP_POSITION_AFTER_LAYER,
      tokensIn: st.tokensIn,
      tokensOut: st.tokensOut,
    })),
    positions: s.positions === 'keep' ? PositionRule.POSITION_RULE_KEEP : PositionRule.POSITION_RULE_RENUMBER,
    perLayerVisualTokens: [...s.perLayerVisualTokens],
    params: paramsToWire(s.params),
  };
}

/** FLOPs per stage as sent on the wire; `overhead` is the reduction methods' extra work. */
export function flopsToWire(f: Partial<StageFlops>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(f)) if (typeof v === 'number' && v > 0) out[k] = v;
  return out;
}

export function roundMs(timings: Readonly<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(timings)) out[k] = Math.round(v * 1000) / 1000;
  return out;
}

/** A budget as the policy's `budget` oneof; none is unset. */
export function budgetToWire(budget: Budget | null): WirePolicy['budget'] {
  if (budget === null) return undefined;
  return 'tokens' in budget ? { $case: 'budgetTokens', budgetTokens: budget.tokens } : { $case: 'budgetPercent', budgetPercent: budget.percent };
}

export function resolvedPolicy(
  policy: ReductionPolicy,
  fullVisualTokens: number,
  vision: WireVisionSchedule | undefined,
  language: LanguageSchedule,
  achievedBudget: number,
): ResolvedPolicy {
  return {
    visionMethod: policy.vision,
    languageMethod: policy.language,
    mode: policy.mode,
    requestedBudget: budgetTokens(policy.budget, fullVisualTokens) ?? undefined,
    achievedBudget,
    seed: BigInt(policy.seed),
    visionSchedule: vision,
    languageSchedule: languageScheduleToWire(language),
  };
}
