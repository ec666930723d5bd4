/**
 * The tiny LLaVA-1.5 fixture (test/fixtures/llava-tiny, written by tools/llava/make_fixture.py on a host
 * with transformers): the exported bundle, and Hugging Face's own outputs for the same random weights.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const LLAVA_TINY = join(__dirname, 'fixtures', 'llava-tiny');
export const LLAVA_TINY_BUNDLE = join(LLAVA_TINY, 'bundle');

/** A float32 tensor of reference.bin: its shape and offset (in floats). */
export interface BinRef {
  readonly shape: number[];
  readonly offset: number;
}

export interface ReferenceItem {
  readonly image: string;
  readonly question: string;
  readonly input_ids: { readonly prefix: number[]; readonly suffix: number[] };
  readonly image_start: number;
  readonly prompt_length: number;
  /** LlavaProcessor's ids for the same prompt (whole-string tokenisation); equal to the bundle rule here. */
  readonly hf_processor_input_ids: number[] | null;
  /** transformers' greedy tokens (eos is not a stop, so all max_new_tokens steps have references). */
  readonly tokens: number[];
  readonly answer: string;
  /** top-1 minus top-2 logit at each step */
  readonly top2_margins: number[];
  readonly tensors: Readonly<Record<string, BinRef>>;
}

export interface PreprocessReference {
  readonly image: string;
  readonly resize: 'shortest_edge_center_crop' | 'pad_to_square';
  readonly processor: string;
  readonly pixel_values: BinRef;
}

export interface LlavaReference {
  readonly transformers: string;
  readonly template: string;
  readonly max_new_tokens: number;
  readonly image_token_id: number;
  readonly items: readonly ReferenceItem[];
  readonly preprocess: readonly PreprocessReference[];
}

export interface LoadedReference extends LlavaReference {
  tensor(ref: BinRef): Float32Array;
}

export function loadLlavaReference(): LoadedReference {
  const json = JSON.parse(readFileSync(join(LLAVA_TINY, 'reference.json'), 'utf8')) as LlavaReference;
  const buf = readFileSync(join(LLAVA_TINY, 'reference.bin'));
  const all = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  return {
    ...json,
    tensor(ref: BinRef): Float32Array {
      const size = ref.shape.reduce((a, b) => a * b, 1);
      return all.slice(ref.offset, ref.offset + size);
    },
  };
}

/** max |a - b| over two equally long arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}

/**
 * The number of leading steps whose greedy choice is well defined: tokens are compared up to the first
 * step whose reference top-2 margin falls below `margin` (exclusive); there a near-tie may legitimately
 * resolve the other way, and every later step depends on it.
 */
export function comparableSteps(item: ReferenceItem, margin = 1e-3): number {
  const k = item.top2_margins.findIndex((m) => m < margin);
  return k < 0 ? item.tokens.length : k;
}
