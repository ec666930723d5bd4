"""Deterministic test matrices shared with TypeScript (test/methods-inputs.ts).

Every entry is an exact float32 value computed from integer hashing, so Python and TypeScript build
bit-identical inputs from a few integers and the fixtures need not store large matrices.

    value(seed, i, j) = (fmix32(seed ^ (i+1)*0x9E3779B1 ^ (j+1)*0x85EBCA77) >> 8 - 2^23) / 2^23
    matrix(seed, rows, cols, scale) = scale * value   (scale a power of two, so still exact)
"""
import numpy as np

M32 = 0xFFFFFFFF


def _fmix32(h):
    h = h.astype(np.uint64)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(M32)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & np.uint64(M32)
    h ^= h >> np.uint64(16)
    return h


def matrix(seed, rows, cols, scale=1.0):
    i = np.arange(rows, dtype=np.uint64)[:, None]
    j = np.arange(cols, dtype=np.uint64)[None, :]
    h = (np.uint64(seed & M32)
         ^ (((i + np.uint64(1)) * np.uint64(0x9E3779B1)) & np.uint64(M32))
         ^ (((j + np.uint64(1)) * np.uint64(0x85EBCA77)) & np.uint64(M32)))
    h = _fmix32(h)
    k = (h >> np.uint64(8)).astype(np.int64) - (1 << 23)
    return (k.astype(np.float64) / float(1 << 23) * scale).astype(np.float32)


def positive(seed, rows, cols):
    """Entries in (0, 1]: attention-like weights."""
    m = matrix(seed, rows, cols, 0.5)
    return (m + np.float32(0.5) + np.float32(2 ** -24)).astype(np.float32)
