/**
 * Row operations on row-major matrices: checking and applying a TokenCombination (CSR).
 * Each allocates its output once and copies every row at most once.
 */
import { VlmError } from '../errors';
import type { Span, TokenCombination } from '../methods/types';
import { float16Values, toFloat16 } from './fp16';

/** Checks a combination against its input row count; a method bug becomes an INTERNAL error naming the method. */
export function checkCombination(c: TokenCombination, inputRows: number, who: string): void {
  const k = c.indptr.length - 1;
  if (k < 0 || c.indptr[0] !== 0 || c.indptr[k] !== c.src.length || c.src.length !== c.weight.length) {
    throw new VlmError('INTERNAL', `${who}: malformed TokenCombination (indptr ${c.indptr.length}, src ${c.src.length}, weight ${c.weight.length})`);
  }
  for (let i = 0; i < k; i++) {
    if (c.indptr[i + 1]! < c.indptr[i]!) throw new VlmError('INTERNAL', `${who}: TokenCombination indptr decreases at ${i}`);
  }
  for (let j = 0; j < c.src.length; j++) {
    const s = c.src[j]!;
    if (s < 0 || s >= inputRows) throw new VlmError('INTERNAL', `${who}: TokenCombination source ${s} outside [0, ${inputRows})`);
  }
}

export function outputRows(c: TokenCombination): number {
  return c.indptr.length - 1;
}

/** Rows as float32 values, or as float16 bit patterns (a float16 bundle's residual stream, never converted whole). */
export type RowData = Float32Array | Uint16Array;
export interface Rows<T extends RowData = RowData> {
  readonly rows: number;
  readonly cols: number;
  readonly data: T;
}

/**
 * out[k] = sum_j weight[j] * in[src[j]] over row k's entries. A single weight-1 source is a copy,
 * in either representation; a merged float16 row is summed in float32 exactly as the float32 path
 * sums it, then rounded once, so both give the same bits.
 */
export function combineRows<T extends RowData>(m: Rows<T>, c: TokenCombination): Rows<T> {
  const k = outputRows(c);
  const D = m.cols;
  const out = like(m.data, k * D);
  const scratch = new Float32Array(D);
  for (let r = 0; r < k; r++) combineRowInto(m, c, r, out, r * D, scratch);
  return { rows: k, cols: D, data: out };
}

/**
 * Replaces rows [span.start, span.start+span.length) of m by the combination of those rows; rows
 * outside the span are kept. Source indices of the combination are relative to the span.
 */
export function combineSpan<T extends RowData>(m: Rows<T>, span: Span, c: TokenCombination): Rows<T> {
  const D = m.cols;
  const end = span.start + span.length;
  if (span.start < 0 || end > m.rows) throw new VlmError('INTERNAL', `combineSpan: span [${span.start}, ${end}) outside ${m.rows} rows`);
  const k = outputRows(c);
  const rows = m.rows - span.length + k;
  const out = like(m.data, rows * D);
  out.set(m.data.subarray(0, span.start * D), 0);
  const spanView: Rows<T> = { rows: span.length, cols: D, data: m.data.subarray(span.start * D, end * D) as T };
  const scratch = new Float32Array(D);
  for (let r = 0; r < k; r++) combineRowInto(spanView, c, r, out, (span.start + r) * D, scratch);
  out.set(m.data.subarray(end * D), (span.start + k) * D);
  return { rows, cols: D, data: out };
}

function like<T extends RowData>(data: T, n: number): T {
  return (data instanceof Uint16Array ? new Uint16Array(n) : new Float32Array(n)) as T;
}

function combineRowInto<T extends RowData>(m: Rows<T>, c: TokenCombination, r: number, out: T, at: number, scratch: Float32Array): void {
  const D = m.cols;
  const a = c.indptr[r]!;
  const b = c.indptr[r + 1]!;
  if (b - a === 1 && c.weight[a] === 1) {
    const s = c.src[a]!;
    out.set(m.data.subarray(s * D, (s + 1) * D), at);
    return;
  }
  if (m.data instanceof Float32Array) {
    const acc = out as Float32Array;
    for (let j = a; j < b; j++) {
      const w = c.weight[j]!;
      const base = c.src[j]! * D;
      for (let d = 0; d < D; d++) acc[at + d]! += w * m.data[base + d]!;
    }
    return;
  }
  const bits = m.data as Uint16Array;
  const value = float16Values();
  scratch.fill(0);
  for (let j = a; j < b; j++) {
    const w = c.weight[j]!;
    const base = c.src[j]! * D;
    for (let d = 0; d < D; d++) scratch[d]! += w * value[bits[base + d]!]!;
  }
  (out as Uint16Array).set(toFloat16(scratch), at);
}

/** Maps per-row integers (e.g. positions, origins) through a combination: each output row takes its first source's value. */
export function firstSourceValues<T extends Int32Array | Float64Array>(values: T, c: TokenCombination, make: (n: number) => T): T {
  const k = outputRows(c);
  const out = make(k);
  for (let r = 0; r < k; r++) {
    const a = c.indptr[r]!;
    out[r] = c.indptr[r + 1]! > a ? values[c.src[a]!]! : -1;
  }
  return out;
}
