/**
 * The bundle's tokenizer.json through @huggingface/tokenizers (an ES module package that ships a
 * CommonJS build, so require() works), and prompt assembly exactly as docs/bundle-format.md says:
 * the template is split at the image token; `{question}` is replaced in the suffix; each part is
 * encoded without special tokens; BOS is prepended when the manifest says so.
 */
import { characterCount, hasVisibleText } from './characters';
import { promptMisuse } from './prompt-misuse';
import { readFile } from 'node:fs/promises';
import { Tokenizer } from '@huggingface/tokenizers';
import { VlmError } from '../errors';
import type { PromptSpec, TokenSpec } from '../bundle/manifest';

export interface TextTokenizer {
  /** The text of the tokenizer's special tokens (its added tokens marked special). */
  readonly specialTokens: readonly string[];
  /** Token ids of `text`, no special tokens added. */
  encode(text: string): number[];
  /** Text of `ids`, special tokens skipped. */
  decode(ids: readonly number[]): string;
}

export async function loadTokenizer(file: string): Promise<TextTokenizer> {
  let json: object;
  try {
    json = JSON.parse(await readFile(file, 'utf8')) as object;
  } catch (err) {
    throw new VlmError('FAILED_PRECONDITION', `cannot read tokenizer ${file}: ${(err as Error).message}`, { cause: err });
  }
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, {});
  } catch (err) {
    throw new VlmError('FAILED_PRECONDITION', `tokenizer ${file} is not loadable by @huggingface/tokenizers: ${(err as Error).message}`, { cause: err });
  }
  const added = (json as { added_tokens?: { content?: unknown; special?: unknown }[] }).added_tokens ?? [];
  const specialTokens = added.filter((t) => t.special === true && typeof t.content === 'string').map((t) => t.content as string);
  return {
    specialTokens,
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    decode: (ids) => (ids.length === 0 ? '' : tok.decode([...ids], { skip_special_tokens: true, clean_up_tokenization_spaces: false })),
  };
}

export interface AssembledPrompt {
  /** `[bos]` (if add_bos) + encode(prefix). */
  readonly prefix: readonly number[];
  /** encode(suffix with the question). */
  readonly suffix: readonly number[];
  /** Index of the first image row in the full sequence = prefix.length. */
  readonly imageStart: number;
}

export interface PromptLimits {
  readonly maxPromptChars: number;
}

export function assemblePrompt(tok: TextTokenizer, prompt: PromptSpec, tokens: TokenSpec, question: string, limits: PromptLimits): AssembledPrompt {
  if (!hasVisibleText(question)) throw VlmError.invalid('prompt', 'is empty (nothing but spaces, control or zero-width characters); ask a question about the image');
  const chars = characterCount(question);
  if (chars > limits.maxPromptChars) {
    throw VlmError.invalid('prompt', `is ${chars} characters, over the limit of ${limits.maxPromptChars} (--max-prompt-chars / VLM_MAX_PROMPT_CHARS)`);
  }
  const misuse = promptMisuse(question, prompt.image_token, tok.specialTokens);
  if (misuse) throw VlmError.invalid('prompt', misuse);
  const at = prompt.template.indexOf(prompt.image_token);
  const prefixText = prompt.template.slice(0, at);
  const suffixText = prompt.template.slice(at + prompt.image_token.length).replace('{question}', () => question);
  const prefix = [...(prompt.add_bos ? [tokens.bos_id] : []), ...tok.encode(prefixText)];
  return { prefix, suffix: tok.encode(suffixText), imageStart: prefix.length };
}

/**
 * Turns a growing list of generated ids into text deltas, decoding a short window instead of the
 * whole list each time (vLLM's incremental detokenizer): the window starts at tokens already shown,
 * so word-joining decoders and a dropped leading space treat the window's start the same way in both
 * decodes, and only the text after them is new. A trailing U+FFFD (an incomplete UTF-8 sequence of
 * byte-level BPE) is held back until the next token completes it.
 */
export class DeltaDecoder {
  private readonly ids: number[] = [];
  /** Window start: the first id of the text the previous delta was cut from. */
  private prefixOffset = 0;
  /** Ids before this one have been shown. */
  private readOffset = 0;

  constructor(private readonly tok: TextTokenizer) {}

  push(id: number): string {
    this.ids.push(id);
    const shown = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const text = this.tok.decode(this.ids.slice(this.prefixOffset));
    if (text.length <= shown.length || text.endsWith('\uFFFD') || !text.startsWith(shown)) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return text.slice(shown.length);
  }

  /** The rest, at the end of generation. */
  flush(): string {
    const shown = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const text = this.tok.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return text.startsWith(shown) ? text.slice(shown.length) : '';
  }

  get text(): string {
    return this.tok.decode(this.ids);
  }
}

/** The prompt's text tokens (template and question, BOS included) as the engine assembles them around the image. */
export function promptTextTokens(tok: TextTokenizer, prompt: PromptSpec, tokens: TokenSpec, question: string, limits: PromptLimits): number {
  const p = assemblePrompt(tok, prompt, tokens, question, limits);
  return p.prefix.length + p.suffix.length;
}
