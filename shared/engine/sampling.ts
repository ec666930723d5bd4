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
    throw VlmError.invalid('sampling.max_new_tokens', `must be an integer in [1, ${maxNewTokensLimit}], got ${s.maxNewTokens}`);
  }
}

export class Sampler {
  private readonly random: () => number;

  constructor(private readonly params: Omit<SamplingParams, 'maxNewTokens'>) {
    // The same mulberry32 the seeded methods use: small, fast, and reproducible across platforms.
    this.random = seededRandom(params.seed);
  }

  next(logits: Float32Array): number {
    if (this.params.temperature === 0) return argmax(logits);
    const n = logits.length;
    const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
    const k = this.params.topK > 0 ? Math.min(this.params.topK, n) : n;
    const max = logits[order[0]!]!;
    const p = new Float64Array(k);
    let sum = 0;
    for (let i = 0; i < k; i++) sum += p[i] = Math.exp((logits[order[i]!]! - max) / this.params.temperature);
    // Smallest prefix whose mass reaches top_p (always at least one token).
    let keep = k;
    if (this.params.topP < 1) {
      let acc = 0;
      for (let i = 0; i < k; i++) {
        acc += p[i]! / sum;
        if (acc >= this.params.topP) {
          keep = i + 1;
          break;
        }
      }
    }
    let mass = 0;
    for (let i = 0; i < keep; i++) mass += p[i]!;
    let r = this.random() * mass;
    for (let i = 0; i < keep; i++) {
      r -= p[i]!;
      if (r <= 0) return order[i]!;
    }
    return order[keep - 1]!;
  }
}
