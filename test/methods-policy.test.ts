/**
 * The registry and the budget: every method turns one budget (average visual tokens per decoder
 * layer) into a schedule whose per-layer mean is that budget, moves its anchors for small budgets,
 * and rejects budgets it cannot reach naming the feasible range.
 */
import { describe, expect, it } from 'vitest';
import { VlmError } from '../shared/errors';
import {
  feasibleBudgets,
  getLanguageReducer,
  getVisionReducer,
  resolveBudgetSplit,
  resolveLanguageSchedule,
  resolveVisionSchedule,
  type ReductionPolicy,
} from '../shared/methods/policy';
import { LANGUAGE_METHODS, VISION_METHODS } from '../shared/methods/registry';
import type { LanguageGeometry, LanguageMethodName, VisionGeometry, VisionMethodName } from '../shared/methods/types';

const tiny: VisionGeometry = { numLayers: 6, grid: 14, numPatches: 196, hasClassToken: true, hiddenSize: 64, languageLayers: 12, anchors: { fastv: { k: 2 } } };
const tinyLanguage = (visualTokens: number): LanguageGeometry => ({ numLayers: 12, hiddenSize: 64, numHeads: 4, visualTokens, fullVisualTokens: 196, anchors: { fastv: { k: 2 } } });
const llava: VisionGeometry = { numLayers: 23, grid: 24, numPatches: 576, hasClassToken: true, hiddenSize: 1024, languageLayers: 32, anchors: {} };
const llavaLanguage = (visualTokens: number): LanguageGeometry => ({ numLayers: 32, hiddenSize: 4096, numHeads: 32, visualTokens, fullVisualTokens: 576, anchors: {} });

const policy = (vision: VisionMethodName, language: LanguageMethodName, percent: number | null): ReductionPolicy => ({
  vision, language, budget: percent === null ? null : { percent }, mode: 'clean', params: {}, seed: 1,
});

function achieved(p: ReductionPolicy, vg: VisionGeometry, lg: (v: number) => LanguageGeometry): number {
  const vs = resolveVisionSchedule(p, vg);
  const ls = resolveLanguageSchedule(p, lg(vs.outputTokens));
  return ls.perLayerVisualTokens.reduce((a, b) => a + b, 0) / ls.perLayerVisualTokens.length;
}

function thrown(fn: () => unknown): VlmError {
  try {
    fn();
  } catch (e) {
    return e as VlmError;
  }
  throw new Error('expected a throw');
}

describe('registry', () => {
  it('has one row per method name and no way to add one at run time', () => {
    expect([...VISION_METHODS.keys()]).toEqual(['none', 'ficoco-v', 'tome', 'random']);
    expect([...LANGUAGE_METHODS.keys()]).toEqual(['none', 'sparsevlm', 'ficoco-l', 'fastv', 'random']);
    for (const table of [VISION_METHODS, LANGUAGE_METHODS] as unknown as Array<Map<string, unknown>>) {
      expect(() => table.set('extra', {})).toThrow(TypeError);
      expect(() => table.delete('none')).toThrow(TypeError);
      expect(() => table.clear()).toThrow(TypeError);
      expect(table.has('none')).toBe(true);
    }
    for (const [name, reducer] of VISION_METHODS) expect(reducer.name).toBe(name);
    for (const [name, reducer] of LANGUAGE_METHODS) expect(reducer.name).toBe(name);
  });

  it('rejects an unknown method with INVALID_ARGUMENT listing the valid names', () => {
    const e = thrown(() => getLanguageReducer('pdrop'));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toContain('sparsevlm, ficoco-l, fastv, random');
    expect(thrown(() => getVisionReducer('ficoco-vl')).code).toBe('INVALID_ARGUMENT');
  });
});

describe('budgets', () => {
  const pairs: Array<[VisionMethodName, LanguageMethodName]> = [
    ['ficoco-v', 'none'], ['tome', 'none'], ['random', 'none'],
    ['none', 'sparsevlm'], ['none', 'ficoco-l'], ['none', 'fastv'], ['none', 'random'], ['ficoco-v', 'ficoco-l'],
  ];
  for (const [vision, language] of pairs) {
    for (const percent of [50, 25, 12.5]) {
      it(`${vision} + ${language} reaches ${percent} % of the visual tokens within one token (12-layer tiny model and LLaVA-1.5)`, () => {
        expect(Math.abs(achieved(policy(vision, language, percent), tiny, tinyLanguage) - (percent / 100) * 196)).toBeLessThanOrEqual(1);
        expect(Math.abs(achieved(policy(vision, language, percent), llava, llavaLanguage) - (percent / 100) * 576)).toBeLessThanOrEqual(1);
      });
    }
  }

  it('fastv moves K earlier when the layers before the cut alone exceed the budget', () => {
    const at50 = resolveLanguageSchedule(policy('none', 'fastv', 50), tinyLanguage(196));
    const at12 = resolveLanguageSchedule(policy('none', 'fastv', 12.5), tinyLanguage(196));
    expect(at50.params['k']).toBe(2);
    expect(at12.params['k']).toBe(1); // (2·196)/12 = 32.7 > 24.5, so the cut moves after layer 0
    expect(at12.positions).toBe('keep');
  });

  it('sparsevlm at 192 of 576 on LLaVA prunes after layers 2, 6 and 15 as v1.5 does', () => {
    const s = resolveLanguageSchedule({ ...policy('none', 'sparsevlm', null), budget: { tokens: 192 } }, llavaLanguage(576));
    expect(s.steps.map((x) => x.layer)).toEqual([2, 6, 15]);
    expect(s.positions).toBe('renumber');
  });

  it("sparsevlm reproduces each v1.5 setting's keeps on LLaVA at that setting's budget, and RETAIN_TOKN = 192's without one", () => {
    // SparseVLM counts each layer after its prune, this budget before: its "192" is 206.5 here (spec §2.6).
    const g = { ...llavaLanguage(576), anchors: { sparsevlm: { layers: [2, 6, 15] } } };
    const settings: Array<[number | null, string]> = [[null, '300,200,110'], [206.5, '300,200,110'], [145.40625, '303,110,36'], [114.09375, '238,48,26'], [82.25, '66,30,17']];
    for (const [tokens, keeps] of settings) {
      const s = resolveLanguageSchedule({ ...policy('none', 'sparsevlm', null), budget: tokens === null ? null : { tokens } }, g);
      expect(s.params['keeps'], String(tokens)).toBe(keeps);
    }
    const byDefault = resolveLanguageSchedule(policy('none', 'sparsevlm', null), g).perLayerVisualTokens;
    expect([byDefault[2], byDefault[3], byDefault[7], byDefault[16]]).toEqual([576, 309, 204, 113]);
  });

  it('an unreachable budget is INVALID_ARGUMENT naming the feasible range', () => {
    const e = thrown(() => resolveLanguageSchedule({ ...policy('none', 'fastv', null), budget: { tokens: 5 } }, tinyLanguage(196)));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toContain('feasible range is [17.25, 196]');
    expect(thrown(() => resolveVisionSchedule({ ...policy('tome', 'none', null), budget: { tokens: 2 } }, tiny)).message).toMatch(/feasible range is \[4, 196\]/);
    // A budget without a method: what to add, not a range of one value.
    const bare = thrown(() => resolveLanguageSchedule(policy('none', 'none', 50), tinyLanguage(196)));
    expect([bare.code, bare.message]).toEqual(['INVALID_ARGUMENT', "policy.budget: language method 'none' keeps all 196 visual tokens, so a budget needs a reduction method: set vision_method, language_method or preset (or leave the budget unset)"]);
  });

  it('ficoco-v exact removes at most half the tokens per layer (the released slot arithmetic needs r <= T - r)', () => {
    const p = { ...policy('ficoco-v', 'none', 12.5), mode: 'exact' as const, params: { start_layer: 6 } };
    const s = resolveVisionSchedule(p, { ...tiny, numLayers: 7 });
    for (const step of s.steps) expect(step.tokensIn - step.tokensOut).toBeLessThanOrEqual(Math.floor(step.tokensIn / 2));
    expect(s.outputTokens).toBe(25);
    expect(s.steps[0]!.layer).toBeLessThan(6); // moved earlier: one layer cannot go from 197 to 26
    const clean = resolveVisionSchedule({ ...p, mode: 'clean' }, { ...tiny, numLayers: 7 });
    expect(clean.steps.map((x) => x.layer)).toEqual([6]);
  });

  it('sparsevlm without a budget runs its default operating point, raised into the feasible range on a shallow model', () => {
    const shallow: LanguageGeometry = { numLayers: 4, hiddenSize: 48, numHeads: 4, visualTokens: 16, fullVisualTokens: 16, anchors: {} };
    const s = resolveLanguageSchedule(policy('none', 'sparsevlm', null), shallow);
    const mean = s.perLayerVisualTokens.reduce((a, b) => a + b, 0) / s.perLayerVisualTokens.length;
    expect(mean).toBeGreaterThan(16 / 3);
    expect(mean).toBeLessThanOrEqual(16);
  });

  it('sparsevlm v1.5 refuses v1\'s scale and bias instead of dropping them', () => {
    const e = thrown(() => resolveLanguageSchedule({ ...policy('none', 'sparsevlm', 25), params: { scale: 2 } }, tinyLanguage(196)));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/policy.params\[scale\]: applies to sparsevlm version 'v1' only/);
  });

  it('ficoco-v takes a start layer past the encoder as its last layer (a search from 2^53 never ended), and reports the layer compression starts at', () => {
    for (const start_layer of [2 ** 31, Number.MAX_SAFE_INTEGER]) {
      const clean = resolveVisionSchedule({ ...policy('ficoco-v', 'none', 25), params: { start_layer } }, tiny);
      expect(clean.outputTokens).toBe(49);
      expect(clean.steps.map((s) => s.layer)).toEqual([tiny.numLayers - 1]);
      expect(clean.params['start_layer']).toBe(tiny.numLayers - 1);
      // exact removes at most half a layer's tokens: 25 % needs two layers, so it starts one earlier.
      const exact = resolveVisionSchedule({ ...policy('ficoco-v', 'none', 25), mode: 'exact', params: { start_layer } }, tiny);
      expect(exact.outputTokens).toBe(49);
      expect(exact.steps.map((s) => s.layer)).toEqual([tiny.numLayers - 2, tiny.numLayers - 1]);
      expect(exact.params['start_layer']).toBe(tiny.numLayers - 2);
    }
  });

  it('vision random reports the start layer in effect, the anchor when none is asked for', () => {
    const asked = resolveVisionSchedule({ ...policy('random', 'none', 25), params: { start_layer: 1 } }, tiny);
    expect(asked.params['start_layer']).toBe(1);
    expect(asked.steps.map((s) => s.layer)).toEqual([1]);
    const anchored = resolveVisionSchedule(policy('random', 'none', 25), tiny);
    expect(anchored.params['start_layer']).toBe(anchored.steps[0]!.layer);
  });

  it('sparsevlm v1 decides its counts from the data, so it takes no budget', () => {
    const p = { ...policy('none', 'sparsevlm', null), params: { version: 'v1' } };
    expect(resolveLanguageSchedule(p, tinyLanguage(196)).dataDependent).toBe(true);
    expect(thrown(() => resolveLanguageSchedule({ ...p, budget: { percent: 25 } }, tinyLanguage(196))).code).toBe('INVALID_ARGUMENT');
  });
});

describe('ficoco-vl', () => {
  it('both services derive the same split from the policy and the geometry, and report it', () => {
    const p = policy('ficoco-v', 'ficoco-l', 25);
    const fromVision = resolveBudgetSplit(p, { fullVisualTokens: 196, languageLayers: 12, anchors: tiny.anchors });
    const vs = resolveVisionSchedule(p, tiny);
    const ls = resolveLanguageSchedule(p, tinyLanguage(vs.outputTokens));
    expect(vs.outputTokens).toBe(fromVision.visionTokens);
    expect(vs.params['budget_vision_tokens']).toBe(ls.params['budget_vision_tokens']);
    expect(ls.params['budget_total']).toBe(49);
    expect(vs.outputTokens).toBeGreaterThan(49);
    expect(vs.outputTokens).toBeLessThan(196);
  });

  it('takes vision_tokens as the split of a budget, and refuses it without one', () => {
    const geometry = { fullVisualTokens: 196, languageLayers: 12, anchors: tiny.anchors };
    const p = policy('ficoco-v', 'ficoco-l', 25);
    expect(resolveBudgetSplit({ ...p, params: { vision_tokens: 120 } }, geometry).visionTokens).toBe(120);
    const e = thrown(() => resolveBudgetSplit({ ...policy('ficoco-v', 'ficoco-l', null), params: { vision_tokens: 120 } }, geometry));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/vision_tokens.*set policy.budget too/);
  });

  it('refuses a budget with no reduction method on either side, on the vision side too (a direct Encode), and leaves a language method its budget', () => {
    const e = thrown(() => resolveVisionSchedule(policy('none', 'none', 25), tiny));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/^policy.budget: vision method 'none' keeps all 196 visual tokens, so a budget needs a reduction method/);
    expect(resolveVisionSchedule(policy('none', 'none', 100), tiny).outputTokens).toBe(196);
    expect(resolveVisionSchedule(policy('none', 'sparsevlm', 25), tiny).outputTokens).toBe(196);
  });

  it("refuses ficoco-l's decline_layers without a budget: the released schedule it would run has no decline", () => {
    const withBudget = resolveLanguageSchedule({ ...policy('none', 'ficoco-l', 25), params: { decline_layers: 2 } }, tinyLanguage(196));
    expect(withBudget.params['decline_layers']).toBe(2);
    const e = thrown(() => resolveLanguageSchedule({ ...policy('none', 'ficoco-l', null), params: { decline_layers: 2 } }, tinyLanguage(196)));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toBe('policy.params[decline_layers]: shapes the schedule of a budget; set policy.budget too');
  });

  it("refuses a budget below one token for the pair, not with the language side's range for one token", () => {
    const geometry = { fullVisualTokens: 196, languageLayers: 12, anchors: tiny.anchors };
    const e = thrown(() => resolveBudgetSplit(policy('ficoco-v', 'ficoco-l', 0.5), geometry));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.violations.map((v) => v.field)).toEqual(['policy.budget']);
    expect(e.message).toBe("policy.budget: ficoco-v + ficoco-l cannot reach an average of 0.98 visual tokens per decoder layer: the vision side outputs at least one, which the language side then keeps; the budget must be at least 1 (GetModelInfo lists the feasible range of each method and preset in each mode)");
    expect(resolveBudgetSplit(policy('ficoco-v', 'ficoco-l', 0.52), geometry).visionTokens).toBe(2); // 1.02 tokens: feasible
  });

  it('is listed with its feasible range for GetModelInfo', () => {
    const rows = feasibleBudgets(tiny, { numLayers: 12, hiddenSize: 64, numHeads: 4, fullVisualTokens: 196, anchors: tiny.anchors });
    expect(rows.find((r) => r.preset === 'ficoco-vl' && r.mode === 'clean')).toMatchObject({ vision: 'ficoco-v', language: 'ficoco-l', min: 1, max: 196 });
    expect(rows.find((r) => r.language === 'fastv' && r.mode === 'exact')?.min).toBeCloseTo(17.25);
    // No row offers a budget below one token (exact ficoco-v on LLaVA's 23 layers could halve to none).
    const llavaRows = feasibleBudgets(llava, { numLayers: 32, hiddenSize: 4096, numHeads: 32, fullVisualTokens: 576, anchors: {} });
    expect(Math.min(...[...rows, ...llavaRows].map((r) => r.min))).toBeGreaterThanOrEqual(1);
  });
});
