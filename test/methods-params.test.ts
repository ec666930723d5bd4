/**
 * Method parameters: each method declares exactly the `policy.params` names it reads (requests are
 * judged against the declarations, so a name read but undeclared would be refused, and one declared
 * but never read would be accepted and ignored). What a method reads is found by running it: its
 * schedule, feasible range, prepare and first step, in both modes, at its default operating point and
 * at a budget, with every declared text value, over a params map that records each name looked up.
 */
import { describe, expect, it } from 'vitest';
import { VlmError } from '../shared/errors';
import { paramReaders, resolveBudgetSplit, SPLIT_PARAM_SPECS, type ReductionPolicy } from '../shared/methods/policy';
import { LANGUAGE_METHODS, VISION_METHODS } from '../shared/methods/registry';
import type {
  LanguageGeometry,
  LanguageReducer,
  LanguageSchedule,
  MethodOptions,
  ParamSpecs,
  ReductionMode,
  VisionGeometry,
  VisionReducer,
  VisionSchedule,
} from '../shared/methods/types';
import { hashMatrix, positiveMatrix } from './methods-inputs';

type Params = Record<string, number | string | boolean>;

const vision: VisionGeometry = { numLayers: 6, grid: 6, numPatches: 36, hasClassToken: true, hiddenSize: 8, languageLayers: 12, anchors: {} };
const language: LanguageGeometry = { numLayers: 12, hiddenSize: 8, numHeads: 2, visualTokens: 36, fullVisualTokens: 36, anchors: {} };
const MODES: readonly ReductionMode[] = ['clean', 'exact'];
const BUDGETS: ReadonlyArray<number | null> = [null, 18, 6];
/** Text rows around the image in the language inputs. */
const PREFIX = 3;
const SUFFIX = 5;

/** `values` behind a map that adds every string key looked up to `read`. */
function recording(values: Params, read: Set<string>): Params {
  return new Proxy({ ...values }, {
    get(target, key, receiver) {
      if (typeof key === 'string') read.add(key);
      return Reflect.get(target, key, receiver) as unknown;
    },
  });
}

/** One params map per combination of the declared text values (the names a text switches on). */
function variants(specs: ParamSpecs): Params[] {
  let out: Params[] = [{}];
  for (const [name, spec] of Object.entries(specs)) {
    if (spec.type === 'text') out = out.flatMap((p) => spec.values.map((v) => ({ ...p, [name]: v })));
  }
  return out;
}

/** Runs `fn`; a budget the method refuses (INVALID_ARGUMENT) ends that run, anything else fails the test. */
function tolerateRefusal(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof VlmError && err.code === 'INVALID_ARGUMENT')) throw err;
  }
}

/** What the method decided: its range, schedule and first step's output. */
function exerciseVision(m: VisionReducer, options: MethodOptions, budget: number | null): unknown[] {
  const range = m.feasibleRange(vision, options);
  const schedule: VisionSchedule = m.resolve(vision, budget, options);
  const step = schedule.steps[0];
  if (step === undefined) return [range, schedule];
  const T = step.tokensIn;
  const tokens = { origin: Int32Array.from({ length: T }, (_, i) => i - 1), size: new Float32Array(T).fill(1) };
  return [range, schedule, m.reduce({ step, hidden: hashMatrix(1, T, 8), scores: hashMatrix(2, T, T, 4), probs: positiveMatrix(3, T, T), keys: hashMatrix(4, T, 8), tokens, state: {} }, schedule, options)];
}

function exerciseLanguage(m: LanguageReducer, options: MethodOptions, budget: number | null): unknown[] {
  const range = m.feasibleRange(language, options);
  const schedule: LanguageSchedule = m.resolve(language, budget, options);
  const state: Record<string, unknown> = {};
  const rows = PREFIX + language.visualTokens + SUFFIX;
  m.prepare?.({ embeds: hashMatrix(5, rows, 8), image: { start: PREFIX, length: language.visualTokens } }, schedule, options, state);
  const step = schedule.steps[0];
  if (step === undefined) return [range, schedule];
  const L = PREFIX + step.tokensIn + SUFFIX;
  return [range, schedule, m.reduce({ step, hidden: hashMatrix(6, L, 8), scores: hashMatrix(7, L, L, 2), probs: positiveMatrix(8, L, L), image: { start: PREFIX, length: step.tokensIn }, state }, schedule, options)];
}

/** Every params name `exercise` looks up, over modes, budgets and the declared text values. */
function namesRead(specs: ParamSpecs, exercise: (options: MethodOptions, budget: number | null) => void): string[] {
  const read = new Set<string>();
  for (const mode of MODES) {
    for (const values of variants(specs)) {
      for (const budget of BUDGETS) tolerateRefusal(() => exercise({ mode, params: recording(values, read), seed: 1 }, budget));
    }
  }
  return [...read].sort();
}

const declared = (specs: ParamSpecs): string[] => Object.keys(specs).sort();

describe('method parameter declarations', () => {
  for (const [name, m] of VISION_METHODS) {
    it(`vision method ${name} declares exactly the names it reads (${declared(m.params).join(', ') || 'none'})`, () => {
      expect(namesRead(m.params, (o, b) => exerciseVision(m, o, b))).toEqual(declared(m.params));
    });
  }
  for (const [name, m] of LANGUAGE_METHODS) {
    it(`language method ${name} declares exactly the names it reads (${declared(m.params).join(', ') || 'none'})`, () => {
      expect(namesRead(m.params, (o, b) => exerciseLanguage(m, o, b))).toEqual(declared(m.params));
    });
  }

  it('the budget split of a two-sided pair reads vision_tokens besides what its language method reads', () => {
    const policy = (params: Params): ReductionPolicy => ({ vision: 'ficoco-v', language: 'sparsevlm', budget: { tokens: 12 }, mode: 'clean', params, seed: 0 });
    const split = { fullVisualTokens: 36, languageLayers: 12, anchors: {} };
    const read = new Set<string>();
    resolveBudgetSplit(policy(recording({}, read)), split);
    expect([...read].filter((n) => !Object.hasOwn(LANGUAGE_METHODS.get('sparsevlm')!.params, n))).toEqual(declared(SPLIT_PARAM_SPECS));
  });

  it('the split is a reader of params only when both sides reduce', () => {
    const readers = (v: 'none' | 'ficoco-v', l: 'none' | 'ficoco-l') => paramReaders(v, l).map((r) => r.reader);
    expect(readers('ficoco-v', 'ficoco-l')).toEqual(['vision method ficoco-v', 'language method ficoco-l', 'the budget split of a two-sided pair']);
    expect(readers('ficoco-v', 'none')).toEqual(['vision method ficoco-v', 'language method none']);
    expect(readers('none', 'ficoco-l')).toEqual(['vision method none', 'language method ficoco-l']);
  });

  // GetModelInfo advertises these defaults; a client sending one must get what leaving it unset gets.
  const withDefaults = (kind: string, name: string, specs: ParamSpecs, exercise: (options: MethodOptions, budget: number | null) => unknown[]) => {
    for (const [param, spec] of Object.entries(specs)) {
      const advertised = spec.default;
      if (typeof advertised === 'object' && 'rule' in advertised) {
        it(`${kind} ${name}: ${param}'s default is a rule, stated (${advertised.rule})`, () => expect(advertised.rule.length).toBeGreaterThan(10));
        continue;
      }
      const d = typeof advertised === 'object' ? advertised.value : advertised;
      const onlyWith = typeof advertised === 'object' ? advertised.onlyWith : null;
      it(`${kind} ${name}: sending ${param} = its advertised default ${JSON.stringify(d)} decides exactly as leaving it unset${onlyWith ? ` (with ${onlyWith})` : ''}`, () => {
        if (spec.type === 'text') expect(spec.values).toContain(d);
        else {
          expect(typeof d).toBe('number');
          expect(d).toBeGreaterThanOrEqual(spec.min);
          if (spec.max !== undefined) expect(d).toBeLessThanOrEqual(spec.max);
          if (spec.type === 'integer') expect(Number.isInteger(d)).toBe(true);
        }
        const outcome = (options: MethodOptions, budget: number | null): unknown[] | string => {
          try {
            return exercise(options, budget);
          } catch (err) {
            if (err instanceof VlmError && err.code === 'INVALID_ARGUMENT') return err.message;
            throw err;
          }
        };
        let compared = 0;
        for (const mode of MODES) {
          // The other text switches at each of their values (scale is read only under version v1).
          for (const values of variants(Object.fromEntries(Object.entries(specs).filter(([n]) => n !== param)))) {
            for (const budget of BUDGETS) {
              const sent = outcome({ mode, params: { ...values, [param]: d }, seed: 1 }, budget);
              // Only a default advertised as conditional may be refused when sent: under another value of its switch.
              if (typeof sent === 'string' && sent.startsWith(`policy.params[${param}]`)) {
                expect(onlyWith, sent).not.toBeNull();
                expect(Object.entries(values).map(([k, v]) => `${k} ${String(v)}`)).not.toContain(onlyWith);
                continue;
              }
              const unset = outcome({ mode, params: values, seed: 1 }, budget);
              expect(sent).toEqual(unset);
              if (typeof unset !== 'string') compared++;
            }
          }
        }
        expect(compared).toBeGreaterThan(0);
      });
    }
  };
  for (const [name, m] of VISION_METHODS) withDefaults('vision method', name, m.params, (o, b) => exerciseVision(m, o, b));
  for (const [name, m] of LANGUAGE_METHODS) withDefaults('language method', name, m.params, (o, b) => exerciseLanguage(m, o, b));

  it('declares names in the lower_snake_case the request check accepts', () => {
    const all = [...VISION_METHODS.values(), ...LANGUAGE_METHODS.values()].flatMap((m) => Object.keys(m.params)).concat(Object.keys(SPLIT_PARAM_SPECS));
    for (const n of all) expect(n).toMatch(/^[a-z][a-z0-9_]{0,63}$/);
  });
});
