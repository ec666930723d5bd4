/**
 * Tensors as the engine holds them on the host: explicit dims, row-major, batch 1 by convention.
 * Floating tensors are always float32 here; a float16 bundle converts at the ONNX boundary only
 * (shared/onnx/run-stage.ts).
 */
import { VlmError } from '../errors';
import type { Matrix } from '../methods/types';

export interface F32Tensor {
  readonly dtype: 'float32';
  readonly dims: readonly number[];
  readonly data: Float32Array;
}

export interface I64Tensor {
  readonly dtype: 'int64';
  readonly dims: readonly number[];
  readonly data: BigInt64Array;
}

export type HostTensor = F32Tensor | I64Tensor;

export function sizeOf(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

export function f32(dims: readonly number[], data: Float32Array = new Float32Array(sizeOf(dims))): F32Tensor {
  if (data.length !== sizeOf(dims)) throw new VlmError('INTERNAL', `f32 tensor: ${data.length} values do not fill dims [${dims.join(',')}]`);
  return { dtype: 'float32', dims, data };
}

export function i64(dims: readonly number[], values: ArrayLike<number> | BigInt64Array): I64Tensor {
  const data = values instanceof BigInt64Array ? values : BigInt64Array.from(Array.from(values as ArrayLike<number>, (v) => BigInt(v)));
  if (data.length !== sizeOf(dims)) throw new VlmError('INTERNAL', `i64 tensor: ${data.length} values do not fill dims [${dims.join(',')}]`);
  return { dtype: 'int64', dims, data };
}

/** Views a [1,T,D] (or [T,D]) tensor as a T x D matrix without copying. */
export function asMatrix(t: F32Tensor): Matrix {
  const dims = t.dims.length === 3 ? t.dims.slice(1) : t.dims;
  if (dims.length !== 2 || (t.dims.length === 3 && t.dims[0] !== 1)) {
    throw new VlmError('INTERNAL', `expected [1,T,D] or [T,D], got [${t.dims.join(',')}]`);
  }
  return { rows: dims[0]!, cols: dims[1]!, data: t.data };
}

/** A T x D matrix as a batch-1 [1,T,D] tensor, sharing the data. */
export function batched(m: Matrix): F32Tensor {
  return f32([1, m.rows, m.cols], m.data);
}
