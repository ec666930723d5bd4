/**
 * The runtime against the random-weight bundle's Python reference (tools/bundle/reference_torch.py):
 * every stage through runStage, then the engine's own flow (prompt splicing, positions, caches)
 * reproducing the reference's unreduced prefill.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disposeModel, encodePixels, generate, type LoadedModel } from '../shared/engine';
import { runStage } from '../shared/onnx/run-stage';
import type { F32Tensor } from '../shared/tensor/host-tensor';
import { assemblePrompt } from '../shared/tokenizer';
import { decodeRef, expectClose, loadTestModel, policy, RANDOM_BUNDLE, readJson, type RefTensor, ROOT } from './core-helpers';

interface Reference {
  bundles: Record<string, { content_hash: string; io_dtype: 'float32' | 'float16'; tolerance: number }>;
  prompt: { question: string; prefix_ids: number[]; suffix_ids: number[] };
  cases: { stage: string; label: string; inputs: Record<string, string>; outputs: Record<string, string> }[];
  tensors: Record<string, RefTensor>;
}

const ref = readJson<Reference>(`${ROOT}/test/fixtures/random-bundle-reference.json`);
const tensor = (id: string) => decodeRef(ref.tensors[id]!);
const floats = (id: string) => tensor(id).data as Float32Array;
/** The first reference case of a stage whose label starts with `label`. */
const caseOf = (stage: string, label = '') => ref.cases.find((c) => c.stage === stage && c.label.startsWith(label))!;

describe.each(Object.entries(ref.bundles))('%s', (folder, expected) => {
const tol = expected.tolerance;
let model: LoadedModel;
beforeAll(async () => {
  model = await loadTestModel({ dir: path.join(path.dirname(RANDOM_BUNDLE), folder), verifyHashes: true });
});
afterAll(() => disposeModel(model));

describe('random bundle: every stage matches the Python reference', () => {
  it('is the bundle the reference was computed from', () => {
    expect(model.manifest.content_hash).toBe(expected.content_hash);
    expect(model.manifest.io_dtype).toBe(expected.io_dtype);
  });

  it.each(ref.cases.map((c) => [`${c.stage} (${c.label})`, c] as const))('%s', async (_name, c) => {
    const feeds = Object.fromEntries(Object.entries(c.inputs).map(([k, id]) => [k, tensor(id)]));
    const out = await runStage(await model.bundle.stages.get(c.stage), feeds);
    for (const [name, id] of Object.entries(c.outputs)) {
      expect(out.host[name]!.dims).toEqual(ref.tensors[id]!.shape);
      expectClose(`${c.stage}:${name}`, out.host[name]!.data, floats(id), tol);
    }
  });
});

describe('random bundle: the engine reproduces the unreduced reference flow', () => {
  it('assembles the prompt ids the reference tokenised', () => {
    const p = assemblePrompt(model.tokenizer, model.manifest.prompt, model.manifest.tokens, ref.prompt.question, model.limits);
    expect(p.prefix).toEqual([model.manifest.tokens.bos_id, ...ref.prompt.prefix_ids]);
    expect(p.suffix).toEqual(ref.prompt.suffix_ids);
    expect(p.imageStart).toBe(1 + ref.prompt.prefix_ids.length);
  });

  it('encodes pixel_values through embed and the first layer like the reference', async () => {
    const taps = new Map<string, F32Tensor>();
    const embed = caseOf('vision/embed');
    const enc = await encodePixels(model, tensor(embed.inputs.pixel_values!) as F32Tensor, policy(), { tap: (k, t) => taps.has(k) || taps.set(k, t) });
    expectClose('vision/embed:hidden_out', taps.get('vision/embed:hidden_out')!.data, floats(embed.outputs.hidden_out!), tol);
    expectClose('vision/layer_00.attn:hidden_out', taps.get('vision/layer_00.attn:hidden_out')!.data, floats(caseOf('vision/layer_00.attn').outputs.hidden_out!), tol);
    expectClose('vision/layer_00.mlp:hidden_out', taps.get('vision/layer_00.mlp:hidden_out')!.data, floats(caseOf('vision/layer_00.mlp').outputs.hidden_out!), tol);
    const P = model.manifest.vision.num_patches;
    expect(enc.embeds.dims).toEqual([P, model.manifest.language.hidden_size]);
    expect([...enc.origin]).toEqual([...Array(P).keys()]);
    expect(enc.tokensPerLayer).toEqual(new Array(model.manifest.vision.num_layers).fill(P + 1));
  });

  it('prefills every decoder layer and the head like the reference, with the visual rows spliced at image_start', async () => {
    const projector = caseOf('vision/projector');
    const visualData = floats(projector.outputs.embeds!);
    const N = ref.tensors[projector.outputs.embeds!]!.shape[1]!;
    const D = model.manifest.language.hidden_size;
    const taps = new Map<string, F32Tensor>();
    const tap = (k: string, t: F32Tensor) => taps.has(k) || taps.set(k, t);
    const result = await generate(model, { embeds: { dtype: 'float32', dims: [N, D], data: visualData }, origin: Int32Array.from({ length: N }, (_, i) => i) }, ref.prompt.question, { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 3 }, policy(), { tap });

    const first = caseOf('language/layer_00.attn', 'prefill');
    expect(ref.tensors[first.inputs.hidden_in!]!.shape).toEqual([1, result.promptTokens, D]);
    for (let l = 0; l < model.manifest.language.num_layers; l++) {
      for (const half of ['attn', 'mlp']) {
        const stage = `language/layer_${String(l).padStart(2, '0')}.${half}`;
        expectClose(`${stage}:hidden_out`, taps.get(`${stage}:hidden_out`)!.data, floats(caseOf(stage, 'prefill').outputs.hidden_out!), tol);
      }
    }
    const head = ref.tensors[caseOf('language/head', 'prefill').outputs.logits!]!;
    const V = model.manifest.language.vocab_size;
    const lastRow = floats(caseOf('language/head', 'prefill').outputs.logits!).subarray((head.shape[1]! - 1) * V);
    expectClose('language/head:logits (last prompt position)', taps.get('language/head:logits')!.data, lastRow, tol);

    expect(result.perLayerVisualTokens).toEqual(new Array(model.manifest.language.num_layers).fill(N));
    expect(result.achievedBudget).toBe(N);
    expect(result.tokenIds.length).toBeLessThanOrEqual(3);
    expect(result.flops.prefill).toBeGreaterThan(0);
  });

  it('greedy decoding is deterministic and seeded sampling replays', async () => {
    const pixels = tensor(caseOf('vision/embed').inputs.pixel_values!) as F32Tensor;
    const enc = await encodePixels(model, pixels, policy());
    const run = (temperature: number, seed: number) =>
      generate(model, enc, 'what shape is it?', { temperature, topP: 0.9, topK: 0, seed, maxNewTokens: 6 }, policy());
    expect((await run(0, 1)).tokenIds).toEqual((await run(0, 2)).tokenIds);
    const a = await run(1.5, 7);
    expect((await run(1.5, 7)).tokenIds).toEqual(a.tokenIds);
    expect(a.finishReason === 'length' ? a.tokenIds.length : a.tokenIds.length + 1).toBeLessThanOrEqual(6);
  });

  it('reports every generated id to the delta listener exactly once, also when the answer ends inside a character', async () => {
    const pixels = tensor(caseOf('vision/embed').inputs.pixel_values!) as F32Tensor;
    const enc = await encodePixels(model, pixels, policy());
    // Every token decodes as an unfinished multi-byte character, so each push yields '' and the whole
    // text arrives in the final flush, as when max tokens cuts a byte-level tokenizer's character.
    const unfinished = Object.assign(Object.create(model.tokenizer) as typeof model.tokenizer, { decode: (ids: readonly number[]) => '\uFFFD'.repeat(ids.length) });
    const deltas: Array<[string, number | undefined]> = [];
    const result = await generate({ ...model, tokenizer: unfinished }, enc, 'what shape is it?', { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 4 }, policy(), {}, (d, id) => deltas.push([d, id]));
    expect(result.tokenIds.length).toBeGreaterThan(0);
    expect(deltas.flatMap(([, id]) => (id === undefined ? [] : [id]))).toEqual(result.tokenIds);
    expect(deltas.map(([d]) => d).join('')).toBe(result.text);
  });
});
});
