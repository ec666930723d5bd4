/**
 * A request's reduction policy and how it becomes the two services' schedules.
 *
 * Budget: the number of visual tokens entering each decoder layer's attention during prefill,
 * averaged over all decoder layers (absolute; `percent` is of P, the unreduced visual tokens).
 * A vision method at budget b outputs round(b) tokens. A language method turns b into its own
 * per-layer schedule. When both sides reduce (ficoco-vl), the budget is split deterministically from
 * (policy, P, decoder depth, anchors) so the vision and language services compute the same split
 * without talking to each other.
 */
import { VlmError } from '../errors';
import { fmt } from './schedule';
import { getLanguageReducer, getVisionReducer, LANGUAGE_METHODS, VISION_METHODS } from './registry';
import type {
  BudgetRange,
  LanguageGeometry,
  LanguageMethodName,
  LanguageSchedule,
  MethodOptions,
  ParamSpecs,
  ReductionMode,
  VisionGeometry,
  VisionMethodName,
  VisionSchedule,
} from './types';

export { getLanguageReducer, getVisionReducer } from './registry';

export type Budget = { tokens: number } | { percent: number };

export interface ReductionPolicy {
  vision: VisionMethodName;
  language: LanguageMethodName;
  budget: Budget | null;
  mode: ReductionMode;
  params: Record<string, number | string | boolean>;
  seed: number;
}

/**
 * A method's refusal of a budget its schedule cannot reach (INVALID_ARGUMENT on policy.budget only), as
 * opposed to any other bad request: an infeasible cell to mark, a method default to skip.
 */
export function isInfeasibleBudget(err: unknown): err is VlmError {
  return err instanceof VlmError && err.code === 'INVALID_ARGUMENT' && err.violations.length > 0 && err.violations.every((v) => v.field === 'policy.budget');
}

/** The policy of a request that sets none: both sides 'none', no budget. */
export function noReduction(): ReductionPolicy {
  return { vision: 'none', language: 'none', budget: null, mode: 'clean', params: {}, seed: 0 };
}

/** Named combinations a client may ask for by one name. */
export const METHOD_PRESETS: Readonly<Record<string, { vision: VisionMethodName; language: LanguageMethodName }>> =
  Object.freeze({ 'ficoco-vl': Object.freeze({ vision: 'ficoco-v', language: 'ficoco-l' }) });

/** The parameters the budget split reads when both sides reduce (resolveBudgetSplit). */
export const SPLIT_PARAM_SPECS: ParamSpecs = Object.freeze({
  vision_tokens: Object.freeze({ type: 'integer', min: 1, default: { rule: "round(sqrt(budget x the model's visual tokens)), lowered towards the budget until the language method can reach it" } } as const),
});

/** Where both schedules report the split (their params), so the two services can check they agree. */
export const SPLIT_REPORT = Object.freeze({ total: 'budget_total', visionTokens: 'budget_vision_tokens' } as const);

/** A reader of `policy.params`: a method, or the budget split of a pair. */
export interface ParamReader {
  /** As a message names it: "vision method ficoco-v". */
  readonly reader: string;
  readonly params: ParamSpecs;
}

/**
 * Everything that reads `policy.params` for this pair. Both services hand the whole map to both
 * methods (and the split), so a name is valid when any of them declares it.
 */
export function paramReaders(vision: VisionMethodName, language: LanguageMethodName): ParamReader[] {
  const readers: ParamReader[] = [
    { reader: `vision method ${vision}`, params: getVisionReducer(vision).params },
    { reader: `language method ${language}`, params: getLanguageReducer(language).params },
  ];
  if (vision !== 'none' && language !== 'none') readers.push({ reader: 'the budget split of a two-sided pair', params: SPLIT_PARAM_SPECS });
  return readers;
}

/** What both services know about the model, enough to split a budget identically on either side. */
export interface SplitGeometry {
  /** P: visual tokens of the unreduced encoder. */
  readonly fullVisualTokens: number;
  readonly languageLayers: number;
  readonly anchors: Readonly<Record<string, unknown>>;
}

export interface BudgetSplit {
  /** The requested average (absolute), null for the methods' default operating points. */
  readonly total: number | null;
  /** Tokens the vision side outputs (null: the vision method's default, or no vision reduction). */
  readonly visionTokens: number | null;
}

export function optionsOf(policy: ReductionPolicy): MethodOptions {
  return { mode: policy.mode, params: policy.params, seed: policy.seed };
}

/** The budget as an absolute average count, validated. */
export function budgetTokens(budget: Budget | null, fullVisualTokens: number): number | null {
  if (budget === null) return null;
  if ('tokens' in budget) {
    if (!Number.isFinite(budget.tokens) || budget.tokens <= 0) {
      throw VlmError.invalid('policy.budget_tokens', `must be a positive number of visual tokens, got ${budget.tokens}`);
    }
    return budget.tokens;
  }
  if (!Number.isFinite(budget.percent) || budget.percent <= 0 || budget.percent > 100) {
    throw VlmError.invalid('policy.budget_percent', `must be in (0, 100], got ${budget.percent}`);
  }
  return (budget.percent / 100) * fullVisualTokens;
}

function languageGeometryFor(g: SplitGeometry, visualTokens: number): LanguageGeometry {
  // Schedules depend only on depth, counts and anchors; widths are not needed to resolve them.
  return { numLayers: g.languageLayers, hiddenSize: 0, numHeads: 0, visualTokens, fullVisualTokens: g.fullVisualTokens, anchors: g.anchors };
}

function fits(range: BudgetRange, b: number): boolean {
  return b >= range.min - 1e-9 && b <= range.max + 1e-9;
}

/**
 * How a budget is shared when both sides reduce. The vision side takes the geometric mean of P and b
 * (each side removes about the same fraction), moved towards b until the language method can reach b
 * from there; `params.vision_tokens` overrides it. At vision = ceil(b) the language side has almost
 * nothing left to do, so a feasible vision budget always yields a feasible split.
 */
export function resolveBudgetSplit(policy: ReductionPolicy, g: SplitGeometry): BudgetSplit {
  const total = budgetTokens(policy.budget, g.fullVisualTokens);
  if (policy.vision === 'none' || policy.language === 'none') return { total, visionTokens: policy.vision === 'none' ? null : total };
  const override = policy.params['vision_tokens'];
  // Silently running the methods' defaults would look like the split the caller asked for.
  if (total === null && override !== undefined) throw VlmError.invalid('policy.params[vision_tokens]', 'splits a budget between the two sides; set policy.budget too');
  if (total === null) return { total, visionTokens: null };
  // Below one token no split works, and the language method's own refusal would name its range for the
  // one token the vision side leaves ([1, 1]), not the pair's. The pair's lower end depends on the mode
  // and the vision depth (exact ficoco-v halves at most per layer), which GetModelInfo lists.
  if (total < 1) {
    throw VlmError.invalid(
      'policy.budget',
      `${policy.vision} + ${policy.language} cannot reach an average of ${fmt(total)} visual tokens per decoder layer: the vision side outputs at least one, which the language side then keeps; the budget must be at least 1 (GetModelInfo lists the feasible range of each method and preset in each mode)`,
    );
  }
  if (override !== undefined) {
    if (typeof override !== 'number' || !Number.isInteger(override) || override < Math.ceil(total) || override > g.fullVisualTokens) {
      throw VlmError.invalid('policy.params[vision_tokens]', `must be an integer in [${Math.ceil(total)}, ${g.fullVisualTokens}], got ${String(override)}`);
    }
    return { total, visionTokens: override };
  }
  const language = getLanguageReducer(policy.language);
  const options = optionsOf(policy);
  const low = Math.min(Math.ceil(total), g.fullVisualTokens);
  for (let v = Math.max(low, Math.min(g.fullVisualTokens, Math.round(Math.sqrt(total * g.fullVisualTokens)))); v > low; v--) {
    if (fits(language.feasibleRange(languageGeometryFor(g, v), options), total)) return { total, visionTokens: v };
  }
  return { total, visionTokens: low };
}

function splitGeometryOfVision(g: VisionGeometry): SplitGeometry {
  return { fullVisualTokens: g.numPatches, languageLayers: g.languageLayers, anchors: g.anchors };
}

function splitGeometryOfLanguage(g: LanguageGeometry): SplitGeometry {
  return { fullVisualTokens: g.fullVisualTokens, languageLayers: g.numLayers, anchors: g.anchors };
}

function withSplit<T extends { params: Readonly<Record<string, number | string | boolean>> }>(schedule: T, split: BudgetSplit): T {
  if (split.total === null) return schedule;
  const params: Record<string, number | string | boolean> = { ...schedule.params, [SPLIT_REPORT.total]: split.total };
  if (split.visionTokens !== null) params[SPLIT_REPORT.visionTokens] = split.visionTokens;
  return { ...schedule, params };
}

export function resolveVisionSchedule(policy: ReductionPolicy, g: VisionGeometry): VisionSchedule {
  const reducer = getVisionReducer(policy.vision);
  const split = resolveBudgetSplit(policy, splitGeometryOfVision(g));
  // A vision 'none' before a reducing language side leaves the budget to it; with no reduction at
  // all, the budget comes to none.ts, which refuses it as the language side does (a direct Encode
  // caller must hear that a budget alone reduces nothing).
  const budget = policy.vision !== 'none' ? split.visionTokens : policy.language === 'none' ? split.total : null;
  return withSplit(reducer.resolve(g, budget, optionsOf(policy)), split);
}

/** `g.visualTokens` is what actually arrived from the vision service. */
export function resolveLanguageSchedule(policy: ReductionPolicy, g: LanguageGeometry): LanguageSchedule {
  const reducer = getLanguageReducer(policy.language);
  const split = resolveBudgetSplit(policy, splitGeometryOfLanguage(g));
  // A language 'none' after a reducing vision side just carries what arrived; with no reduction at
  // all, a budget is only accepted if it equals P (none.ts says so).
  const budget = policy.language === 'none' && policy.vision !== 'none' ? null : split.total;
  return withSplit(reducer.resolve(g, budget, optionsOf(policy)), split);
}

export interface FeasibleBudget {
  readonly vision: VisionMethodName;
  readonly language: LanguageMethodName;
  /** Preset name where the pair has one (ficoco-vl). */
  readonly preset?: string;
  readonly mode: ReductionMode;
  readonly min: number;
  readonly max: number;
}

/**
 * For GetModelInfo: the budget range each method (the other side 'none') and each preset can reach on
 * this model, in both modes.
 */
export function feasibleBudgets(vision: VisionGeometry, language: Omit<LanguageGeometry, 'visualTokens'>): FeasibleBudget[] {
  const out: FeasibleBudget[] = [];
  const P = vision.numPatches;
  const lg: LanguageGeometry = { ...language, visualTokens: P };
  for (const mode of ['clean', 'exact'] as const) {
    const options: MethodOptions = { mode, params: {}, seed: 0 };
    for (const [name, reducer] of VISION_METHODS) {
      const r = reducer.feasibleRange(vision, options);
      out.push({ vision: name, language: 'none', mode, min: r.min, max: r.max });
    }
    for (const [name, reducer] of LANGUAGE_METHODS) {
      if (name === 'none') continue;
      const r = reducer.feasibleRange(lg, options);
      out.push({ vision: 'none', language: name, mode, min: r.min, max: r.max });
    }
    for (const [preset, pair] of Object.entries(METHOD_PRESETS)) {
      const v = VISION_METHODS.get(pair.vision);
      const l = LANGUAGE_METHODS.get(pair.language);
      if (v === undefined || l === undefined) continue;
      // Any budget the vision side reaches on its own is reachable by the pair (see resolveBudgetSplit).
      const r = v.feasibleRange(vision, options);
      out.push({ vision: pair.vision, language: pair.language, preset, mode, min: r.min, max: r.max });
    }
  }
  return out;
}
