export { characterCount } from './characters';
export { loadTokenizer, assemblePrompt, DeltaDecoder, type TextTokenizer, type AssembledPrompt, type PromptLimits } from './tokenizer';
