/**
 * The engine around the reduction methods (random bundle): schedules are followed layer by layer,
 * what the methods decide is applied to the hidden states, the achieved budget is measured, and
 * cancellation and deadlines stop a request between layers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disposeModel, encodePixels, generate, type LoadedModel } from '../shared/engine';
import { f32, type F32Tensor } from '../shared/tensor/host-tensor';
import type { SamplingParams } from '../shared/engine/sampling';
import { failure, loadTestModel, policy, RANDOM_BUNDLE } from './core-helpers';

const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 4 };
let model: LoadedModel;
let pixels: F32Tensor;

beforeAll(async () => {
  model = await loadTestModel({ dir: RANDOM_BUNDLE });
  const data = new Float32Array(3 * 32 * 32);
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 0.37) * 1.5;
  pixels = f32([1, 3, 32, 32], data);
});
afterAll(() => disposeModel(model));

describe('vision-side reduction inside encoder layers', () => {
  it.each(['ficoco-v', 'tome', 'random'] as const)('%s: follows its schedule and hands the budget to the projector', async (vision) => {
    const enc = await encodePixels(model, pixels, policy({ vision, budget: { tokens: 8 } }));
    expect(enc.embeds.dims).toEqual([8, model.manifest.language.hidden_size]);
    expect(enc.schedule.outputTokens).toBe(8);
    // Tokens entering each layer's attention = what the previous steps left (CLS included).
    let T = model.manifest.vision.num_patches + 1;
    enc.schedule.steps.forEach((s) => expect(s.tokensIn).toBeLessThanOrEqual(T));
    for (let layer = 0; layer < model.manifest.vision.num_layers; layer++) {
      expect(enc.tokensPerLayer[layer]).toBe(T);
      const step = enc.schedule.steps.find((s) => s.layer === layer);
      if (step) T = step.tokensOut;
    }
    expect(T - 1).toBe(8);
    // Provenance: every kept row names a real patch (or a synthesised token), no patch twice.
    const real = [...enc.origin].filter((o) => o >= 0);
    expect(new Set(real).size).toBe(real.length);
    real.forEach((o) => expect(o).toBeLessThan(model.manifest.vision.num_patches));
    expect(enc.flops.overhead > 0).toBe(enc.schedule.needs.length > 0);
  });
});

describe('language-side reduction during prefill', () => {
  it.each(['fastv', 'sparsevlm', 'ficoco-l', 'random'] as const)('%s: measured per-layer visual tokens equal the schedule and average to the budget', async (language) => {
    const enc = await encodePixels(model, pixels, policy());
    const r = await generate(model, enc, 'what color is the circle?', greedy, policy({ language, budget: { tokens: 10 } }));
    expect(r.perLayerVisualTokens).toEqual(r.schedule.perLayerVisualTokens);
    expect(r.achievedBudget).toBeCloseTo(10, 0);
    expect(r.perLayerVisualTokens[0]).toBe(16);
    expect(r.tokenIds.length).toBeGreaterThan(0);
    const unreduced = await generate(model, enc, 'what color is the circle?', greedy, policy());
    expect(r.flops.prefill).toBeLessThan(unreduced.flops.prefill);
  });

  it('refuses an infeasible budget before running anything', async () => {
    const enc = await encodePixels(model, pixels, policy());
    const e = await failure(generate(model, enc, 'what color?', greedy, policy({ language: 'fastv', budget: { tokens: 1000 } })));
    expect(e.code).toBe('INVALID_ARGUMENT');
  });

  it('refuses visual tokens of another width as FAILED_PRECONDITION', async () => {
    const e = await failure(generate(model, { embeds: { dtype: 'float32', dims: [4, 32], data: new Float32Array(128) }, origin: new Int32Array(4) }, 'what?', greedy, policy()));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(/width 32, this language model takes 48/);
  });
});

describe('cancellation and deadlines', () => {
  it('stops between layers when the signal aborts', async () => {
    const controller = new AbortController();
    const seen: string[] = [];
    const tap = (key: string) => {
      seen.push(key);
      if (key === 'vision/layer_00.mlp:hidden_out') controller.abort();
    };
    const e = await failure(encodePixels(model, pixels, policy(), { signal: controller.signal, tap }));
    expect(e.code).toBe('CANCELLED');
    expect(seen).not.toContain('vision/layer_01.attn:hidden_out');
  });

  it('stops decoding between steps when the deadline passes', async () => {
    const enc = await encodePixels(model, pixels, policy());
    let heads = 0;
    const ctx = {
      get deadline() {
        return heads >= 2 ? Date.now() - 1 : Date.now() + 60_000;
      },
      tap: (key: string) => {
        if (key === 'language/head:logits') heads++;
      },
    };
    const e = await failure(generate(model, enc, 'what color?', { ...greedy, maxNewTokens: 50 }, policy(), ctx));
    expect(e.code).toBe('DEADLINE_EXCEEDED');
    expect(heads).toBe(2);
  });
});
