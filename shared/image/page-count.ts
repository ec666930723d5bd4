/**
 * Whether an image has more pages (TIFF directories, GIF and WebP frames) than a limit, counted by
 * walking the container's own structure in a few microseconds per page. libvips' header read walks
 * every page before it answers (150,000 one-pixel TIFF pages took 1.4 s; 167,602 WebP frames in 8 MiB,
 * 20 s, growing with the square of the count), so the count has to come first. Malformed structure
 * ends the walk (the decoder judges the bytes next); only the count matters here.
 */

/** True when `bytes` of `format` (sniffFormat's name) hold more than `limit` pages. */
export function pagesOver(bytes: Uint8Array, format: string, limit: number): boolean {
  if (format === 'tiff') return tiffDirectories(bytes, limit + 1) > limit;
  if (format === 'gif') return gifFrames(bytes, limit + 1) > limit;
  if (format === 'webp') return webpFrames(bytes, limit + 1) > limit;
  return false;
}

/** An animated WebP's frames (ANMF chunks of its RIFF container), counted up to `stop`. */
function webpFrames(b: Uint8Array, stop: number): number {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let at = 12; // "RIFF", size, "WEBP"
  let frames = 0;
  while (at + 8 <= b.length && frames < stop) {
    if (b[at] === 0x41 && b[at + 1] === 0x4e && b[at + 2] === 0x4d && b[at + 3] === 0x46) frames++; // ANMF
    const size = view.getUint32(at + 4, true);
    at += 8 + size + (size & 1);
  }
  return frames;
}

/** TIFF image file directories, counted up to `stop`; classic and BigTIFF, either byte order. */
function tiffDirectories(b: Uint8Array, stop: number): number {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const le = b[0] === 0x49;
  const big = view.getUint16(2, le) === 43;
  const offsetAt = (at: number): number => (big ? Number(view.getBigUint64(at, le)) : view.getUint32(at, le));
  const entries = big ? 20 : 12;
  const countBytes = big ? 8 : 2;
  const pointerBytes = big ? 8 : 4;
  if (b.length < (big ? 16 : 8)) return 0;
  const seen = new Set<number>();
  let offset = offsetAt(big ? 8 : 4);
  let count = 0;
  while (offset !== 0 && count < stop && !seen.has(offset) && offset + countBytes <= b.length) {
    seen.add(offset);
    count++;
    const n = big ? Number(view.getBigUint64(offset, le)) : view.getUint16(offset, le);
    const next = offset + countBytes + n * entries;
    if (next + pointerBytes > b.length) break;
    offset = offsetAt(next);
  }
  return count;
}

/** GIF image descriptors (frames), counted up to `stop`. */
function gifFrames(b: Uint8Array, stop: number): number {
  let at = 13; // signature and logical screen descriptor
  if (b.length < at) return 0;
  if (b[10]! & 0x80) at += 3 << ((b[10]! & 0x07) + 1);
  const skipSubBlocks = (from: number): number => {
    let p = from;
    while (p < b.length && b[p] !== 0) p += b[p]! + 1;
    return p + 1;
  };
  let frames = 0;
  while (at < b.length && frames < stop) {
    const kind = b[at];
    if (kind === 0x21) at = skipSubBlocks(at + 2); // extension: label, then sub-blocks
    else if (kind === 0x2c) {
      frames++;
      const packed = b[at + 9] ?? 0;
      at += 10;
      if (packed & 0x80) at += 3 << ((packed & 0x07) + 1);
      at = skipSubBlocks(at + 1); // LZW minimum code size, then the data's sub-blocks
    } else break; // trailer (0x3b) or not a block
  }
  return frames;
}
