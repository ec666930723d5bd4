/**
 * What a question may not hold, one rule for the language service's check before the vision hop and
 * the prompt assembly's (no tokenizer loaded here):
 * - the prompt template's image placeholder: the image is passed separately, and a second placeholder
 *   would split the template wrongly;
 * - the text of a special token (`<s>`, `</s>`, `[PAD]`...): encoding turns such text into the control
 *   token itself, so a caller could end the prompt early or fake a turn boundary (Hugging Face encodes
 *   them the same way by default).
 * The placeholder's own message comes first.
 */
export function promptMisuse(question: string, imageToken: string, specialTokens: readonly string[]): string | null {
  if (question.includes(imageToken)) return `must not contain the image placeholder "${imageToken}"; the image is passed separately`;
  const special = specialTokens.find((t) => t !== '' && question.includes(t));
  return special === undefined ? null : `must not contain the text of the special token "${special}", which the model would read as that control token`;
}
