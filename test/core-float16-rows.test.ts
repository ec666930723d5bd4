/**
 * The projected visual tokens of a float16 bundle stay float16 bits from the projector to the
 * decoder's first layer: nothing on the way widens them to float32 and back, and the answers are the
 * bits the float32 detour gave. In process here; over the hop in test/service-pair.test.ts (a
 * float16 bundle on both sides).
 */
import * as path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { disposeModel, encodeImage, generate, type LoadedModel } from '../shared/engine';
import type { ReductionPolicy } from '../shared/methods/policy';
import { concatRows, floatRows, rowsFloat32, rowsIn, sliceRows } from '../shared/tensor/float-rows';
import { toFloat16 } from '../shared/tensor/fp16';
import type { F32Tensor } from '../shared/tensor/host-tensor';
import { failure, loadTestModel, policy, RANDOM_BUNDLE, ROOT } from './core-helpers';

let f16: LoadedModel;
let f32: LoadedModel;
let image: Buffer;

beforeAll(async () => {
  f16 = await loadTestModel({ dir: path.join(ROOT, 'test/fixtures/random-bundle-f16') });
  f32 = await loadTestModel({ dir: RANDOM_BUNDLE });
  image = await sharp({ create: { width: 40, height: 32, channels: 3, background: { r: 200, g: 60, b: 90 } } }).png().toBuffer();
});
afterAll(async () => {
  await disposeModel(f16);
  await disposeModel(f32);
});

const greedy = { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 6 };

describe('float16 visual tokens', () => {
  it('leave the projector as float16 bits on a float16 bundle, and as float32 values on a float32 one', async () => {
    const taps = new Map<string, Float32Array>();
    const tap = (key: string, t: F32Tensor) => taps.set(key, t.data.slice());
    const enc = await encodeImage(f16, image, policy(), { tap });
    expect(enc.embeds.dtype).toBe('float16');
    expect(enc.embeds.data).toBeInstanceOf(Uint16Array);
    expect(rowsFloat32(enc.embeds)).toEqual(taps.get('vision/projector:embeds'));
    const plain = await encodeImage(f32, image, policy());
    expect(plain.embeds.dtype).toBe('float32');
    expect(plain.embeds.data).toBeInstanceOf(Float32Array);
  });

  it.each<[string, ReductionPolicy]>([
    ['unreduced', policy()],
    ['sparsevlm at 50% (its raters read the prompt embeddings)', policy({ language: 'sparsevlm', budget: { percent: 50 } })],
    ['ficoco-l at 50%', policy({ language: 'ficoco-l', budget: { percent: 50 } })],
  ])('give the same answer, logits and decoder input as the same rows widened to float32 (%s)', async (_name, p) => {
    const enc = await encodeImage(f16, image, p);
    const run = async (embeds: typeof enc.embeds) => {
      const logits: Float32Array[] = [];
      let input: Float32Array | undefined;
      const tap = (key: string, t: F32Tensor) => {
        if (key === 'language/head:logits') logits.push(t.data.slice());
        if (key === 'language/input:embeds') input = t.data.slice();
      };
      const result = await generate(f16, { embeds, origin: enc.origin }, 'what color is the small circle?', greedy, p, { tap });
      return { tokens: result.tokenIds, perLayer: result.perLayerVisualTokens, logits, input };
    };
    const bits = await run(enc.embeds);
    const widened = await run(floatRows(enc.embeds.dims, 'float32', rowsFloat32(enc.embeds)));
    expect(bits.tokens.length).toBeGreaterThan(0);
    expect(bits).toEqual(widened);
  });
});

describe('FloatRows', () => {
  const a = floatRows([2, 2], 'float32', Float32Array.of(1, 2.5, -3, 65504));
  it('converts only across dtypes, exactly for values float16 holds', () => {
    expect(rowsIn(a, 'float32')).toBe(a);
    const h = rowsIn(a, 'float16');
    expect(h.dtype).toBe('float16');
    expect(h.data).toEqual(toFloat16(a.data as Float32Array));
    expect(rowsFloat32(rowsIn(h, 'float32'))).toEqual(a.data);
  });

  it('stacks and slices blocks of one dtype and width, and refuses to mix them', async () => {
    const b = floatRows([1, 2], 'float32', Float32Array.of(7, 8));
    const ab = concatRows([a, b]);
    expect(ab.dims).toEqual([3, 2]);
    expect(Array.from(ab.data)).toEqual([1, 2.5, -3, 65504, 7, 8]);
    expect(Array.from(sliceRows(ab, 1, 2).data)).toEqual([-3, 65504, 7, 8]);
    expect((await failure(Promise.resolve().then(() => concatRows([a, rowsIn(b, 'float16')])))).message).toMatch(/float16\[1, 2\] beside float32\[2, 2\]/);
    expect((await failure(Promise.resolve().then(() => concatRows([a, floatRows([1, 3], 'float32', new Float32Array(3))])))).message).toMatch(/float32\[1, 3\] beside/);
    expect(() => floatRows([2, 3], 'float32', new Float32Array(5))).toThrow(/rows \[2, 3\] do not match 5 values/);
    // the dtype is stated, never guessed from the array: values are not taken for bits or the reverse
    expect(() => floatRows([1, 2], 'float16', Float32Array.of(1, 2))).toThrow('float16 rows given as Float32Array');
    expect(() => floatRows([1, 2], 'float32', Uint16Array.of(1, 2))).toThrow('float32 rows given as Uint16Array');
    expect(() => floatRows([1, 2], 'float16', Int16Array.of(1, 2) as unknown as Uint16Array)).toThrow('float16 rows given as Int16Array');
  });
});
