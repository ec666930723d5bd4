/**
 * Pillow's resize for 8-bit RGB, reproduced exactly (Pillow's libImaging/Resample.c and the affine
 * nearest path of Image.resize): the Python reference preprocesses with PIL (Hugging Face's image
 * processors call Image.resize), and sharp's kernels differ from PIL's by up to ~13/255 at edges.
 *
 * Bicubic (a = -0.5) and bilinear are separable convolutions whose support widens with the
 * downscale factor (antialiasing); coefficients are normalised per output pixel, then converted to
 * 22-bit fixed point, and each pass rounds and clips to uint8, horizontal pass first, as PIL does.
 */
import type { Resample } from '../bundle/manifest';

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

interface Filter {
  readonly support: number;
  readonly f: (x: number) => number;
}

const FILTERS: Record<Exclude<Resample, 'nearest'>, Filter> = {
  bilinear: {
    support: 1,
    f: (x) => {
      const a = Math.abs(x);
      return a < 1 ? 1 - a : 0;
    },
  },
  bicubic: {
    support: 2,
    f: (x) => {
      const A = -0.5;
      const a = Math.abs(x);
      if (a < 1) return ((A + 2) * a - (A + 3)) * a * a + 1;
      if (a < 2) return (((a - 5) * a + 8) * a - 4) * A;
      return 0;
    },
  },
};

interface Coeffs {
  readonly ksize: number;
  /** Per output pixel: first input index and count. */
  readonly bounds: Int32Array;
  /** Fixed-point weights, ksize per output pixel (int32, as Pillow keeps them: every sum fits in 32 bits). */
  readonly k: Int32Array;
}

/** precompute_coeffs + normalize_coeffs_8bpc. */
function coefficients(inSize: number, outSize: number, filter: Filter): Coeffs {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const k = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      w[x] = filter.f((x + xmin - center + 0.5) * ss);
      ww += w[x]!;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x]! / ww : w[x]!;
      k[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, k };
}

/** The sum's integer part, clipped to uint8; `>>` is Pillow's shift (a floor, also below zero) on a sum below 2^31. */
function clip8(ss: number): number {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** One pass along x (stride 3 per pixel), the three channels of a pixel together. */
function horizontal(src: Uint8Array, width: number, height: number, outW: number, c: Coeffs): Uint8Array {
  const out = new Uint8Array(outW * height * 3);
  const { k, bounds, ksize } = c;
  let o = 0;
  for (let y = 0; y < height; y++) {
    const row = y * width * 3;
    for (let xx = 0; xx < outW; xx++) {
      const n = bounds[xx * 2 + 1]!;
      const kb = xx * ksize;
      let p = row + bounds[xx * 2]! * 3;
      let s0 = ONE / 2;
      let s1 = ONE / 2;
      let s2 = ONE / 2;
      for (let x = 0; x < n; x++, p += 3) {
        const w = k[kb + x]!;
        s0 += src[p]! * w;
        s1 += src[p + 1]! * w;
        s2 += src[p + 2]! * w;
      }
      out[o++] = clip8(s0);
      out[o++] = clip8(s1);
      out[o++] = clip8(s2);
    }
  }
  return out;
}

/** One pass along y (stride 3*width per row). */
function vertical(src: Uint8Array, width: number, outH: number, c: Coeffs, firstRow: number): Uint8Array {
  const stride = width * 3;
  const out = new Uint8Array(stride * outH);
  const { k, bounds, ksize } = c;
  for (let yy = 0; yy < outH; yy++) {
    const top = (bounds[yy * 2]! - firstRow) * stride;
    const n = bounds[yy * 2 + 1]!;
    const kb = yy * ksize;
    const o = yy * stride;
    for (let i = 0; i < stride; i++) {
      let ss = ONE / 2;
      for (let y = 0, p = top + i; y < n; y++, p += stride) ss += src[p]! * k[kb + y]!;
      out[o + i] = clip8(ss);
    }
  }
  return out;
}

/** PIL's NEAREST: the affine transform samples input floor((x + 0.5) * scale). */
function nearest(src: Uint8Array, width: number, height: number, outW: number, outH: number): Uint8Array {
  const out = new Uint8Array(outW * outH * 3);
  const sx = width / outW;
  const sy = height / outH;
  for (let y = 0; y < outH; y++) {
    const iy = Math.min(height - 1, Math.floor((y + 0.5) * sy));
    for (let x = 0; x < outW; x++) {
      const ix = Math.min(width - 1, Math.floor((x + 0.5) * sx));
      const s = (iy * width + ix) * 3;
      const d = (y * outW + x) * 3;
      out[d] = src[s]!;
      out[d + 1] = src[s + 1]!;
      out[d + 2] = src[s + 2]!;
    }
  }
  return out;
}

/** Resizes packed 8-bit RGB (HWC) as Pillow's Image.resize((outW, outH), resample) does. */
export function pilResize(src: Uint8Array, width: number, height: number, outW: number, outH: number, resample: Resample): Uint8Array {
  if (width === outW && height === outH) return src;
  if (resample === 'nearest') return nearest(src, width, height, outW, outH);
  const filter = FILTERS[resample];
  const needH = outW !== width;
  const needV = outH !== height;
  const ch = coefficients(width, outW, filter);
  const cv = coefficients(height, outH, filter);
  if (!needV) return horizontal(src, width, height, outW, ch);
  if (!needH) return vertical(src, width, outH, cv, 0);
  // Only the input rows the vertical pass reads go through the horizontal pass.
  const first = cv.bounds[0]!;
  const last = cv.bounds[(outH - 1) * 2]! + cv.bounds[(outH - 1) * 2 + 1]!;
  const rows = src.subarray(first * width * 3, last * width * 3);
  const temp = horizontal(rows, width, last - first, outW, ch);
  return vertical(temp, outW, outH, cv, first);
}
