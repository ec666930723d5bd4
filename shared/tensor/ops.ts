/** argmax over logits (the sampler's greedy step); the methods' numerics live in shared/methods/numeric.ts. */

/** First index of the largest value (NaN never wins). */
export function argmax(values: ArrayLike<number>, start = 0, end = values.length): number {
  let best = start;
  for (let i = start + 1; i < end; i++) if (values[i]! > values[best]! || Number.isNaN(values[best]!)) best = i;
  return best - start;
}
