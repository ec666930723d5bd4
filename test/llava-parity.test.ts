/**
 * The TypeScript runtime serves an exported LLaVA-1.5 checkpoint as transformers does.
 *
 * The bundle test/fixtures/llava-tiny/bundle was exported by tools/llava/export.py from a randomly
 * initialised transformers LlavaForConditionalGeneration (test/fixtures/llava-tiny/hf); transformers
 * 5.17 recorded, in float32, its greedy answers with their logits for three image/question pairs.
 * Here the whole engine runs from PNG bytes: preprocessing (the images are the model's size, so
 * CLIP's resize and crop leave them unchanged), the tokenizer and the vicuna_v1 prompt template, the
 * vision tower, the projector, prefill and greedy decoding.
 *
 * Tokens must be equal up to the first step whose reference top-2 margin is below 1e-3; logits of every
 * such step within 1e-4 of their largest magnitude. Separately, the preprocessing of a non-square
 * image is compared with transformers' CLIPImageProcessor (crop) and LlavaImageProcessor (pad).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { disposeModel, encodeImage, generate, GREEDY, type LoadedModel } from '../shared/engine';
import { preprocessImage } from '../shared/image/preprocess';
import { assemblePrompt } from '../shared/tokenizer/tokenizer';
import { rowsFloat32 } from '../shared/tensor/float-rows';
import { expectClose, loadTestModel, policy } from './core-helpers';
import { LLAVA_TINY, LLAVA_TINY_BUNDLE, comparableSteps, loadLlavaReference, maxAbsDiff } from './llava-fixture';

const ref = loadLlavaReference();
let model: LoadedModel;

beforeAll(async () => {
  model = await loadTestModel({ dir: LLAVA_TINY_BUNDLE, verifyHashes: true });
});

afterAll(async () => {
  if (model) await disposeModel(model);
});

describe('llava-tiny served by the engine, against transformers', () => {
  for (const [n, item] of ref.items.entries()) {
    it(`item ${n}: "${item.question}" on ${item.image}`, async () => {
      const prompt = assemblePrompt(model.tokenizer, model.manifest.prompt, model.manifest.tokens, item.question, model.limits);
      expect([...prompt.prefix]).toEqual(item.input_ids.prefix);
      expect([...prompt.suffix]).toEqual(item.input_ids.suffix);
      // transformers' LlavaProcessor tokenises the whole prompt and agrees with the split encoding
      expect(item.hf_processor_input_ids).toEqual([
        ...item.input_ids.prefix, ...new Array<number>(model.manifest.vision.num_patches).fill(ref.image_token_id), ...item.input_ids.suffix,
      ]);

      const taps = new Map<string, Float32Array[]>();
      const tap = (key: string, t: { data: Float32Array }) => {
        if (key === 'pixel_values' || key === 'language/head:logits') taps.set(key, [...(taps.get(key) ?? []), t.data.slice()]);
      };
      const png = new Uint8Array(readFileSync(join(LLAVA_TINY, item.image)));
      const visual = await encodeImage(model, png, policy(), { tap });
      expectClose('pixel_values', taps.get('pixel_values')![0]!, ref.tensor(item.tensors['pixel_values']!), 1e-5);
      expectClose('vision/projector:embeds', rowsFloat32(visual.embeds), ref.tensor(item.tensors['vision/projector:embeds']!));

      const steps = comparableSteps(item);
      expect(steps).toBeGreaterThanOrEqual(8);
      const result = await generate(model, visual, item.question, { ...GREEDY, maxNewTokens: steps }, policy(), { tap });
      expect(result.promptTokens).toBe(item.prompt_length);
      expect([...result.tokenIds]).toEqual(item.tokens.slice(0, steps));

      const logits = taps.get('language/head:logits')!;
      const vocab = model.manifest.language.vocab_size;
      const hf = ref.tensor(item.tensors['decode_logits']!);
      for (let step = 0; step < steps; step++) {
        expectClose(`logits at step ${step}`, logits[step]!, hf.subarray(step * vocab, (step + 1) * vocab));
      }
    });
  }
});

describe('llava-tiny preprocessing of a non-square image, against transformers', () => {
  for (const p of ref.preprocess) {
    it(`${p.resize} (${p.processor})`, async () => {
      const png = new Uint8Array(readFileSync(join(LLAVA_TINY, p.image)));
      const pre = await preprocessImage(png, { ...model.manifest.preprocess, resize: p.resize }, model.limits);
      const hf = ref.tensor(p.pixel_values);
      expect(pre.pixelValues.dims).toEqual(p.pixel_values.shape);
      // sharp's and PIL's bicubic kernels differ at sharp edges (measured: max 0.20 after normalisation,
      // about 13/255, mean 0.0015 / 0.0009); a shifted, mirrored or wrongly padded image is far off.
      const diff = maxAbsDiff(pre.pixelValues.data, hf);
      expect(diff, `${p.resize}: max|diff| ${diff}`).toBeLessThan(0.25);
      let sum = 0;
      for (let i = 0; i < hf.length; i++) sum += Math.abs(pre.pixelValues.data[i]! - hf[i]!);
      expect(sum / hf.length, `${p.resize}: mean|diff|`).toBeLessThan(0.005);
    });
  }
});
