import { crc32, deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { preprocessImage } from '../shared/image';
import { MAX_JPEG_SCANS, MAX_PAGES } from '../shared/image/preprocess';
import { pagesOver } from '../shared/image/page-count';
import { jpegScans } from '../shared/image/jpeg-scans';
import { withoutPngText } from '../shared/image/png-text';
import type { PreprocessSpec } from '../shared/bundle/manifest';
import { failure } from './core-helpers';

// mean 0, std 1, rescale 1/255: pixel_values are the 8-bit RGB values / 255, so colours can be read back.
const spec = (over: Partial<PreprocessSpec> = {}): PreprocessSpec => ({
  size: 8,
  resize: 'squash',
  resample: 'nearest',
  pad_color: [0, 0, 0],
  alpha_background: [255, 0, 0],
  rescale: 1 / 255,
  mean: [0, 0, 0],
  std: [1, 1, 1],
  ...over,
});
const limits = { maxImageBytes: 1 << 20, maxImagePixels: 1 << 20 };

/** RGB (0-255) of pixel (x, y) of a [1,3,S,S] tensor. */
function rgbAt(t: { dims: readonly number[]; data: Float32Array }, x: number, y: number): number[] {
  const S = t.dims[3]!;
  return [0, 1, 2].map((c) => Math.round(t.data[c * S * S + y * S + x]! * 255));
}

function solid(width: number, height: number, rgb: [number, number, number], channels: 3 | 4 = 3, alpha = 1) {
  return sharp({ create: { width, height, channels, background: { r: rgb[0], g: rgb[1], b: rgb[2], alpha } } });
}

/** Raw RGB rows of `colors`, one colour per band of `bandHeight` rows, `width` wide. */
function bands(width: number, bandHeight: number, colors: [number, number, number][]): Buffer {
  const buf = Buffer.alloc(width * bandHeight * colors.length * 3);
  colors.forEach((c, b) => {
    for (let i = 0; i < width * bandHeight; i++) buf.set(c, (b * width * bandHeight + i) * 3);
  });
  return buf;
}

async function expectInvalid(p: Promise<unknown>, text: RegExp) {
  const err = await failure(p);
  expect(err.code).toBe('INVALID_ARGUMENT');
  expect(err.message).toMatch(text);
}

describe('image preprocessing turns every supported input kind into [1,3,S,S] float32', () => {
  it('normalises an RGB PNG with rescale, mean and std in channel order', async () => {
    const png = await solid(8, 8, [10, 20, 30]).png().toBuffer();
    const out = await preprocessImage(png, spec({ mean: [0.5, 0.25, 0], std: [0.5, 0.25, 2] }), limits);
    expect(out.pixelValues.dims).toEqual([1, 3, 8, 8]);
    expect(out.pixelValues.data[0]).toBeCloseTo((10 / 255 - 0.5) / 0.5, 6);
    expect(out.pixelValues.data[64]).toBeCloseTo((20 / 255 - 0.25) / 0.25, 6);
    expect(out.pixelValues.data[128]).toBeCloseTo(30 / 255 / 2, 6);
    expect(out.format).toBe('png');
  });

  it('flattens alpha onto the manifest alpha_background', async () => {
    const transparent = await solid(8, 8, [0, 255, 0], 4, 0).png().toBuffer();
    expect(rgbAt((await preprocessImage(transparent, spec(), limits)).pixelValues, 3, 3)).toEqual([255, 0, 0]);
    const half = await solid(8, 8, [0, 0, 255], 4, 0.5).png().toBuffer();
    const [r, g, b] = rgbAt((await preprocessImage(half, spec(), limits)).pixelValues, 3, 3);
    expect(Math.abs(r! - 128)).toBeLessThanOrEqual(2);
    expect(g).toBe(0);
    expect(Math.abs(b! - 128)).toBeLessThanOrEqual(2);
  });

  it('expands grayscale and palette PNGs to RGB', async () => {
    const gray = await solid(8, 8, [90, 90, 90]).toColourspace('b-w').png().toBuffer();
    expect((await sharp(gray).metadata()).channels).toBe(1);
    expect(rgbAt((await preprocessImage(gray, spec(), limits)).pixelValues, 0, 0)).toEqual([90, 90, 90]);
    const palette = await solid(8, 8, [200, 40, 0]).png({ palette: true, colours: 4 }).toBuffer();
    expect((await sharp(palette).metadata()).isPalette).toBe(true);
    expect(rgbAt((await preprocessImage(palette, spec(), limits)).pixelValues, 5, 5)).toEqual([200, 40, 0]);
  });

  it('reduces 16-bit PNGs to 8 bits', async () => {
    const png16 = await solid(8, 8, [100, 150, 250]).toColourspace('rgb16').png().toBuffer();
    expect((await sharp(png16).metadata()).depth).toBe('ushort');
    const rgb = rgbAt((await preprocessImage(png16, spec(), limits)).pixelValues, 1, 1);
    rgb.forEach((v, i) => expect(Math.abs(v - [100, 150, 250][i]!)).toBeLessThanOrEqual(1));
  });

  it('applies EXIF orientation before resizing (JPEG, orientation 6 = rotate 90 degrees clockwise)', async () => {
    // 16 wide x 8 high: left half red, right half blue. Rotated clockwise, red is on top.
    const raw = Buffer.alloc(16 * 8 * 3);
    for (let y = 0; y < 8; y++) for (let x = 0; x < 16; x++) raw.set(x < 8 ? [255, 0, 0] : [0, 0, 255], (y * 16 + x) * 3);
    const jpeg = await sharp(raw, { raw: { width: 16, height: 8, channels: 3 } }).jpeg({ quality: 100 }).withMetadata({ orientation: 6 }).toBuffer();
    const out = await preprocessImage(jpeg, spec(), limits);
    expect([out.width, out.height]).toEqual([8, 16]);
    const top = rgbAt(out.pixelValues, 4, 1);
    const bottom = rgbAt(out.pixelValues, 4, 6);
    expect(top[0]).toBeGreaterThan(200);
    expect(top[2]).toBeLessThan(60);
    expect(bottom[2]).toBeGreaterThan(200);
    expect(bottom[0]).toBeLessThan(60);
  });

  it('converts CMYK JPEGs to sRGB', async () => {
    const cmyk = await solid(8, 8, [30, 120, 200]).toColourspace('cmyk').jpeg({ quality: 100 }).toBuffer();
    expect((await sharp(cmyk).metadata()).space).toBe('cmyk');
    const rgb = rgbAt((await preprocessImage(cmyk, spec(), limits)).pixelValues, 4, 4);
    // CMYK without an embedded profile goes through libvips' default profiles: close, not exact.
    rgb.forEach((v, i) => expect(Math.abs(v - [30, 120, 200][i]!)).toBeLessThanOrEqual(25));
  });

  it('reads WebP', async () => {
    const webp = await solid(8, 8, [7, 77, 177]).webp({ lossless: true }).toBuffer();
    expect(rgbAt((await preprocessImage(webp, spec(), limits)).pixelValues, 2, 2)).toEqual([7, 77, 177]);
  });

  it('takes the first frame of an animated GIF and the first page of a multi-page TIFF', async () => {
    const frames = bands(8, 8, [[255, 0, 0], [0, 0, 255], [0, 255, 0]]);
    const input = () => sharp(frames, { raw: { width: 8, height: 24, channels: 3, pageHeight: 8 } });
    const gif = await input().gif().toBuffer();
    expect((await sharp(gif).metadata()).pages).toBe(3);
    expect(rgbAt((await preprocessImage(gif, spec(), limits)).pixelValues, 4, 4)).toEqual([255, 0, 0]);
    const tiff = await input().tiff({ compression: 'lzw' }).toBuffer();
    expect((await sharp(tiff).metadata()).pages).toBe(3);
    const out = await preprocessImage(tiff, spec(), limits);
    expect([out.width, out.height]).toEqual([8, 8]);
    expect(rgbAt(out.pixelValues, 4, 4)).toEqual([255, 0, 0]);
  });
});

describe('resize modes', () => {
  it('pad_to_square centres a wide image on pad_color, then resizes', async () => {
    const wide = await solid(8, 4, [255, 255, 255]).png().toBuffer();
    const out = (await preprocessImage(wide, spec({ resize: 'pad_to_square', pad_color: [0, 0, 100] }), limits)).pixelValues;
    expect(rgbAt(out, 3, 0)).toEqual([0, 0, 100]);
    expect(rgbAt(out, 3, 1)).toEqual([0, 0, 100]);
    expect(rgbAt(out, 3, 2)).toEqual([255, 255, 255]);
    expect(rgbAt(out, 3, 5)).toEqual([255, 255, 255]);
    expect(rgbAt(out, 3, 6)).toEqual([0, 0, 100]);
  });

  it('pad_to_square bounds the padded square by the pixel limit, not the image: a 32:1 strip would cost 32 times its pixels', async () => {
    const strip = await solid(64, 2, [255, 255, 255]).png().toBuffer(); // 128 pixels, padded to 64 x 64 = 4096
    await expectInvalid(preprocessImage(strip, spec({ resize: 'pad_to_square' }), { ...limits, maxImagePixels: 4095 }), /64x2, which this model pads to a square of 64x64 = 4096 pixels, over the limit of 4095 pixels/);
    await expect(preprocessImage(strip, spec({ resize: 'pad_to_square' }), { ...limits, maxImagePixels: 4096 })).resolves.toBeDefined();
    await expect(preprocessImage(strip, spec({ resize: 'squash' }), { ...limits, maxImagePixels: 128 })).resolves.toBeDefined(); // no square is built
  });

  it('shortest_edge_center_crop keeps the centre of a wide image', async () => {
    // 16 x 8: columns 0-3 red, 4-11 green, 12-15 blue; the shortest edge is already 8, so the crop is columns 4-11.
    const raw = Buffer.alloc(16 * 8 * 3);
    for (let y = 0; y < 8; y++) for (let x = 0; x < 16; x++) raw.set(x < 4 ? [255, 0, 0] : x < 12 ? [0, 255, 0] : [0, 0, 255], (y * 16 + x) * 3);
    const png = await sharp(raw, { raw: { width: 16, height: 8, channels: 3 } }).png().toBuffer();
    const out = (await preprocessImage(png, spec({ resize: 'shortest_edge_center_crop' }), limits)).pixelValues;
    for (const x of [0, 7]) expect(rgbAt(out, x, 3)).toEqual([0, 255, 0]);
  });

  it('squash resizes both sides with the manifest resample', async () => {
    const big = await solid(32, 16, [40, 50, 60]).png().toBuffer();
    for (const resample of ['nearest', 'bilinear', 'bicubic'] as const) {
      const out = (await preprocessImage(big, spec({ resample }), limits)).pixelValues;
      expect(out.dims).toEqual([1, 3, 8, 8]);
      expect(rgbAt(out, 7, 7)).toEqual([40, 50, 60]);
    }
  });
});

describe('limits are enforced before decoding, naming the limit', () => {
  it('refuses more bytes than the limit', async () => {
    const png = await solid(8, 8, [1, 2, 3]).png().toBuffer();
    await expectInvalid(preprocessImage(png, spec(), { ...limits, maxImageBytes: png.length - 1 }), /over the limit of \d+ bytes/);
  });

  it('refuses more pixels than the limit from the header (a decompression bomb compresses to little)', async () => {
    const bomb = await solid(4000, 4000, [0, 0, 0]).png({ compressionLevel: 9 }).toBuffer();
    expect(bomb.length).toBeLessThan(100_000);
    await expectInvalid(preprocessImage(bomb, spec(), { ...limits, maxImagePixels: 1_000_000 }), /4000x4000 = 16000000 pixels, over the limit of 1000000 pixels/);
  });

  it('counts every page of an animation against the pixel limit', async () => {
    const gif = await sharp(bands(8, 8, [[255, 0, 0], [0, 255, 0], [0, 0, 255]]), { raw: { width: 8, height: 24, channels: 3, pageHeight: 8 } }).gif().toBuffer();
    await expectInvalid(preprocessImage(gif, spec(), { ...limits, maxImagePixels: 100 }), /8x8 x 3 pages = 192 pixels/);
  });

  it('refuses an image of more pages than it would ever use (many tiny pages pass the pixel limit)', async () => {
    const frames = (n: number) => sharp(Buffer.alloc(n * 3, 128), { raw: { width: 1, height: n, channels: 3, pageHeight: 1 } }).tiff().toBuffer(); // one page per directory
    // Counted from the TIFF's directories before libvips reads the header (which walks every page).
    await expectInvalid(preprocessImage(await frames(MAX_PAGES + 1), spec(), limits), new RegExp(`has more than ${MAX_PAGES} pages \\(frames\\), over the limit of ${MAX_PAGES}`));
    await expect(preprocessImage(await frames(MAX_PAGES), spec(), limits)).resolves.toBeDefined();
    // And a GIF's frames (distinct ones: libvips merges identical frames when it writes).
    const gif = (n: number) => sharp(Buffer.from(Array.from({ length: n * 3 }, (_, i) => (i * 37) % 256)), { raw: { width: 1, height: n, channels: 3, pageHeight: 1 } }).gif().toBuffer();
    const many = await gif(MAX_PAGES + 1);
    expect((await sharp(many).metadata()).pages).toBe(MAX_PAGES + 1);
    expect(pagesOver(many, 'gif', MAX_PAGES)).toBe(true);
    expect(pagesOver(await gif(MAX_PAGES), 'gif', MAX_PAGES)).toBe(false);
    expect(pagesOver(await frames(MAX_PAGES), 'tiff', MAX_PAGES)).toBe(false);
  });

  it('refuses empty input, non-images and unsupported formats by their first bytes, before any decoder runs', async () => {
    await expectInvalid(preprocessImage(new Uint8Array(0), spec(), limits), /empty/);
    const notSupported = /cannot be read as an image: its format is not supported \(the first bytes are not those of PNG, JPEG, WebP, GIF or TIFF\)/;
    await expectInvalid(preprocessImage(Buffer.from('definitely not an image'), spec(), limits), notSupported);
    // Formats libvips has loaders for, which would otherwise run on the untrusted bytes first.
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>');
    await expectInvalid(preprocessImage(svg, spec(), limits), notSupported);
    await expectInvalid(preprocessImage(await solid(8, 8, [1, 2, 3]).heif({ compression: 'av1' }).toBuffer().catch(() => Buffer.from('\0\0\0\x1cftypavif')), spec(), limits), notSupported);
    await expectInvalid(preprocessImage(Buffer.from('%PDF-1.7\n'), spec(), limits), notSupported);
    // Every supported format passes the first check.
    for (const f of ['png', 'jpeg', 'webp', 'gif', 'tiff'] as const) expect((await preprocessImage(await solid(8, 8, [1, 2, 3]).toFormat(f).toBuffer(), spec(), limits)).format, f).toBe(f);
  });

  it('refuses a truncated image at decode time', async () => {
    const png = await solid(64, 64, [9, 9, 9]).png().toBuffer();
    await expectInvalid(preprocessImage(png.subarray(0, png.length - 20), spec(), limits), /cannot be decoded/);
  });
});

/** A PNG chunk with its CRC. */
function pngChunk(type: string, data: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body) >>> 0, 8 + data.length);
  return out;
}

/**
 * A 64x64 grayscale progressive JPEG of `refinements` AC scans after its DC scan, each an end-of-band
 * run over every block: valid, and each one more pass over the whole image for the decoder.
 */
function progressiveJpeg(refinements: number): Buffer {
  const parts: Buffer[] = [Buffer.from([0xff, 0xd8])];
  const segment = (marker: number, body: Buffer) => {
    const b = Buffer.alloc(4 + body.length);
    b.writeUInt16BE(marker, 0);
    b.writeUInt16BE(body.length + 2, 2);
    body.copy(b, 4);
    parts.push(b);
  };
  segment(0xffdb, Buffer.concat([Buffer.from([0]), Buffer.alloc(64, 1)]));
  segment(0xffc2, Buffer.from([8, 0, 64, 0, 64, 1, 1, 0x11, 0]));
  const huffman = (tableClass: number, symbol: number) => Buffer.from([tableClass << 4, 1, ...Array(15).fill(0), symbol]);
  segment(0xffc4, huffman(0, 0x00));
  segment(0xffc4, huffman(1, 0x60)); // EOBRUN of 2^6 + 6 bits: all 64 blocks in one run
  segment(0xffda, Buffer.from([1, 1, 0x00, 0, 0, 0]));
  parts.push(Buffer.alloc(8, 0)); // 64 DC differences of 0, one bit each
  for (let i = 0; i < refinements; i++) {
    segment(0xffda, Buffer.from([1, 1, 0x00, 1, 63, 0]));
    parts.push(Buffer.from([0x00, 0x3f])); // code 0, then 63 in six bits: a run of 64 blocks, padded with ones
  }
  parts.push(Buffer.from([0xff, 0xd9]));
  return Buffer.concat(parts);
}

describe('images built to cost far more than their size are refused or defused before any decoder runs', () => {
  it('cuts a PNG\'s text chunks, which libvips would inflate into memory (7 MB each from a few KB), and decodes its pixels alike', async () => {
    const plain = await solid(2, 2, [200, 40, 40]).png().toBuffer();
    const text = pngChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0', 'latin1'), deflateSync(Buffer.alloc(7 << 20, 0x41))]));
    const bomb = Buffer.concat([plain.subarray(0, 33), ...Array<Buffer>(24).fill(text), plain.subarray(33)]); // after IHDR
    expect(bomb.length).toBeLessThan(200_000);
    expect(withoutPngText(plain)).toBe(plain); // nothing to cut: the same bytes
    expect(Buffer.from(withoutPngText(bomb)).equals(plain)).toBe(true);
    const before = process.memoryUsage().rss;
    const out = await preprocessImage(bomb, spec(), limits);
    // Unstripped, libvips holds every inflated comment: about 170 MB here.
    expect(process.memoryUsage().rss - before).toBeLessThan(80 << 20);
    expect(out.pixelValues.data).toEqual((await preprocessImage(plain, spec(), limits)).pixelValues.data);
  });

  it('refuses a progressive JPEG of more than MAX_JPEG_SCANS scans, and decodes ordinary ones', async () => {
    const ordinary = await solid(64, 64, [10, 200, 30]).jpeg({ progressive: true }).toBuffer();
    const scans = jpegScans(ordinary, 1000);
    expect(scans).toBeGreaterThan(1);
    expect(scans).toBeLessThanOrEqual(MAX_JPEG_SCANS);
    expect(jpegScans(await solid(64, 64, [10, 200, 30]).jpeg().toBuffer(), 1000)).toBe(1);
    expect(jpegScans(progressiveJpeg(MAX_JPEG_SCANS), 1000)).toBe(MAX_JPEG_SCANS + 1);
    // A stray byte between segments, which libjpeg skips with a warning and reads on past, is skipped here too.
    const many = progressiveJpeg(MAX_JPEG_SCANS);
    const secondScan = many.indexOf(Buffer.from([0xff, 0xda]), many.indexOf(Buffer.from([0xff, 0xda])) + 2);
    const withJunk = Buffer.concat([many.subarray(0, secondScan), Buffer.from([0x00]), many.subarray(secondScan)]);
    expect(jpegScans(withJunk, 1000)).toBe(MAX_JPEG_SCANS + 1);
    await expectInvalid(preprocessImage(withJunk, spec(), limits), /progressive JPEG of more than/);
    await expect(preprocessImage(progressiveJpeg(MAX_JPEG_SCANS - 1), spec(), limits)).resolves.toBeDefined();
    await expectInvalid(preprocessImage(progressiveJpeg(MAX_JPEG_SCANS), spec(), limits), new RegExp(`progressive JPEG of more than ${MAX_JPEG_SCANS} scans`));
  });

  it("counts an animated WebP's frames from its RIFF chunks before libvips walks them", async () => {
    const frames = (n: number) => sharp(Buffer.from(Array.from({ length: n * 12 }, (_, i) => (i * 53) % 256)), { raw: { width: 2, height: 2 * n, channels: 3, pageHeight: 2 } }).webp({ lossless: true }).toBuffer();
    const many = await frames(MAX_PAGES + 1);
    expect((await sharp(many).metadata()).pages).toBe(MAX_PAGES + 1);
    expect(pagesOver(many, 'webp', MAX_PAGES)).toBe(true);
    expect(pagesOver(await frames(MAX_PAGES), 'webp', MAX_PAGES)).toBe(false);
    await expectInvalid(preprocessImage(many, spec(), limits), new RegExp(`has more than ${MAX_PAGES} pages`));
  });
});
