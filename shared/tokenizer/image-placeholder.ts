/**
 * The question may not hold the prompt template's image placeholder: the image is passed separately,
 * and a second placeholder would split the template wrongly. One rule for the language service's
 * check before the vision hop and the prompt assembly's (no tokenizer loaded here).
 */
export function imagePlaceholderMisuse(question: string, imageToken: string): string | null {
  return question.includes(imageToken) ? `must not contain the image placeholder "${imageToken}"; the image is passed separately` : null;
}
