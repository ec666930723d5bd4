/**
 * A [rows, cols] block of embeddings in the dtype the graph produced it: float32 values, or float16
 * as raw bits. The projected visual tokens travel in this form from the projector, over the hop, to
 * the decoder's first layer, so a float16 bundle never widens them to float32 on the way (on
 * LLaVA-7B that was four passes over 576 x 4096 values per request).
 */
import { VlmError } from '../errors';
import { toFloat16, toFloat32 } from './fp16';
import type { Matrix } from '../methods/types';
import type { FloatDType } from './dtype';

export type FloatRows = { readonly dims: readonly [number, number] } & (
  | { readonly dtype: 'float32'; readonly data: Float32Array }
  | { readonly dtype: 'float16'; readonly data: Uint16Array }
);

/**
 * Rows of a stated dtype. The dtype is never guessed from the array: a float16 block must be a
 * Uint16Array of bits (onnxruntime-common hands out a Float16Array of values where that global
 * exists; reading one as bits would be silent garbage), a float32 block a Float32Array.
 */
export function floatRows(dims: readonly [number, number], dtype: FloatDType, data: Float32Array | Uint16Array): FloatRows {
  if (data.length !== dims[0] * dims[1]) throw new VlmError('INTERNAL', `rows [${dims.join(', ')}] do not match ${data.length} values`);
  if (dtype === 'float32' && data instanceof Float32Array) return { dims, dtype, data };
  if (dtype === 'float16' && data instanceof Uint16Array) return { dims, dtype, data };
  throw new VlmError('INTERNAL', `${dtype} rows given as ${Object.prototype.toString.call(data).slice(8, -1)}`);
}

/** The values as float32 (the same array when already float32). */
export function rowsFloat32(r: FloatRows): Float32Array {
  return r.dtype === 'float32' ? r.data : toFloat32(r.data);
}

/** As a float32 matrix, for code that reads values (a method's prepare, a tap). */
export function rowsMatrix(r: FloatRows): Matrix {
  return { rows: r.dims[0], cols: r.dims[1], data: rowsFloat32(r) };
}

/** The rows in `dtype`, converted only when they are in the other one. */
export function rowsIn(r: FloatRows, dtype: FloatDType): FloatRows {
  if (r.dtype === dtype) return r;
  return r.dtype === 'float32' ? { dims: r.dims, dtype: 'float16', data: toFloat16(r.data) } : { dims: r.dims, dtype: 'float32', data: toFloat32(r.data) };
}

/** Stacks blocks of one dtype and width, copying each once. */
export function concatRows(parts: readonly FloatRows[]): FloatRows {
  const first = parts[0];
  if (!first) throw new VlmError('INTERNAL', 'concatRows of nothing');
  const cols = first.dims[1];
  let rows = 0;
  for (const p of parts) {
    if (p.dtype !== first.dtype || p.dims[1] !== cols) throw new VlmError('INTERNAL', `concatRows: ${p.dtype}[${p.dims.join(', ')}] beside ${first.dtype}[${first.dims.join(', ')}]`);
    rows += p.dims[0];
  }
  const data = first.dtype === 'float32' ? new Float32Array(rows * cols) : new Uint16Array(rows * cols);
  let at = 0;
  for (const p of parts) {
    data.set(p.data.subarray(0, p.dims[0] * cols), at);
    at += p.dims[0] * cols;
  }
  return floatRows([rows, cols], first.dtype, data);
}

/** Rows [start, start + count) as a view. */
export function sliceRows(r: FloatRows, start: number, count: number): FloatRows {
  const cols = r.dims[1];
  return floatRows([count, cols], r.dtype, r.data.subarray(start * cols, (start + count) * cols));
}
