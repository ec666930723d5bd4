/**
 * A fingerprint of every method's decisions: each language and vision method, in both modes, at 50,
 * 25 and 12.5 %, on fixed random inputs at LLaVA-like and small sizes (odd counts, with and without a
 * CLS token); every step's combination (sources and weights) and resulting image span or token
 * metadata, hashed together. A change meant to make a method faster without changing what it computes
 * must print the same hash before and after (`git stash` between the two runs). The tests check the
 * methods against the official code and hand-worked cases, and test/methods-fingerprint.test.ts pins
 * this hash, so such a change is checked bit for bit at sizes the other tests do not reach.
 *
 *   npx tsx scripts/method-fingerprint.ts
 */
import { createHash } from 'node:crypto';
import { VlmError } from '../shared/errors';
import { seededRandom } from '../shared/methods/numeric';
import { noReduction, optionsOf, resolveLanguageSchedule, resolveVisionSchedule, type Budget, type ReductionPolicy } from '../shared/methods/policy';
import { getLanguageReducer, getVisionReducer, languageMethodNames, visionMethodNames } from '../shared/methods/registry';
import type { LanguageSchedule, Matrix, Span, TokenCombination, TokenMeta, VisionSchedule } from '../shared/methods/types';

const BUDGETS: Budget[] = [{ percent: 50 }, { percent: 25 }, { percent: 12.5 }];
const MODES = ['clean', 'exact'] as const;
/** visual tokens, hidden width, decoder layers, prompt tokens before and after the image */
const LANGUAGE_SIZES = [[576, 256, 32, 35, 35], [196, 64, 12, 3, 12], [50, 16, 6, 2, 5], [49, 24, 6, 3, 7], [33, 8, 4, 1, 2]] as const;
/** tokens entering the encoder, width (and key width), encoder layers, CLS at row 0 */
const VISION_SIZES = [[577, 64, 23, true], [197, 32, 7, true], [144, 16, 6, false], [50, 8, 5, true]] as const;

export interface Fingerprint {
  readonly hash: string;
  readonly languageSteps: number;
  readonly visionSteps: number;
  readonly infeasible: number;
}

/** The hash of every method's decisions on the fixed inputs (deterministic: its own seeded generator). */
export function methodFingerprint(): Fingerprint {
  const rand = seededRandom(777);
  const matrix = (rows: number, cols: number, scale = 1): Matrix => {
    const data = new Float32Array(rows * cols);
    for (let i = 0; i < data.length; i++) data[i] = (rand() * 2 - 1) * scale;
    return { rows, cols, data };
  };
  const hash = createHash('sha256');
  const counts = { languageSteps: 0, visionSteps: 0, infeasible: 0 };

  /** The schedule, or undefined (and noted in the hash) where the budget is out of the method's range. */
  function feasible<T>(resolve: () => T): T | undefined {
    try {
      return resolve();
    } catch (err) {
      if (!(err instanceof VlmError) || err.code !== 'INVALID_ARGUMENT') throw err;
      hash.update('infeasible');
      counts.infeasible++;
      return undefined;
    }
  }

  for (const [V, D, layers, prefix, suffix] of LANGUAGE_SIZES) {
    for (const method of languageMethodNames().filter((m) => m !== 'none')) {
      for (const mode of MODES) {
        for (const budget of BUDGETS) {
          const policy: ReductionPolicy = { ...noReduction(), language: method, budget, mode, seed: 3 };
          const geometry = { numLayers: layers, hiddenSize: D, numHeads: 8, visualTokens: V, fullVisualTokens: V, anchors: {} };
          const schedule: LanguageSchedule | undefined = feasible(() => resolveLanguageSchedule(policy, geometry));
          if (!schedule) continue;
          const reducer = getLanguageReducer(schedule.method);
          const options = optionsOf(policy);
          let image: Span = { start: prefix, length: V };
          const state: Record<string, unknown> = {};
          reducer.prepare?.({ embeds: matrix(prefix + V + suffix, D), image }, schedule, options, state);
          for (const step of schedule.steps) {
            const L = prefix + image.length + suffix;
            const out = reducer.reduce({ step, hidden: matrix(L, D), scores: matrix(L, L, 4), probs: matrix(L, L, 0.01), image, state }, schedule, options);
            counts.languageSteps++;
            hash.update(JSON.stringify([out.span, out.image, ...combination(out.combine)]));
            image = out.image;
          }
        }
      }
    }
  }

  for (const [T, D, layers, cls] of VISION_SIZES) {
    for (const method of visionMethodNames().filter((m) => m !== 'none')) {
      for (const mode of MODES) {
        for (const budget of BUDGETS) {
          const P = T - (cls ? 1 : 0);
          const policy: ReductionPolicy = { ...noReduction(), vision: method, budget, mode, seed: 3 };
          const geometry = { numLayers: layers, grid: Math.round(Math.sqrt(P)), numPatches: P, hasClassToken: cls, hiddenSize: D, languageLayers: 12, anchors: {} };
          const schedule: VisionSchedule | undefined = feasible(() => resolveVisionSchedule(policy, geometry));
          if (!schedule) continue;
          const reducer = getVisionReducer(schedule.method);
          const options = optionsOf(policy);
          let tokens: TokenMeta = { origin: Int32Array.from({ length: T }, (_, i) => i - (cls ? 1 : 0)), size: new Float32Array(T).fill(1) };
          const state: Record<string, unknown> = {};
          for (const step of schedule.steps) {
            const n = step.tokensIn;
            const out = reducer.reduce({ step, hidden: matrix(n, D), scores: matrix(n, n, 4), probs: matrix(n, n, 0.01), keys: matrix(n, D), tokens, state }, schedule, options);
            counts.visionSteps++;
            hash.update(JSON.stringify([...combination(out.combine), Array.from(out.tokens.origin), Array.from(out.tokens.size)]));
            tokens = out.tokens;
          }
        }
      }
    }
  }
  return { hash: hash.digest('hex'), ...counts };
}

const combination = (c: TokenCombination) => [Array.from(c.indptr), Array.from(c.src), Array.from(c.weight)];

if (require.main === module) {
  const f = methodFingerprint();
  console.log(`${f.hash} (${f.languageSteps} language steps, ${f.visionSteps} vision steps, ${f.infeasible} infeasible cells)`);
}
