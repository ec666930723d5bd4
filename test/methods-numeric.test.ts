/**
 * The numeric kernels reproduce PyTorch where the official code relies on it: torch.quantile's linear
 * interpolation goes through torch's lerp kernel, which computes from the lower end below a weight of
 * 0.5 and from the upper end at or above it.
 */
import { describe, expect, it } from 'vitest';
import { quantileLinear, seededRandom, topkIndices } from '../shared/methods/numeric';

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

describe('quantileLinear by selection', () => {
  /** The definition: sort, then torch's lerp between the two neighbours. */
  function bySort(values: readonly number[], q: number): number {
    const sorted = Float64Array.from(values).sort();
    const pos = q * (sorted.length - 1);
    const lo = Math.floor(pos);
    const [a, b, frac] = [sorted[lo]!, sorted[Math.min(lo + 1, sorted.length - 1)]!, pos - lo];
    if (frac === 0) return a;
    return frac < 0.5 ? a + frac * (b - a) : b - (b - a) * (1 - frac);
  }

  it('equals the sorted definition on rows with ties, infinities, signed zeros and NaN, at every length up to 40', () => {
    const rand = seededRandom(2024);
    const pool = [-Infinity, Infinity, -0, 0, 1, -1, 0.5, 2.25];
    let checked = 0;
    for (let n = 1; n <= 40; n++) {
      for (let trial = 0; trial < 60; trial++) {
        const kind = trial % 4;
        const row = Array.from({ length: n }, () =>
          kind === 0 ? rand() * 10 - 5 : kind === 1 ? pool[Math.floor(rand() * pool.length)]! : kind === 2 ? Math.floor(rand() * 3) : rand() < 0.1 ? NaN : rand(),
        );
        for (const q of [0, 0.25, 0.5, 0.998, 1, rand()]) {
          const got = quantileLinear(row, q);
          const want = bySort(row, q);
          // -0 and +0 may trade places among equal values; callers only compare against the result.
          expect(Number.isNaN(want) ? Number.isNaN(got) : got === want, `n ${n}, q ${q}, row ${row.join(' ')}: ${got} vs ${want}`).toBe(true);
          checked++;
        }
      }
    }
    expect(checked).toBe(40 * 60 * 6);
  });

  it('leaves its input as it was', () => {
    const row = Float32Array.of(3, 1, 2);
    quantileLinear(row, 0.5);
    expect(Array.from(row)).toEqual([3, 1, 2]);
  });
});


describe('topkIndices', () => {
  /** The definition: every index sorted larger value first, NaN last, ties (NaNs too) by index. */
  function bySort(values: readonly number[], k: number): number[] {
    const rank = (v: number) => (Number.isNaN(v) ? -Infinity : v);
    return values
      .map((v, i) => ({ v, i, nan: Number.isNaN(v) }))
      .sort((x, y) => (x.nan !== y.nan ? (x.nan ? 1 : -1) : rank(y.v) - rank(x.v) || x.i - y.i))
      .slice(0, k)
      .map((e) => e.i);
  }

  it('is the sorted definition, by selection for small k and by sorting past it, with ties, NaN and infinities', () => {
    const random = seededRandom(7);
    for (let t = 0; t < 3000; t++) {
      const n = Math.floor(random() * 150);
      const values = Array.from({ length: n }, () => {
        const r = random();
        return r < 0.1 ? NaN : r < 0.3 ? Math.floor(random() * 3) : r < 0.35 ? -Infinity : r < 0.4 ? Infinity : random();
      });
      const k = Math.floor(random() * (n + 3));
      expect(topkIndices(Float64Array.from(values), k), `n ${n}, k ${k}`).toEqual(bySort(values, Math.min(k, n)));
    }
  });

  it('keeps the lower index first among equal values', () => {
    expect(topkIndices([1, 3, 3, 2, 3], 2)).toEqual([1, 2]);
    expect(topkIndices([NaN, 0, NaN], 3)).toEqual([1, 0, 2]);
  });
});
