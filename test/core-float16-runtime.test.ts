/**
 * Runtimes with a Float16Array global (Node 24, the images' runtime) make onnxruntime-common hand
 * float16 tensors to onnxruntime-node 1.29's binding as Float16Arrays, which it reads as 0 bytes: every
 * float16 bundle then fails at its first graph. shared/onnx/ort keeps float16 data as Uint16Array bits
 * there too. Each case runs in a fresh process (the array type is chosen once per thread), with a
 * stand-in for the global where the runtime has none (Node 20), or the real one on Node 24.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { disposeModel, encodeImage, generate } from '../shared/engine';
import { loadTestModel, policy } from './core-helpers';

const ROOT = path.resolve(__dirname, '..');
/** A language method that reads float16 scores and rebuilds the float16 residual stream. */
const FICOCO_L_HALF = policy({ language: 'ficoco-l', budget: { percent: 50 } });

/** Runs `body` in a new Node process (TypeScript through tsx) after giving it a Float16Array global; its stdout JSON. */
function inFreshProcess(body: string): { out: Record<string, unknown> | null; stderr: string } {
  const script = `
    if (typeof globalThis.Float16Array === 'undefined') {
      // What onnxruntime-common looks for: a constructor with from(). A Uint16Array underneath, so
      // that only the array type, not the binding's reading of it, tells the cases apart.
      globalThis.Float16Array = class Float16Array extends Uint16Array {};
    }
    const theGlobal = globalThis.Float16Array;
    (async () => { ${body} })().then((out) => console.log(JSON.stringify(out)), (err) => { console.error(err.message); process.exit(1); });
  `;
  const r = spawnSync(process.execPath, ['--require', require.resolve('tsx/cjs'), '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  return { out: r.status === 0 && line ? (JSON.parse(line) as Record<string, unknown>) : null, stderr: r.stderr };
}

describe('float16 tensors on a runtime with Float16Array', () => {
  let inThisProcess: readonly number[] = [];
  beforeAll(async () => {
    const model = await loadTestModel({ dir: path.join(ROOT, 'test/fixtures/random-bundle-f16') });
    const image = await sharp({ create: { width: 40, height: 32, channels: 3, background: { r: 200, g: 60, b: 90 } } }).png().toBuffer();
    const p = FICOCO_L_HALF;
    const enc = await encodeImage(model, image, p);
    inThisProcess = (await generate(model, enc, 'what color is the small circle?', { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 6 }, p)).tokenIds;
    await disposeModel(model);
  });

  it('stay Uint16Array bits both ways through ORT imported from shared/onnx/ort, give the answer they give without the global, and leave the global as it was', () => {
    const { out, stderr } = inFreshProcess(`
      const { ort } = require('./shared/onnx/ort');
      const input = new ort.Tensor('float16', new Uint16Array([0x3c00, 0xc000]), [2]);
      // A float16 bundle end to end: every float16 input reaches the binding, every output comes back.
      const { testConfig } = require('./shared/config');
      const { loadModel, encodeImage, generate, disposeModel } = require('./shared/engine');
      const sharp = require('sharp');
      const config = testConfig({ model: { dir: 'test/fixtures/random-bundle-f16' } });
      const model = await loadModel({ model: config.model, runtime: config.runtime, limits: config.limits });
      const image = await sharp({ create: { width: 40, height: 32, channels: 3, background: { r: 200, g: 60, b: 90 } } }).png().toBuffer();
      const p = ${JSON.stringify(FICOCO_L_HALF)};
      const enc = await encodeImage(model, image, p);
      const answer = await generate(model, enc, 'what color is the small circle?', { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 6 }, p);
      await disposeModel(model);
      return { input: input.data.constructor.name, bits: Array.from(input.data), embeds: enc.embeds.data.constructor.name, tokens: answer.tokenIds, restored: globalThis.Float16Array === theGlobal };
    `);
    expect(stderr).not.toMatch(/not enough space/);
    expect(out).toEqual({ input: 'Uint16Array', bits: [0x3c00, 0xc000], embeds: 'Uint16Array', tokens: expect.any(Array), restored: true });
    expect(out!.tokens).toEqual(inThisProcess);
  }, 90_000);

  it('is refused with a clear error at start, not at the first float16 graph, if ORT made a tensor before shared/onnx/ort loaded', () => {
    const { out, stderr } = inFreshProcess(`
      const direct = require('onnxruntime-node');
      new direct.Tensor('float32', new Float32Array(1), [1]);
      require('./shared/onnx/ort');
      return { loaded: true };
    `);
    expect(out).toBeNull();
    expect(stderr).toMatch(/onnxruntime-common keeps float16 data as Float16Array, which onnxruntime-node's binding reads as empty: import ORT through shared\/onnx\/ort before anything makes a tensor/);
  }, 60_000);
});
