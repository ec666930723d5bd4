/**
 * The length of a text as the prompt limit counts it: Unicode code points, what Python's len(), Go's
 * utf8.RuneCountInString and Java's codePointCount give a caller, not JavaScript's UTF-16 units (an
 * emoji is one character, not two).
 */
export function characterCount(text: string): number {
  let n = text.length;
  for (let i = 0; i < text.length - 1; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

/**
 * Whether a text holds anything to read: a character other than white space, control and format
 * characters (zero-width spaces and joiners, soft hyphens, BOM, direction marks) and combining marks
 * with nothing to combine with. A question of only those is empty to every model: tokenizers that
 * normalize text drop them all (the embedded model's BERT normalizer leaves the bare template).
 */
export function hasVisibleText(text: string): boolean {
  return !/^[\s\p{Cc}\p{Cf}\p{Mn}\p{Me}\p{Zs}\p{Zl}\p{Zp}]*$/u.test(text);
}
