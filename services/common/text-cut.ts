/**
 * Cutting strings a message repeats (a caller's values in validation errors, whole messages and
 * violations in the status trailers) without splitting a UTF-16 surrogate pair, which would leave a
 * lone half that encodes as U+FFFD.
 */

/** The first `n` UTF-16 units, one fewer if the cut would split a surrogate pair. */
export function utf16Prefix(text: string, n: number): string {
  const code = text.charCodeAt(n - 1);
  return text.slice(0, code >= 0xd800 && code <= 0xdbff ? n - 1 : n);
}

/** `text` cut to at most `max` units, the cut marked with an ellipsis. */
export function clipText(text: string, max: number): string {
  return text.length <= max ? text : `${utf16Prefix(text, max - 1)}…`;
}
