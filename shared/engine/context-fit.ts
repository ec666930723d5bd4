import { VlmError } from '../errors';

/**
 * The prompt (text plus visual tokens) and the answer must fit the model's positions. Judged by the
 * language service before the hop (with the visual count its vision schedule will output) and by the
 * engine on the tokens that arrived, with one message for both. Returns the max_tokens to generate
 * with: a caller's own value, checked (it is blamed only when the prompt alone leaves room), or, when
 * the caller left it unset, the default cut to the room the prompt leaves (the answer may then end
 * with finish reason LENGTH sooner), as OpenAI-style servers do. A prompt that leaves no room is refused.
 */
export function fitMaxTokens(positions: number, maxTokens: { value: number; set: boolean }, textTokens: number, visualTokens: number): number {
  const prompt = textTokens + visualTokens;
  const room = positions - prompt;
  if (maxTokens.value <= room) return maxTokens.value;
  const size = `${prompt} tokens (${textTokens} of text, ${visualTokens} visual)`;
  if (room < 1) {
    throw VlmError.invalid('prompt', `is too long: its ${size} leave no room for an answer in the model's ${positions} positions; shorten it (or reduce the visual tokens)`);
  }
  if (!maxTokens.set) return room;
  throw VlmError.invalid('sampling.max_tokens', `must be at most ${room} for this prompt: its ${size} leave ${room} of the model's ${positions} positions; got ${maxTokens.value}`);
}
