/** Small numeric kernels over Float32Arrays: softmax, top-k, argmax. */

/** Softmax of each row of a rows x cols matrix, in place, computed with the row max subtracted. */
export function softmaxRows(data: Float32Array, cols: number): Float32Array {
  for (let base = 0; base < data.length; base += cols) {
    let max = -Infinity;
    for (let i = 0; i < cols; i++) if (data[base + i]! > max) max = data[base + i]!;
    let sum = 0;
    for (let i = 0; i < cols; i++) {
      const e = Math.exp(data[base + i]! - max);
      data[base + i] = e;
      sum += e;
    }
    for (let i = 0; i < cols; i++) data[base + i]! /= sum;
  }
  return data;
}

/** Indices of the k largest values, largest first; equal values keep ascending index order. */
export function topK(values: ArrayLike<number>, k: number): Int32Array {
  const n = values.length;
  const kk = Math.max(0, Math.min(k, n));
  const idx = Array.from({ length: n }, (_, i) => i);
  idx.sort((a, b) => values[b]! - values[a]! || a - b);
  return Int32Array.from(idx.slice(0, kk));
}

/** First index of the largest value (NaN never wins). */
export function argmax(values: ArrayLike<number>, start = 0, end = values.length): number {
  let best = start;
  for (let i = start + 1; i < end; i++) if (values[i]! > values[best]! || Number.isNaN(values[best]!)) best = i;
  return best - start;
}
