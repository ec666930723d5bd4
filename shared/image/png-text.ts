/**
 * A PNG without its text chunks (tEXt, zTXt, iTXt). libpng inflates every compressed text chunk while
 * it reads the header, up to 8 MB each and a thousand of them: an 820 KB PNG of one pixel took a
 * vision process from 267 MiB to 3.7 GiB, never given back. The pixels never need the text, so the
 * chunks are cut before any decoder sees the file; every other chunk, and its CRC, is kept as it was.
 * Malformed structure ends the walk with the rest kept as is (the decoder judges it).
 */

const TEXT_CHUNKS = new Set(['tEXt', 'zTXt', 'iTXt']);
const SIGNATURE_BYTES = 8;

/** `b` itself when it has no text chunk, else a copy without them. */
export function withoutPngText(b: Uint8Array): Uint8Array {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const kept: Array<[number, number]> = [];
  let at = SIGNATURE_BYTES;
  let from = 0; // start of the run of bytes kept so far
  let cut = false;
  while (at + 12 <= b.length) {
    const length = view.getUint32(at);
    const end = at + 12 + length;
    if (end > b.length) break;
    const type = String.fromCharCode(b[at + 4]!, b[at + 5]!, b[at + 6]!, b[at + 7]!);
    if (TEXT_CHUNKS.has(type)) {
      kept.push([from, at]);
      from = end;
      cut = true;
    }
    at = end;
    if (type === 'IEND') break;
  }
  if (!cut) return b;
  kept.push([from, b.length]);
  const out = new Uint8Array(kept.reduce((n, [s, e]) => n + e - s, 0));
  let o = 0;
  for (const [s, e] of kept) {
    out.set(b.subarray(s, e), o);
    o += e - s;
  }
  return out;
}
