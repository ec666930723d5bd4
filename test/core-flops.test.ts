import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { headFlops, languageAttnFlops, languageMlpFlops, macs, projectorFlops, totalFlops, visionAttnFlops, visionMlpFlops } from '../shared/flops';
import { languageScoresFlops } from '../shared/flops/flops';
import { disposeModel, encodeImage, generate } from '../shared/engine';
import { loadTestModel, policy, RANDOM_BUNDLE } from './core-helpers';
import type { LanguageArch, Manifest, VisionArch } from '../shared/bundle/manifest';

// LLaVA-1.5-7B: Vicuna-7B decoder, CLIP ViT-L/14-336 tower.
const vicuna: LanguageArch = { hidden_size: 4096, num_layers: 32, num_heads: 32, num_kv_heads: 32, head_dim: 128, intermediate_size: 11008, rope_theta: 10000, rms_norm_eps: 1e-5, vocab_size: 32064, max_positions: 4096 };
const clip: VisionArch = { image_size: 336, patch_size: 14, grid: 24, num_patches: 576, hidden_size: 1024, num_heads: 16, head_dim: 64, intermediate_size: 4096, num_layers: 23, trained_layers: 24, class_token: true, layer_norm_eps: 1e-5, activation: 'quick_gelu' };

describe('analytic FLOPs', () => {
  it("a decoder layer is 2 x SparseVLM's multiply-accumulate count 4nd^2 + 2n^2d + 3ndm", () => {
    for (const n of [64, 192, 641]) {
      const d = 4096;
      const m = 11008;
      const sparsevlmMacs = 4 * n * d * d + 2 * n * n * d + 3 * n * d * m;
      expect(languageAttnFlops(vicuna, n, n) + languageMlpFlops(vicuna, n)).toBe(2 * sparsevlmMacs);
    }
  });

  it('grouped-query attention projects fewer keys and values', () => {
    const gqa = { ...vicuna, num_kv_heads: 8 };
    expect(languageAttnFlops(gqa, 100, 100)).toBeLessThan(languageAttnFlops(vicuna, 100, 100));
    expect(languageAttnFlops(vicuna, 100, 100) - languageAttnFlops(gqa, 100, 100)).toBe(2 * 100 * 4096 * 2 * (32 - 8) * 128);
  });

  it('a decode step attends over the whole cache', () => {
    expect(languageAttnFlops(vicuna, 1, 701) - languageAttnFlops(vicuna, 1, 700)).toBe(2 * 2 * 4096);
    expect(headFlops(vicuna, 1)).toBe(2 * 4096 * 32064);
  });

  it('vision layers and the projector follow the same convention; macs() halves every stage', () => {
    const T = 577;
    expect(visionAttnFlops(clip, T) + visionMlpFlops(clip, T)).toBe(2 * (4 * T * 1024 * 1024 + 2 * T * T * 1024 + 2 * T * 1024 * 4096));
    const m = { projector: { type: 'mlp2x_gelu', input_size: 1024, output_size: 4096 } } as unknown as Manifest;
    expect(projectorFlops(m, 576)).toBe(2 * 576 * (1024 * 4096 + 4096 * 4096));
    const f = { vision: 4, projector: 2, prefill: 10, decode: 6, overhead: 2 };
    expect(totalFlops(macs(f))).toBe(totalFlops(f) / 2);
  });
});

describe("the engine's FLOPs after a cut (random bundle, 50 % budgets)", () => {
  let model: Awaited<ReturnType<typeof loadTestModel>>;
  beforeAll(async () => {
    model = await loadTestModel({ dir: RANDOM_BUNDLE });
  });
  afterAll(async () => {
    if (model) await disposeModel(model);
  });

  /** A greedy answer under `language` at 50 %, with the prompt's text-token count and the visual tokens per layer. */
  async function answer(language: 'fastv' | 'ficoco-l', background: { r: number; g: number; b: number }, maxNewTokens: number) {
    const image = await sharp({ create: { width: 40, height: 32, channels: 3, background } }).png().toBuffer();
    const p = policy({ language, budget: { percent: 50 } });
    const enc = await encodeImage(model, image, p);
    const r = await generate(model, enc, 'what color is it?', { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens }, p);
    return { r, arch: model.manifest.language, text: r.promptTokens - enc.embeds.dims[0], perLayer: r.perLayerVisualTokens };
  }

  it('counts each prefill layer at the tokens it ran, the scores graph once at the cut, and decode over the shortened caches', async () => {
    const { r, arch, text, perLayer } = await answer('fastv', { r: 200, g: 60, b: 90 }, 3);
    const cut = perLayer.findIndex((v, i) => i > 0 && v < perLayer[i - 1]!);
    expect(cut).toBeGreaterThan(0); // one cut, before layer `cut`, after layer cut - 1
    // Prefill: layer l attends and runs its MLP over the text plus the visual tokens it received.
    let prefill = headFlops(arch, 1); // the first token's logits
    for (const v of perLayer) prefill += languageAttnFlops(arch, text + v, text + v) + languageMlpFlops(arch, text + v);
    expect(r.flops.prefill).toBe(prefill);
    // FastV's one step reads the scores graph of layer cut - 1, over the tokens that layer ran.
    expect(r.flops.overhead).toBe(languageScoresFlops(arch, text + perLayer[cut - 1]!, text + perLayer[cut - 1]!));
    // Decode: each fed-back token attends over every layer's cache, as long as that layer kept.
    // (the last token is sampled, never fed back)
    const steps = r.tokenIds.length - 1;
    expect(steps).toBeGreaterThan(0);
    let decode = headFlops(arch, 1) * steps;
    for (let s = 0; s < steps; s++) for (const v of perLayer) decode += languageAttnFlops(arch, 1, text + v + s + 1) + languageMlpFlops(arch, 1);
    expect(r.flops.decode).toBe(decode);
  });

  it('counts a layer whose attention is followed by a cut (FiCoCo-L) with its MLP over the tokens left after the cut', async () => {
    const { r, arch, text, perLayer } = await answer('ficoco-l', { r: 20, g: 160, b: 90 }, 2);
    const cutLayers = r.schedule.steps.map((s) => s.layer);
    expect(r.schedule.steps.every((s) => s.at === 'after-attn')).toBe(true);
    expect(cutLayers.length).toBeGreaterThan(0);
    let prefill = headFlops(arch, 1);
    let overhead = 0;
    perLayer.forEach((v, l) => {
      // The cut sits between the attention and the MLP: the MLP runs on what the next layer receives.
      const afterCut = cutLayers.includes(l) ? perLayer[l + 1]! : v;
      prefill += languageAttnFlops(arch, text + v, text + v) + languageMlpFlops(arch, text + afterCut);
      if (cutLayers.includes(l)) overhead += languageScoresFlops(arch, text + v, text + v);
    });
    expect(r.flops.prefill).toBe(prefill);
    expect(r.flops.overhead).toBe(overhead);
  });
});
