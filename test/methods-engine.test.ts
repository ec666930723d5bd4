/**
 * Exact mode and ficoco-vl through the real engine (random bundle): the schedules the methods
 * resolve are what the engine measures, in both modes, and ficoco-vl's vision output is the split
 * its language half expects.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disposeModel, encodePixels, generate, type LoadedModel } from '../shared/engine';
import type { SamplingParams } from '../shared/engine/sampling';
import { f32, type F32Tensor } from '../shared/tensor/host-tensor';
import { loadTestModel, policy, RANDOM_BUNDLE } from './core-helpers';

const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 2 };
let model: LoadedModel;
let pixels: F32Tensor;

beforeAll(async () => {
  model = await loadTestModel({ dir: RANDOM_BUNDLE });
  const data = new Float32Array(3 * 32 * 32);
  for (let i = 0; i < data.length; i++) data[i] = Math.cos(i * 0.21) * 1.2;
  pixels = f32([1, 3, 32, 32], data);
});
afterAll(() => disposeModel(model));

describe('exact mode in the engine', () => {
  it.each(['ficoco-v', 'tome', 'random'] as const)('%s hands the budgeted number of tokens to the projector', async (vision) => {
    const enc = await encodePixels(model, pixels, policy({ vision, mode: 'exact', budget: { tokens: 6 } }));
    expect(enc.embeds.dims[0]).toBe(6);
    expect(enc.size).toHaveLength(6);
  });

  it('reports how many patches each of ToMe\'s merged rows stands for: every patch counted once', async () => {
    const enc = await encodePixels(model, pixels, policy({ vision: 'tome', budget: { tokens: 6 } }));
    expect(enc.size.reduce((a, b) => a + b, 0)).toBe(model.manifest.vision.num_patches);
    expect(Math.max(...enc.size)).toBeGreaterThan(1);
  });

  it("ficoco-l counts the code's [0, V) slots, prefix included, so its true image counts are measured", async () => {
    const enc = await encodePixels(model, pixels, policy());
    const r = await generate(model, enc, 'what color is the circle?', greedy, policy({ language: 'ficoco-l', mode: 'exact', budget: { tokens: 10 } }));
    expect(r.schedule.dataDependent).toBe(true);
    const start = r.schedule.params['start_layer'] as number;
    expect(r.perLayerVisualTokens.slice(0, start + 1)).toEqual(r.schedule.perLayerVisualTokens.slice(0, start + 1));
    // Every slot removed is a true image token or a prefix token: never more image tokens than slots.
    r.perLayerVisualTokens.forEach((n, l) => expect(n).toBeGreaterThanOrEqual(r.schedule.perLayerVisualTokens[l]!));
  });

  it.each(['sparsevlm', 'fastv', 'random'] as const)('%s follows its schedule layer by layer', async (language) => {
    const enc = await encodePixels(model, pixels, policy());
    const r = await generate(model, enc, 'what color is the circle?', greedy, policy({ language, mode: 'exact', budget: { tokens: 10 } }));
    expect(r.perLayerVisualTokens).toEqual(r.schedule.perLayerVisualTokens);
    expect(Math.abs(r.achievedBudget - 10)).toBeLessThanOrEqual(1);
  });

  it('sparsevlm v1 decides its counts at run time and reports what it achieved', async () => {
    const enc = await encodePixels(model, pixels, policy());
    const r = await generate(model, enc, 'what color is the circle?', greedy, policy({ language: 'sparsevlm', params: { version: 'v1', scale: 2, bias: 0 } }));
    expect(r.schedule.dataDependent).toBe(true);
    expect(r.perLayerVisualTokens[0]).toBe(16);
    expect(Math.min(...r.perLayerVisualTokens)).toBeLessThan(16); // it pruned
    expect(r.achievedBudget).toBeCloseTo(r.perLayerVisualTokens.reduce((a, b) => a + b, 0) / r.perLayerVisualTokens.length, 9);
  });
});

describe.each(['clean', 'exact'] as const)('ficoco-vl (%s)', (mode) => {
  it('splits one budget between the encoder and the decoder and reaches it', async () => {
    const p = policy({ vision: 'ficoco-v', language: 'ficoco-l', mode, budget: { percent: 50 } });
    const enc = await encodePixels(model, pixels, p);
    const split = enc.schedule.params['budget_vision_tokens'];
    expect(enc.embeds.dims[0]).toBe(split);
    expect(split).toBeGreaterThan(8);
    const r = await generate(model, enc, 'what color is the circle?', greedy, p);
    expect(r.schedule.params['budget_vision_tokens']).toBe(split);
    expect(Math.abs(r.achievedBudget - 8)).toBeLessThanOrEqual(1);
  });
});
