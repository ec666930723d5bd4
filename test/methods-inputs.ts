/**
 * Deterministic test matrices, bit-identical to tools/reference/inputs.py: every entry is an exact
 * float32 computed from integer hashing, so fixtures store a seed instead of a matrix.
 */
import type { Matrix } from '../shared/methods/types';

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export function hashMatrix(seed: number, rows: number, cols: number, scale = 1): Matrix {
  const data = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const hi = Math.imul(i + 1, 0x9e3779b1);
    for (let j = 0; j < cols; j++) {
      const h = fmix32((seed ^ hi ^ Math.imul(j + 1, 0x85ebca77)) >>> 0);
      data[i * cols + j] = (((h >>> 8) - 2 ** 23) / 2 ** 23) * scale;
    }
  }
  return { rows, cols, data };
}

/** Entries in (0, 1]: attention-like weights. */
export function positiveMatrix(seed: number, rows: number, cols: number): Matrix {
  const m = hashMatrix(seed, rows, cols, 0.5);
  const data = m.data.map((v) => Math.fround(Math.fround(v + 0.5) + 2 ** -24));
  return { rows, cols, data };
}

export interface StoredMatrix {
  seed: number;
  rows: number;
  cols: number;
  scale?: number;
  kind?: 'signed' | 'positive';
  /** Explicit values (row-major) when the matrix is not a pure hash matrix. */
  data?: number[];
}

export function load(m: StoredMatrix): Matrix {
  if (m.data) return { rows: m.rows, cols: m.cols, data: Float32Array.from(m.data) };
  return m.kind === 'positive' ? positiveMatrix(m.seed, m.rows, m.cols) : hashMatrix(m.seed, m.rows, m.cols, m.scale ?? 1);
}
