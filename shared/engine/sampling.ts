/**
 * Next-token choice: greedy (temperature 0: the first index of the largest logit, as torch.argmax),
 * or temperature + top-k + top-p sampling from a per-request seeded generator, so a seed replays.
 */
import { VlmError } from '../errors';
import { seededRandom } from '../methods/numeric';
import { argmax } from '../tensor/ops';

export interface SamplingParams {
  /** 0 = greedy. */
  readonly temperature: number;
  /** Nucleus mass in (0, 1]; 1 = off. */
  readonly topP: number;
  /** 0 = off. */
  readonly topK: number;
  readonly seed: number;
  readonly maxNewTokens: number;
}

export const GREEDY: Omit<SamplingParams, 'maxNewTokens'> = Object.freeze({ temperature: 0, topP: 1, topK: 0, seed: 0 });

export function checkSampling(s: SamplingParams, maxNewTokensLimit: number): void {
  if (!(s.temperature >= 0) || !Number.isFinite(s.temperature)) throw VlmError.invalid('sampling.temperature', `must be >= 0, got ${s.temperature}`);
  if (!(s.topP > 0 && s.topP <= 1)) throw VlmError.invalid('sampling.top_p', `must be in (0, 1], got ${s.topP}`);
  if (!Number.isInteger(s.topK) || s.topK < 0) throw VlmError.invalid('sampling.top_k', `must be an integer >= 0, got ${s.topK}`);
  if (!Number.isInteger(s.maxNewTokens) || s.maxNewTokens < 1 || s.maxNewTokens > maxNewTokensLimit) {
    throw VlmError.invalid('sampling.max_tokens', `must be an integer in [1, ${maxNewTokensLimit}], got ${s.maxNewTokens}`);
  }
}

export class Sampler {
  private readonly random: () => number;

  constructor(private readonly params: Omit<SamplingParams, 'maxNewTokens'>) {
    // The same mulberry32 the seeded methods use: small, fast, and reproducible across platforms.
    this.random = seededRandom(params.seed);
  }

  next(logits: Float32Array): number {
    // A NaN or +Infinity logit means the forward pass broke (an overflow in a reduction step, a bad
    // bundle): an answer drawn from it would look valid, so the request fails instead. (-Infinity is
    // a token ruled out, which a model may legitimately say, but not of every token.)
    let anyFinite = false;
    for (let i = 0; i < logits.length; i++) {
      const x = logits[i]!;
      if (Number.isNaN(x) || x === Infinity) throw new VlmError('INTERNAL', `the model produced a non-finite logit (${x} for token ${i}); no answer is drawn from it`);
      if (x !== -Infinity) anyFinite = true;
    }
    if (!anyFinite) throw new VlmError('INTERNAL', `the model ruled out every token (all ${logits.length} logits are -Infinity); no answer is drawn from it`);
    if (this.params.temperature === 0) return argmax(logits);
    const n = logits.length;
    const max = logits[argmax(logits)]!;
    const w = new Float64Array(n);
    for (let i = 0; i < n; i++) w[i] = Math.exp((logits[i]! - max) / this.params.temperature);
    // Candidates go in descending logit order (ties by index), but only as far as a choice needs
    // them: sorting a 32k vocabulary at every step costs more than the rest of the sampler.
    if (this.params.topK > 0 && this.params.topK < n) {
      const k = this.params.topK;
      return this.pick(descendingPrefix(logits, w, (count) => count >= k), w, true);
    }
    let total = 0;
    for (let i = 0; i < n; i++) total += w[i]!;
    if (this.params.topP < 1) {
      const need = this.params.topP * total;
      return this.pick(descendingPrefix(logits, w, (_, mass) => mass >= need), w, false);
    }
    const r = this.random() * total;
    const walked = descendingPrefix(logits, w, (_, mass) => mass >= r);
    return walked[walked.length - 1]!;
  }

  /** Draws from sorted candidates with weights `w` (by token id), cutting to top_p first if asked. */
  private pick(order: readonly number[], w: Float64Array, cutTopP: boolean): number {
    const k = order.length;
    let sum = 0;
    for (const i of order) sum += w[i]!;
    // Smallest prefix whose mass reaches top_p (always at least one token).
    let keep = k;
    if (cutTopP && this.params.topP < 1) {
      let acc = 0;
      for (let i = 0; i < k; i++) {
        acc += w[order[i]!]! / sum;
        if (acc >= this.params.topP) {
          keep = i + 1;
          break;
        }
      }
    }
    let mass = 0;
    for (let i = 0; i < keep; i++) mass += w[order[i]!]!;
    let r = this.random() * mass;
    for (let i = 0; i < keep; i++) {
      r -= w[order[i]!]!;
      if (r <= 0) return order[i]!;
    }
    return order[keep - 1]!;
  }
}

/**
 * Token ids in descending logit order (ties by lower id) up to and including the first at which
 * `done(count, cumulative weight)` holds, or all of them. Only the tokens above a weight threshold
 * are sorted; the threshold drops until they suffice. Weights are monotone in the logits, so each
 * such set is a prefix of the full order and the result equals sorting everything.
 */
export function descendingPrefix(logits: Float32Array, w: Float64Array, done: (count: number, mass: number) => boolean): number[] {
  const n = logits.length;
  for (const threshold of [2 ** -4, 2 ** -12, 2 ** -30, 2 ** -60, 0]) {
    const candidates: number[] = [];
    // The last pass takes every token (NaN weights included), so the order is always complete.
    for (let i = 0; i < n; i++) if (threshold === 0 || w[i]! >= threshold) candidates.push(i);
    candidates.sort((a, b) => logits[b]! - logits[a]! || a - b);
    let mass = 0;
    for (let c = 0; c < candidates.length; c++) {
      mass += w[candidates[c]!]!;
      if (done(c + 1, mass)) return candidates.slice(0, c + 1);
    }
    if (threshold === 0) return candidates;
  }
  return [];
}
