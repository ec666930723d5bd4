/**
 * Which supported image format a byte string announces, from its first bytes only: cheap enough for
 * the language service to refuse a non-image before the vision hop, and what vision checks before
 * any decoder sees untrusted bytes. No sharp here, so importing it loads no native code.
 */
export const SUPPORTED_FORMATS: readonly string[] = ['png', 'jpeg', 'webp', 'gif', 'tiff'];

/** Why bytes that announce no supported format are refused (an `image` violation), wherever that is. */
export const UNSUPPORTED_FORMAT = `cannot be read as an image: its format is not supported (the first bytes are not those of PNG, JPEG, WebP, GIF or TIFF); supported formats: ${SUPPORTED_FORMATS.join(', ')}`;

const startsWith = (bytes: Uint8Array, at: number, sig: readonly number[]): boolean => sig.every((b, i) => bytes[at + i] === b);
const ascii = (s: string): number[] => [...s].map((c) => c.charCodeAt(0));

/** The supported format the first bytes announce, or null. */
export function sniffFormat(bytes: Uint8Array): string | null {
  if (startsWith(bytes, 0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'png';
  if (startsWith(bytes, 0, [0xff, 0xd8, 0xff])) return 'jpeg';
  if (startsWith(bytes, 0, ascii('RIFF')) && startsWith(bytes, 8, ascii('WEBP'))) return 'webp';
  if (startsWith(bytes, 0, ascii('GIF87a')) || startsWith(bytes, 0, ascii('GIF89a'))) return 'gif';
  // Classic and BigTIFF, either byte order.
  if ([[0x49, 0x49, 0x2a, 0x00], [0x4d, 0x4d, 0x00, 0x2a], [0x49, 0x49, 0x2b, 0x00], [0x4d, 0x4d, 0x00, 0x2b]].some((sig) => startsWith(bytes, 0, sig))) return 'tiff';
  return null;
}
