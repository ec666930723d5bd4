/**
 * The LLaVA exporter's graphs compute what Hugging Face transformers computes.
 *
 * tools/llava/export.py turned the tiny random LlavaForConditionalGeneration checkpoint of
 * test/fixtures/llava-tiny/hf into test/fixtures/llava-tiny/bundle; transformers 5 recorded, for the
 * same weights in float32, every vision layer's output, the projected image features, and greedy
 * generation with its logits (reference.json / reference.bin). This test drives the bundle's graphs
 * directly with onnxruntime-node (no engine, no reduction), in the order docs/bundle-format.md defines:
 * vision embed -> (attn, mlp) per exported layer -> drop CLS -> projector; prompt embeds with the image
 * span -> (attn, mlp) per decoder layer with a KV cache -> head, then greedy decoding.
 *
 * Tolerance: max|ours - HF| <= 1e-4 x max|HF| per tensor (the bundle stores exactly HF's fp16-exact
 * weights; what remains is float32 summation order). Tokens are compared up to the first step whose
 * reference top-2 margin is below 1e-3.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { ort } from '../shared/onnx/ort';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  LLAVA_TINY_BUNDLE, argmax, comparableSteps, loadLlavaReference, maxAbs, maxAbsDiff, type ReferenceItem,
} from './llava-fixture';

const REL_TOL = 1e-4;

interface Manifest {
  vision: { num_layers: number; trained_layers: number; num_patches: number; hidden_size: number; image_size: number };
  language: { num_layers: number; num_kv_heads: number; head_dim: number; hidden_size: number; vocab_size: number };
  graphs: Record<string, { path: string }>;
  tokens: { bos_id: number };
}

const manifest = JSON.parse(readFileSync(join(LLAVA_TINY_BUNDLE, 'manifest.json'), 'utf8')) as Manifest;
const ref = loadLlavaReference();
const sessions = new Map<string, ort.InferenceSession>();

async function run(stage: string, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const s = sessions.get(stage);
  if (!s) throw new Error(`no session for ${stage}`);
  return s.run(feeds);
}

const f32 = (data: Float32Array, dims: number[]) => new ort.Tensor('float32', data, dims);
const i64 = (values: number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), dims);
const data = (t: ort.Tensor) => t.data as Float32Array;

function expectClose(ours: Float32Array, hf: Float32Array, what: string): void {
  const diff = maxAbsDiff(ours, hf);
  const scale = maxAbs(hf);
  expect(diff, `${what}: max|diff| ${diff.toExponential(2)} vs max|HF| ${scale.toExponential(2)}`).toBeLessThanOrEqual(REL_TOL * scale);
}

/** Vision tower + projector on HF's own pixel values; checks every layer on the way. */
async function encodeImage(item: ReferenceItem): Promise<Float32Array> {
  const { vision } = manifest;
  const pixels = ref.tensor(item.tensors['pixel_values']!);
  let h = (await run('vision/embed', { pixel_values: f32(pixels, [1, 3, vision.image_size, vision.image_size]) })).hidden_out!;
  expectClose(data(h), ref.tensor(item.tensors['vision/embed:hidden_out']!), 'vision/embed');
  const tokens = vision.num_patches + 1;
  const bias = f32(new Float32Array(tokens), [1, tokens]);
  for (let layer = 0; layer < vision.num_layers; layer++) {
    const name = `vision/layer_${String(layer).padStart(2, '0')}`;
    h = (await run(`${name}.attn`, { hidden_in: h, attn_bias: bias })).hidden_out!;
    h = (await run(`${name}.mlp`, { hidden_in: h })).hidden_out!;
    expectClose(data(h), ref.tensor(item.tensors[`${name}.mlp:hidden_out`]!), `${name}`);
  }
  const patches = data(h).slice(vision.hidden_size); // CLS dropped (vision_feature_select_strategy 'default')
  expectClose(patches, ref.tensor(item.tensors['vision/feature']!), 'feature (penultimate layer, no CLS)');
  const embeds = data((await run('vision/projector', { features: f32(patches, [1, vision.num_patches, vision.hidden_size]) })).embeds!);
  expectClose(embeds, ref.tensor(item.tensors['vision/projector:embeds']!), 'vision/projector');
  return embeds;
}

interface Cache {
  key: ort.Tensor;
  value: ort.Tensor;
}

/** Runs the decoder over `embeds` (T rows) after `past` positions; returns the last row's logits. */
async function decoderStep(embeds: Float32Array, positions: number[], caches: Cache[]): Promise<Float32Array> {
  const { language } = manifest;
  const t = positions.length;
  let h: ort.Tensor = f32(embeds, [1, t, language.hidden_size]);
  for (let layer = 0; layer < language.num_layers; layer++) {
    const name = `language/layer_${String(layer).padStart(2, '0')}`;
    const past = caches[layer]!;
    const total = past.key.dims[2]! + t;
    const out = await run(`${name}.attn`, {
      hidden_in: h, position_ids: i64(positions, [1, t]), past_key: past.key, past_value: past.value,
      attention_mask: i64(new Array<number>(total).fill(1), [1, total]),
    });
    caches[layer] = { key: out.present_key!, value: out.present_value! };
    h = (await run(`${name}.mlp`, { hidden_in: out.hidden_out! })).hidden_out!;
  }
  const last = data(h).slice((t - 1) * language.hidden_size);
  return data((await run('language/head', { hidden_in: f32(last, [1, 1, language.hidden_size]) })).logits!);
}

async function embedIds(ids: number[]): Promise<Float32Array> {
  return data((await run('language/embed', { input_ids: i64(ids, [1, ids.length]) })).embeds!);
}

beforeAll(async () => {
  const options: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1 };
  for (const [name, g] of Object.entries(manifest.graphs)) {
    if (name.endsWith('.scores')) continue;
    sessions.set(name, await ort.InferenceSession.create(join(LLAVA_TINY_BUNDLE, g.path), options));
  }
});

afterAll(async () => {
  for (const s of sessions.values()) await s.release();
});

describe('llava-tiny bundle (exported from a transformers checkpoint)', () => {
  it('exports the penultimate vision layer only and declares the checkpoint geometry', () => {
    expect(manifest.vision.trained_layers).toBe(4);
    expect(manifest.vision.num_layers).toBe(3);
    expect(Object.keys(manifest.graphs).filter((n) => n.startsWith('vision/layer_') && n.endsWith('.attn'))).toHaveLength(3);
    expect(manifest.language.num_kv_heads).toBeLessThan(4); // grouped-query attention is exercised
  });

  for (const [n, item] of ref.items.entries()) {
    it(`item ${n} (${item.image}): vision features, prefill logits and greedy decoding match transformers`, async () => {
      const { language } = manifest;
      const imageEmbeds = await encodeImage(item);
      const prefix = await embedIds(item.input_ids.prefix);
      const suffix = await embedIds(item.input_ids.suffix);
      const prompt = new Float32Array(prefix.length + imageEmbeds.length + suffix.length);
      prompt.set(prefix, 0);
      prompt.set(imageEmbeds, prefix.length);
      prompt.set(suffix, prefix.length + imageEmbeds.length);
      const promptLength = prompt.length / language.hidden_size;
      expect(promptLength).toBe(item.prompt_length);

      const empty = () => new ort.Tensor('float32', new Float32Array(0), [1, language.num_kv_heads, 0, language.head_dim]);
      const caches: Cache[] = Array.from({ length: language.num_layers }, () => ({ key: empty(), value: empty() }));
      const hfLogits = ref.tensor(item.tensors['decode_logits']!);
      const steps = comparableSteps(item);
      expect(steps, 'the fixture should have well-separated greedy choices').toBeGreaterThanOrEqual(8);

      let logits = await decoderStep(prompt, Array.from({ length: promptLength }, (_, i) => i), caches);
      const tokens: number[] = [];
      for (let step = 0; step < steps; step++) {
        expectClose(logits, hfLogits.subarray(step * language.vocab_size, (step + 1) * language.vocab_size), `logits at step ${step}`);
        const next = argmax(logits);
        tokens.push(next);
        if (step + 1 < steps) logits = await decoderStep(await embedIds([next]), [promptLength + step], caches);
      }
      expect(tokens).toEqual(item.tokens.slice(0, steps));
    });
  }
});
