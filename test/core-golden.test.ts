/**
 * Parity of the TypeScript engine with the Python reference on the embedded default model.
 *
 * Golden file (test/fixtures/golden/tiny-llava-shapes.json + .bin, written by tools/model/parity.py):
 * for a few items, stage outputs of the unreduced run with the rows it lists along `axis`. The engine
 * runs from the image file; every stored tensor must satisfy max|a-b| <= 1e-4 x max|golden|, and the
 * prompt ids, image_start and generated ids must be identical. The scores graphs (which the unreduced
 * engine never needs) are run on the engine's own layer inputs.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layerStage } from '../shared/bundle/manifest';
import { disposeModel, encodeImage, generate, type LoadedModel } from '../shared/engine';
import { runStage, type Feed } from '../shared/onnx/run-stage';
import { f32, i64, type F32Tensor } from '../shared/tensor/host-tensor';
import { assemblePrompt } from '../shared/tokenizer';
import { expectClose, loadTestModel, policy, ROOT } from './core-helpers';

const MODEL_DIR = path.join(ROOT, 'models/tiny-llava-shapes');
const GOLDEN = path.join(ROOT, 'test/fixtures/golden/tiny-llava-shapes.json');

interface GoldenTensor {
  shape: number[];
  axis: number;
  rows: number[] | null;
  offset: number;
  stored_shape: number[];
}
interface GoldenItem {
  image: string;
  question: string;
  answer: string;
  generated_ids: number[];
  input_ids: { prefix: number[]; suffix: number[] };
  image_start: number;
  tensors: Record<string, GoldenTensor>;
}
interface Golden {
  model_id: string;
  content_hash: string;
  bin: string;
  items: GoldenItem[];
}

/** Slices `rows` along `axis` of a row-major tensor (all of it when rows is null). */
function take(t: F32Tensor, axis: number, rows: readonly number[] | null): Float32Array {
  if (rows === null) return t.data;
  const outer = t.dims.slice(0, axis).reduce((a, b) => a * b, 1);
  const n = t.dims[axis]!;
  const inner = t.dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const out = new Float32Array(outer * rows.length * inner);
  let at = 0;
  for (let o = 0; o < outer; o++) {
    for (const r of rows) {
      out.set(t.data.subarray((o * n + r) * inner, (o * n + r + 1) * inner), at);
      at += inner;
    }
  }
  return out;
}

describe('golden parity: tiny-llava-shapes, no reduction', () => {
  let golden: Golden;
  let values: Float32Array;
  let model: LoadedModel;

  beforeAll(async () => {
    golden = JSON.parse(readFileSync(GOLDEN, 'utf8')) as Golden;
    const bin = readFileSync(path.join(path.dirname(GOLDEN), golden.bin));
    values = new Float32Array(bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength));
    model = await loadTestModel({ dir: MODEL_DIR });
  });
  afterAll(() => model && disposeModel(model));

  it('is the golden file of this bundle', () => {
    expect(golden.model_id).toBe(model.manifest.model_id);
    expect(golden.content_hash).toBe(model.manifest.content_hash);
    expect(golden.items.length).toBeGreaterThan(0);
  });

  it('every golden item: prompt ids, every stored stage output, generated ids', async () => {
    for (const item of golden.items) {
      // First occurrence of each key: prefill comes before decode, and the first head output is the first decode step's logits.
      const taps = new Map<string, F32Tensor>();
      const tap = (key: string, t: F32Tensor) => void (taps.has(key) || taps.set(key, t));
      const prompt = assemblePrompt(model.tokenizer, model.manifest.prompt, model.manifest.tokens, item.question, model.limits);
      expect(prompt.prefix, `${item.image}: prefix ids`).toEqual(item.input_ids.prefix);
      expect(prompt.suffix, `${item.image}: suffix ids`).toEqual(item.input_ids.suffix);
      expect(prompt.imageStart).toBe(item.image_start);

      const enc = await encodeImage(model, readFileSync(path.join(MODEL_DIR, item.image)), policy(), { tap });
      const r = await generate(model, enc, item.question, { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: model.manifest.generation.max_new_tokens }, policy(), { tap });
      const ids = r.finishReason === 'stop' ? [...r.tokenIds, model.manifest.tokens.stop_ids.find((s) => item.generated_ids.includes(s)) ?? -1] : [...r.tokenIds];
      expect(ids, `${item.image}: "${item.question}" generated ids`).toEqual(item.generated_ids);
      expect(r.text.trim()).toBe(item.answer);

      await addScoresTaps(model, taps, item);
      for (const [key, g] of Object.entries(item.tensors)) {
        const actual = taps.get(key);
        expect(actual, `${item.image}: the engine produced no ${key}`).toBeDefined();
        expect(actual!.dims, `${key} shape`).toEqual(g.shape);
        const size = g.stored_shape.reduce((a, b) => a * b, 1);
        expectClose(`${item.image} ${key}`, take(actual!, g.axis, g.rows), values.subarray(g.offset, g.offset + size));
      }
    }
  });
});

/** Runs each scores graph the golden item stores on the engine's own input of that layer (prefill, no bias). */
async function addScoresTaps(model: LoadedModel, taps: Map<string, F32Tensor>, item: GoldenItem): Promise<void> {
  for (const key of Object.keys(item.tensors)) {
    const m = /^(vision|language)\/layer_(\d+)\.scores:/.exec(key);
    if (!m || taps.has(key)) continue;
    const side = m[1] as 'vision' | 'language';
    const layer = Number(m[2]);
    const stage = layerStage(side, layer, 'scores');
    const input = layer === 0 ? taps.get(side === 'vision' ? 'vision/embed:hidden_out' : 'language/input:embeds')! : taps.get(`${layerStage(side, layer - 1, 'mlp')}:hidden_out`)!;
    const T = input.dims[1]!;
    const l = model.manifest.language;
    const empty = f32([1, l.num_kv_heads, 0, l.head_dim]);
    const feeds: Record<string, Feed> =
      side === 'vision'
        ? { hidden_in: input, attn_bias: f32([1, T]) }
        : { hidden_in: input, position_ids: i64([1, T], Array.from({ length: T }, (_, i) => i)), past_key: empty, past_value: empty, attention_mask: i64([1, T], new Array<number>(T).fill(1)) };
    const out = await runStage(await model.bundle.stages.get(stage), feeds);
    for (const [name, t] of Object.entries(out.host)) taps.set(`${stage}:${name}`, t);
  }
}
