/**
 * Image bytes -> pixel_values f32 [1,3,S,S], as the manifest's `preprocess` says.
 *
 * Limits come first and read only the header: the byte count, then width x height x pages against
 * the pixel limit, so a decompression bomb is refused before any pixel is decoded (sharp's
 * limitInputPixels guards the decode as well). Decoding then normalises every input kind to 8-bit
 * sRGB with three channels: EXIF orientation applied, first frame/page only, CMYK and grayscale and
 * palettes converted, 16-bit reduced, alpha flattened onto `alpha_background`. Geometry runs on that
 * raw RGB in explicit steps (not sharp's fixed internal order): crops and pads with sharp, resizing
 * with a byte-exact port of Pillow's (the Python reference's). Normalisation is computed in float32
 * steps, as numpy does.
 */
import sharp from 'sharp';
import { VlmError } from '../errors';
import type { LimitsConfig } from '../config';
import type { PreprocessSpec, Resample, Rgb } from '../bundle/manifest';
import { f32, type F32Tensor } from '../tensor/host-tensor';
import { pilResize } from './pil-resample';
import { SUPPORTED_FORMATS, UNSUPPORTED_FORMAT, sniffFormat } from './format';
import { pagesOver } from './page-count';
import { jpegScans } from './jpeg-scans';
import { withoutPngText } from './png-text';

/**
 * Pages (animation frames, TIFF directories) an image may have. Only the first is used, but a
 * decoder walks them all: 150,000 one-pixel TIFF pages pass the pixel limit and cost about 2 s of
 * decoding on a thread that cannot be cancelled.
 */
export const MAX_PAGES = 64;

/** Scans a progressive JPEG may have (ordinary ones have about ten; each decodes the whole image again). */
export const MAX_JPEG_SCANS = 64;

function tooManyPages(count: string): VlmError {
  return VlmError.invalid('image', `has ${count} pages (frames), over the limit of ${MAX_PAGES}: only the first is used; send it alone`);
}

export type ImageLimits = Pick<LimitsConfig, 'maxImageBytes' | 'maxImagePixels'> & Partial<Pick<LimitsConfig, 'maxAspectRatio'>>;

export { SUPPORTED_FORMATS };

export interface PreprocessedImage {
  readonly pixelValues: F32Tensor;
  /** The decoded image after EXIF orientation, before resizing. */
  readonly width: number;
  readonly height: number;
  readonly format: string;
}

interface Rgb8 {
  readonly data: Buffer;
  readonly width: number;
  readonly height: number;
}

/** What checkImage passed: the header, and the bytes to decode (a PNG's text chunks cut, see png-text.ts). */
export interface CheckedImage {
  readonly meta: sharp.Metadata;
  readonly bytes: Uint8Array;
}

/**
 * Reads the header only and enforces the limits; returns the metadata and the bytes to decode. `resize` is the bundle's
 * geometry: `pad_to_square` first builds a square of the longer side, so that square is what the
 * pixel limit bounds (a 32:1 strip within the limit would otherwise cost 32 times its pixels, about
 * 4 GB and 40 s of a worker for a 40-megapixel strip).
 */
export async function checkImage(input: Uint8Array, limits: ImageLimits, resize?: PreprocessSpec['resize']): Promise<CheckedImage> {
  let bytes = input;
  if (bytes.length === 0) throw VlmError.invalid('image', 'is empty');
  if (bytes.length > limits.maxImageBytes) {
    throw VlmError.invalid('image', `is ${bytes.length} bytes, over the limit of ${limits.maxImageBytes} bytes (--max-image-bytes / VLM_MAX_IMAGE_BYTES)`);
  }
  // Before any decoder sees the bytes: libvips would otherwise pick one of its many loaders (SVG,
  // PDF, HEIF...) from the content, and run it on untrusted input only to be refused afterwards.
  const format = sniffFormat(bytes);
  if (format === null) {
    throw VlmError.invalid('image', UNSUPPORTED_FORMAT);
  }
  // Before libvips too, whose header read walks every page.
  if (pagesOver(bytes, format, MAX_PAGES)) throw tooManyPages(`more than ${MAX_PAGES}`);
  if (format === 'jpeg' && jpegScans(bytes, MAX_JPEG_SCANS + 1) > MAX_JPEG_SCANS) {
    throw VlmError.invalid('image', `is a progressive JPEG of more than ${MAX_JPEG_SCANS} scans (ordinary ones have about ten; each decodes the whole image again): re-encode it`);
  }
  if (format === 'png') bytes = withoutPngText(bytes);
  let meta: sharp.Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw VlmError.invalid('image', `cannot be read as an image (${(err as Error).message}); supported formats: ${SUPPORTED_FORMATS.join(', ')}`);
  }
  if (!meta.format || !SUPPORTED_FORMATS.includes(meta.format)) {
    throw VlmError.invalid('image', `format ${meta.format ?? 'unknown'} is not supported; supported formats: ${SUPPORTED_FORMATS.join(', ')}`);
  }
  const width = meta.width ?? 0;
  const height = meta.pageHeight ?? meta.height ?? 0;
  const pages = meta.pages ?? 1;
  if (pages > MAX_PAGES) throw tooManyPages(String(pages));
  if (width <= 0 || height <= 0) throw VlmError.invalid('image', `has no size in its header (${width}x${height})`);
  const pixels = width * height * pages;
  if (pixels > limits.maxImagePixels) {
    throw VlmError.invalid('image', `is ${width}x${height}${pages > 1 ? ` x ${pages} pages` : ''} = ${pixels} pixels, over the limit of ${limits.maxImagePixels} pixels (max_image_pixels in GetModelInfo)`);
  }
  const side = Math.max(width, height);
  if (resize === 'pad_to_square' && side * side > limits.maxImagePixels) {
    throw VlmError.invalid('image', `is ${width}x${height}, which this model pads to a square of ${side}x${side} = ${side * side} pixels, over the limit of ${limits.maxImagePixels} pixels (max_image_pixels in GetModelInfo)`);
  }
  const ratio = Math.max(width, height) / Math.min(width, height);
  if (limits.maxAspectRatio !== undefined && ratio > limits.maxAspectRatio) {
    throw VlmError.invalid('image', `is ${width}x${height}, an aspect ratio of ${ratio.toFixed(1)}:1, over the limit of ${limits.maxAspectRatio}:1 (max_aspect_ratio in GetModelInfo)`);
  }
  return { meta, bytes };
}

/** Decodes to 8-bit sRGB, 3 channels, oriented, alpha flattened. */
async function decodeRgb8(bytes: Uint8Array, limits: ImageLimits, background: Rgb): Promise<Rgb8> {
  try {
    const { data, info } = await sharp(bytes, { limitInputPixels: limits.maxImagePixels, pages: 1, page: 0, failOn: 'error' })
      .autoOrient()
      .toColourspace('srgb')
      .flatten({ background: { r: background[0], g: background[1], b: background[2] } })
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { data, width: info.width, height: info.height };
  } catch (err) {
    if (err instanceof VlmError) throw err;
    throw VlmError.invalid('image', `cannot be decoded (${(err as Error).message})`);
  }
}

function rawInput(img: Rgb8): sharp.Sharp {
  return sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } });
}

async function toRgb8(s: sharp.Sharp): Promise<Rgb8> {
  const { data, info } = await s.raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

/** Pillow's resize, exactly (pil-resample.ts): the Python reference resizes with PIL. */
async function resize(img: Rgb8, width: number, height: number, resample: Resample): Promise<Rgb8> {
  if (img.width === width && img.height === height) return img;
  const out = pilResize(img.data, img.width, img.height, width, height, resample);
  return { data: Buffer.from(out.buffer, out.byteOffset, out.byteLength), width, height };
}

/** CLIP's processor: shortest edge to `size` (the other edge truncated as int(size * long / short)), then a centre crop. */
async function shortestEdgeCenterCrop(img: Rgb8, size: number, resample: Resample): Promise<Rgb8> {
  const short = Math.min(img.width, img.height);
  const w = img.width === short ? size : Math.floor((size * img.width) / short);
  const h = img.height === short ? size : Math.floor((size * img.height) / short);
  const resized = await resize(img, w, h, resample);
  if (w === size && h === size) return resized;
  const left = Math.floor((w - size) / 2);
  const top = Math.floor((h - size) / 2);
  return toRgb8(rawInput(resized).extract({ left, top, width: size, height: size }));
}

/** LLaVA's `pad` aspect mode (expand2square): centre on a square of pad_color, then resize. */
async function padToSquare(img: Rgb8, size: number, resample: Resample, color: Rgb): Promise<Rgb8> {
  let square = img;
  if (img.width !== img.height) {
    const side = Math.max(img.width, img.height);
    const left = Math.floor((side - img.width) / 2);
    const top = Math.floor((side - img.height) / 2);
    square = await toRgb8(
      rawInput(img).extend({ left, top, right: side - img.width - left, bottom: side - img.height - top, background: { r: color[0], g: color[1], b: color[2] } }),
    );
  }
  return resize(square, size, size, resample);
}

/** HWC uint8 -> CHW float32, ((x * rescale) - mean) / std in float32 steps. */
export function normalize(img: Rgb8, spec: Pick<PreprocessSpec, 'rescale' | 'mean' | 'std'>): F32Tensor {
  const S = img.width * img.height;
  const out = new Float32Array(3 * S);
  const rescale = Math.fround(spec.rescale);
  for (let c = 0; c < 3; c++) {
    const mean = Math.fround(spec.mean[c]!);
    const std = Math.fround(spec.std[c]!);
    for (let i = 0; i < S; i++) {
      out[c * S + i] = Math.fround(Math.fround(Math.fround(img.data[i * 3 + c]! * rescale) - mean) / std);
    }
  }
  return f32([1, 3, img.height, img.width], out);
}

export async function preprocessImage(bytes: Uint8Array, spec: PreprocessSpec, limits: ImageLimits): Promise<PreprocessedImage> {
  const checked = await checkImage(bytes, limits, spec.resize);
  const decoded = await decodeRgb8(checked.bytes, limits, spec.alpha_background);
  let img: Rgb8;
  switch (spec.resize) {
    case 'squash':
      img = await resize(decoded, spec.size, spec.size, spec.resample);
      break;
    case 'shortest_edge_center_crop':
      img = await shortestEdgeCenterCrop(decoded, spec.size, spec.resample);
      break;
    case 'pad_to_square':
      img = await padToSquare(decoded, spec.size, spec.resample, spec.pad_color);
      break;
  }
  return { pixelValues: normalize(img, spec), width: decoded.width, height: decoded.height, format: checked.meta.format! };
}
