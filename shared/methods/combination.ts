/**
 * Building and applying TokenCombinations (CSR maps from input rows to output rows).
 * `apply` is the reference the tests use; the runner has its own (possibly on-device) version.
 */
import { VlmError } from '../errors';
import { outputRows } from '../tensor/rows';
import type { Matrix, TokenCombination } from './types';

/** One output row: a weighted sum of input rows (duplicates are summed). */
export type RowRecipe = ReadonlyArray<readonly [src: number, weight: number]>;

export function fromRecipes(rows: readonly RowRecipe[]): TokenCombination {
  const indptr = new Int32Array(rows.length + 1);
  const src: number[] = [];
  const weight: number[] = [];
  rows.forEach((recipe, k) => {
    const merged = new Map<number, number>();
    for (const [s, w] of recipe) merged.set(s, (merged.get(s) ?? 0) + w);
    for (const [s, w] of merged) {
      src.push(s);
      weight.push(w);
    }
    indptr[k + 1] = src.length;
  });
  return { indptr, src: Int32Array.from(src), weight: Float32Array.from(weight) };
}

/** Pure selection: output row k is input row keep[k]. */
export function selection(keep: readonly number[]): TokenCombination {
  return fromRecipes(keep.map((s) => [[s, 1]] as const));
}

export { outputRows };

export function applyCombination(c: TokenCombination, x: Matrix): Matrix {
  const rows = outputRows(c);
  const out = new Float32Array(rows * x.cols);
  const acc = new Float64Array(x.cols);
  for (let k = 0; k < rows; k++) {
    acc.fill(0);
    for (let e = c.indptr[k]!; e < c.indptr[k + 1]!; e++) {
      const s = c.src[e]!;
      if (s < 0 || s >= x.rows) throw new VlmError('INTERNAL', `combination row ${k} reads input row ${s} of ${x.rows}`);
      const w = c.weight[e]!;
      for (let d = 0; d < x.cols; d++) acc[d] = acc[d]! + w * x.data[s * x.cols + d]!;
    }
    for (let d = 0; d < x.cols; d++) out[k * x.cols + d] = acc[d]!;
  }
  return { rows, cols: x.cols, data: out };
}
