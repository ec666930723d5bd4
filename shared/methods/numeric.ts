/**
 * Small numeric kernels shared by the methods, written to reproduce PyTorch's definitions where the
 * official code relies on them (linear-interpolation quantile, F.normalize's eps), and with
 * deterministic tie-breaks where PyTorch leaves the order unspecified (topk, argsort).
 *
 * Two deliberate differences. Softmax is computed in float64 where the official code's is fp32: the
 * results agree to float32 rounding (the official vectors check this), and only a near-tie between
 * merge targets could fall the other way. NaN, which only a broken model produces, is ordered last
 * (topk, quantile) where torch orders it first (topk) or returns it (quantile): the result is a
 * definite ranking of the finite scores instead of one decided by the NaNs.
 */
import type { Matrix } from './types';

export function row(m: Matrix, i: number): Float32Array {
  return m.data.subarray(i * m.cols, (i + 1) * m.cols);
}

/**
 * torch.quantile(x, q) with the default 'linear' interpolation. Only the two order statistics around
 * q·(n−1) are needed, so they are selected (O(n)) instead of sorting the row: FiCoCo-V and FiCoCo-L
 * take one quantile per discarded token, and the sort was 40 % of FiCoCo-V's host time. A row with
 * NaN is sorted as before (NaN last, as the typed-array sort places it).
 */
export function quantileLinear(values: ArrayLike<number>, q: number): number {
  const x = Float64Array.from(values);
  const n = x.length;
  const pos = q * (n - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, n - 1);
  const frac = pos - lo;
  let a: number;
  let b: number;
  if (x.some(Number.isNaN)) {
    x.sort();
    a = x[lo]!;
    b = x[hi]!;
  } else {
    a = selectKth(x, lo);
    // After selection everything from lo + 1 on is >= a: the next order statistic is their minimum.
    b = a;
    if (hi > lo) {
      b = x[lo + 1]!;
      for (let i = lo + 2; i < n; i++) if (x[i]! < b) b = x[i]!;
    }
  }
  // -inf entries (masked diagonals) must not turn the result into NaN when frac is 0.
  if (frac === 0) return a;
  // torch's lerp kernel, both branches: they round differently, and from the upper end a -inf lower
  // neighbour gives -inf where the lower-end form gives NaN (a count of nothing above it).
  return frac < 0.5 ? a + frac * (b - a) : b - (b - a) * (1 - frac);
}

/**
 * The k-th smallest value of x (0-based), rearranging x so that x[k] holds it, everything before it
 * is <= and everything after it >= (Hoare's selection, median-of-three pivots). x holds no NaN.
 */
function selectKth(x: Float64Array, k: number): number {
  let left = 0;
  let right = x.length - 1;
  while (right > left) {
    const mid = (left + right) >> 1;
    // Median of three as the pivot, so sorted or constant rows stay linear.
    if (x[mid]! < x[left]!) swap(x, mid, left);
    if (x[right]! < x[left]!) swap(x, right, left);
    if (x[right]! < x[mid]!) swap(x, right, mid);
    const pivot = x[mid]!;
    let i = left;
    let j = right;
    while (i <= j) {
      while (x[i]! < pivot) i++;
      while (x[j]! > pivot) j--;
      if (i <= j) {
        swap(x, i, j);
        i++;
        j--;
      }
    }
    if (k <= j) right = j;
    else if (k >= i) left = i;
    else break; // j < k < i: x[k] equals the pivot and sits between the two parts
  }
  return x[k]!;
}

function swap(x: Float64Array, i: number, j: number): void {
  const t = x[i]!;
  x[i] = x[j]!;
  x[j] = t;
}

/** Indices sorted by value ascending; equal values keep index order. */
export function argsortAscending(values: ArrayLike<number>): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  return idx.sort((a, b) => values[a]! - values[b]! || a - b);
}

/** Whether index a comes before index b in topkIndices' order: larger first, NaN last, ties (NaNs too) to the lower index. */
function ranksBefore(values: ArrayLike<number>, a: number, b: number): boolean {
  const va = values[a]!;
  const vb = values[b]!;
  if (va === vb || (Number.isNaN(va) && Number.isNaN(vb))) return a < b;
  if (Number.isNaN(va)) return false;
  if (Number.isNaN(vb)) return true;
  return va > vb;
}

/**
 * Up to this k, one pass keeping a sorted list of the best k beats sorting the row: FiCoCo's
 * correlate step asks for a handful of targets per discarded token, from rows of hundreds.
 */
const SELECT_MAX_K = 64;

/** Indices of the k largest values, largest first; equal values: lower index first; NaN last. */
export function topkIndices(values: ArrayLike<number>, k: number): number[] {
  const want = Math.max(0, Math.min(k, values.length));
  return want <= SELECT_MAX_K ? selectTopK(values, want) : sortedTopK(values, want);
}

/** One pass, keeping the best `k` so far in order: each index is inserted where it ranks, and the list's last drops out past k. */
function selectTopK(values: ArrayLike<number>, k: number): number[] {
  const best: number[] = [];
  if (k === 0) return best;
  for (let i = 0; i < values.length; i++) {
    if (best.length === k) {
      if (!ranksBefore(values, i, best[k - 1]!)) continue;
      best.pop();
    }
    let at = best.length;
    while (at > 0 && ranksBefore(values, i, best[at - 1]!)) at--;
    best.splice(at, 0, i);
  }
  return best;
}

function sortedTopK(values: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => (a === b ? 0 : ranksBefore(values, a, b) ? -1 : 1));
  return idx.slice(0, k);
}

/** Softmax of one row, in float64, -inf entries giving 0 (a row with no finite entry is NaN: callers never pass one). */
export function softmax(values: ArrayLike<number>): Float64Array {
  const out = new Float64Array(values.length);
  let max = -Infinity;
  for (let i = 0; i < values.length; i++) max = Math.max(max, values[i]!);
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    const e = values[i] === -Infinity ? 0 : Math.exp(values[i]! - max);
    out[i] = e;
    sum += e;
  }
  for (let i = 0; i < out.length; i++) out[i] = out[i]! / sum;
  return out;
}

/** F.normalize(x, p=2, eps=1e-12). */
export function l2normalize(values: ArrayLike<number>): Float64Array {
  let ss = 0;
  for (let i = 0; i < values.length; i++) ss += values[i]! * values[i]!;
  const norm = Math.max(Math.sqrt(ss), 1e-12);
  const out = new Float64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = values[i]! / norm;
  return out;
}

export function mean(values: ArrayLike<number>, from = 0, to = values.length): number {
  let s = 0;
  for (let i = from; i < to; i++) s += values[i]!;
  return s / (to - from);
}

/**
 * A seed of up to 53 bits (the API's uint64 seeds, as far as a JS number holds them exactly) folded
 * into 32 bits of generator state: the low word as is, so every seed below 2^32 draws what it always
 * drew, and the high word mixed in, so s and s + 2^32 do not draw the same stream.
 */
function foldSeed(seed: number): number {
  const high = Math.floor(seed / 0x100000000);
  return ((seed >>> 0) ^ Math.imul(high, 0x9e3779b1)) >>> 0;
}

/**
 * Seeded uniform [0,1) generator (mulberry32): reproducible per request and step. `salt` (32 bits)
 * separates streams of one seed (a layer's draws from another's), mixed in after the fold.
 */
export function seededRandom(seed: number, salt = 0): () => number {
  let a = (foldSeed(seed) ^ salt) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** k distinct indices of [0, n), drawn uniformly (partial Fisher-Yates), returned ascending. */
export function sampleIndices(n: number, k: number, rand: () => number): number[] {
  const pool = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(rand() * (n - i));
    const t = pool[i]!;
    pool[i] = pool[j]!;
    pool[j] = t;
  }
  return pool.slice(0, k).sort((a, b) => a - b);
}

/**
 * Eigenvalues of a symmetric matrix (n x n, row-major, float64) by cyclic Jacobi rotations. Used for
 * SparseVLM v1's matrix rank: the singular values of P are the square roots of eig(P Pᵀ), and P Pᵀ
 * is only (raters x raters).
 */
export function symmetricEigenvalues(a: Float64Array, n: number): Float64Array {
  const m = Float64Array.from(a);
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += m[p * n + q]! * m[p * n + q]!;
    if (off < 1e-300) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = m[p * n + q]!;
        if (apq === 0) continue;
        const app = m[p * n + p]!;
        const aqq = m[q * n + q]!;
        const theta = (aqq - app) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = m[k * n + p]!;
          const akq = m[k * n + q]!;
          m[k * n + p] = c * akp - s * akq;
          m[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = m[p * n + k]!;
          const aqk = m[q * n + k]!;
          m[p * n + k] = c * apk - s * aqk;
          m[q * n + k] = s * apk + c * aqk;
        }
      }
    }
  }
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = m[i * n + i]!;
  return out;
}
