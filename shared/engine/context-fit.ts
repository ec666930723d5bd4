import { VlmError } from '../errors';

/**
 * The prompt (text plus visual tokens) and the answer must fit the model's positions. Judged by the
 * language service before the hop (with the visual count its vision schedule will output) and by the
 * engine on the tokens that arrived, with one message for both. The caller's max_tokens is blamed
 * only when they set it and the prompt alone leaves room; otherwise it is the prompt that is too long.
 */
export function checkContextFits(positions: number, maxTokens: { value: number; set: boolean }, textTokens: number, visualTokens: number): void {
  const prompt = textTokens + visualTokens;
  const room = positions - prompt;
  if (maxTokens.value <= room) return;
  const size = `${prompt} tokens (${textTokens} of text, ${visualTokens} visual)`;
  if (maxTokens.set && room >= 1) {
    throw VlmError.invalid('sampling.max_tokens', `must be at most ${room} for this prompt: its ${size} leave ${room} of the model's ${positions} positions; got ${maxTokens.value}`);
  }
  if (room >= 1) {
    throw VlmError.invalid('prompt', `is too long for the default max_tokens of ${maxTokens.value}: its ${size} leave ${room} of the model's ${positions} positions; shorten it or set sampling.max_tokens to at most ${room}`);
  }
  throw VlmError.invalid('prompt', `is too long: its ${size} leave no room for an answer in the model's ${positions} positions; shorten it (or reduce the visual tokens)`);
}
