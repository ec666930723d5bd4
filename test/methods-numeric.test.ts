/**
 * The numeric kernels reproduce PyTorch where the official code relies on it: torch.quantile's linear
 * interpolation goes through torch's lerp kernel, which computes from the lower end below a weight of
 * 0.5 and from the upper end at or above it.
 */
import { describe, expect, it } from 'vitest';
import { quantileLinear } from '../shared/methods/numeric';

describe('quantileLinear (torch.quantile, linear)', () => {
  it('interpolates between the two neighbours of q·(n−1)', () => {
    expect(quantileLinear([4, 1, 3, 2], 0.5)).toBe(2.5);
    expect(quantileLinear([0, 10], 0.25)).toBe(2.5);
    expect(quantileLinear([0, 10], 0.75)).toBe(7.5);
    expect(quantileLinear([5, 7, 9], 1)).toBe(9);
  });

  it('returns a -inf lower neighbour from the upper end (-inf), as torch does for a masked diagonal', () => {
    // Two slots, one of them a -inf diagonal, ε = 0.998: torch gives -inf, so the finite entry counts as above it.
    expect(quantileLinear([-Infinity, 3], 0.998)).toBe(-Infinity);
    // Below a weight of 0.5 torch computes -inf + w·inf: NaN, and nothing counts as above it.
    expect(quantileLinear([-Infinity, 3], 0.25)).toBeNaN();
    expect(quantileLinear([-Infinity, 3, 4], 0.5)).toBe(3);
  });

  it('rounds as the upper-end form does at weights of 0.5 and above', () => {
    // A pair where the two forms differ in the last bit.
    const [a, b, w] = [0.9622013020262989, 8.417035176381457, 0.598091452087837];
    expect(a + w * (b - a)).not.toBe(b - (b - a) * (1 - w));
    expect(quantileLinear([a, b], w)).toBe(b - (b - a) * (1 - w));
    expect(quantileLinear([a, b], 1 - w)).toBe(a + (1 - w) * (b - a));
  });
});
