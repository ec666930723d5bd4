/**
 * The Python bundle writer and onnxruntime-node agree: every graph of the random test bundles declares
 * what its manifest says and computes what the independent torch reference
 * (tools/bundle/reference_torch.py) computed. `random-bundle` (float32 io, weights shared through
 * layer_NN.data) must match within 1e-4 of each output's largest magnitude; `random-bundle-f16`
 * (float16 io, embedded weights) within the float16 tolerance the reference file states.
 * Regenerate both with `python3 -m tools.bundle.make_random`.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

import { ort } from '../shared/onnx/ort';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const FIXTURES = join(__dirname, 'fixtures');

type Dtype = 'float32' | 'float16' | 'int64';
interface TensorDecl {
  name: string;
  dtype: Dtype;
  shape: (number | string)[];
}
interface GraphDecl {
  path: string;
  inputs: TensorDecl[];
  outputs: TensorDecl[];
  external_data?: string[];
}
interface Manifest {
  content_hash: string;
  io_dtype: 'float32' | 'float16';
  graphs: Record<string, GraphDecl>;
  files: { path: string; bytes: number; sha256: string }[];
  prompt: { template: string; image_token: string };
}
interface RefTensor {
  dtype: 'float32' | 'int64';
  shape: number[];
  data: string;
}
interface RefCase {
  stage: string;
  label: string;
  inputs: Record<string, string>;
  outputs: Record<string, string>;
}
interface Reference {
  bundles: Record<string, { content_hash: string; io_dtype: string; tolerance: number }>;
  prompt: { question: string; prefix: string; suffix: string; prefix_ids: number[]; suffix_ids: number[] };
  cases: RefCase[];
  tensors: Record<string, RefTensor>;
}

const reference = JSON.parse(readFileSync(join(FIXTURES, 'random-bundle-reference.json'), 'utf8')) as Reference;
const readManifest = (bundle: string) =>
  JSON.parse(readFileSync(join(FIXTURES, bundle, 'manifest.json'), 'utf8')) as Manifest;

// ---------------------------------------------------------------------------------------------------
// float16 <-> float32 (Node 20 has no Float16Array; onnxruntime-node carries float16 as Uint16Array)

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Round-to-nearest-even float32 -> float16 bits (finite inputs of a test's range). */
function toHalf(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 127 + 15;
  let mant = x & 0x7fffff;
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - exp;
    const rest = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    let h = mant >>> shift;
    if (rest > halfway || (rest === halfway && h & 1)) h++;
    return sign | h;
  }
  let h = (exp << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // a carry into the exponent is still correct
  return sign | h;
}

function fromHalf(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// ---------------------------------------------------------------------------------------------------

function decode(t: RefTensor): Float32Array | BigInt64Array {
  const bytes = Buffer.from(t.data, 'base64');
  // A fresh ArrayBuffer: Buffer.from may return an unaligned slice of a shared pool.
  const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  return t.dtype === 'int64' ? new BigInt64Array(buf) : new Float32Array(buf);
}

/** A reference tensor as the graph input `decl` wants it (float32 reference data may become float16). */
function feed(t: RefTensor, decl: TensorDecl): ort.Tensor {
  const data = decode(t);
  if (decl.dtype === 'int64') return new ort.Tensor('int64', data as BigInt64Array, t.shape);
  if (decl.dtype === 'float16') return new ort.Tensor('float16', Uint16Array.from(data as Float32Array, toHalf), t.shape);
  return new ort.Tensor('float32', data as Float32Array, t.shape);
}

function asFloat32(t: ort.Tensor): Float32Array {
  if (t.type === 'float16') return Float32Array.from(t.data as Uint16Array, fromHalf);
  if (t.type !== 'float32') throw new Error(`expected a float tensor, got ${t.type}`);
  return t.data as Float32Array;
}

/** max |a - b| and max |ref|. */
function deviation(actual: Float32Array, expected: Float32Array): { maxDiff: number; maxRef: number } {
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < expected.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(actual[i] - expected[i]));
    maxRef = Math.max(maxRef, Math.abs(expected[i]));
  }
  return { maxDiff, maxRef };
}

function filesUnder(root: string, dir = root): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(root, path) : [relative(root, path).split(sep).join('/')];
  });
}

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

async function openSessions(bundle: string, manifest: Manifest): Promise<Map<string, ort.InferenceSession>> {
  const sessions = new Map<string, ort.InferenceSession>();
  for (const [stage, graph] of Object.entries(manifest.graphs)) {
    sessions.set(stage, await ort.InferenceSession.create(join(FIXTURES, bundle, graph.path), { intraOpNumThreads: 1 }));
  }
  return sessions;
}

// ---------------------------------------------------------------------------------------------------

describe.each(Object.keys(reference.bundles))('%s', (bundle) => {
  const expected = reference.bundles[bundle];
  const manifest = readManifest(bundle);
  let sessions = new Map<string, ort.InferenceSession>();

  beforeAll(async () => {
    sessions = await openSessions(bundle, manifest);
  });
  afterAll(async () => {
    await Promise.all([...sessions.values()].map((s) => s.release()));
  });

  it('lists every file but manifest.json, with its size and sha256', () => {
    const root = join(FIXTURES, bundle);
    const onDisk = filesUnder(root).filter((p) => p !== 'manifest.json').sort();
    expect(manifest.files.map((f) => f.path)).toEqual(onDisk);
    for (const f of manifest.files) {
      const data = readFileSync(join(root, f.path));
      expect({ path: f.path, bytes: data.length, sha256: sha256(data) }).toEqual(f);
    }
    expect(manifest.files.reduce((sum, f) => sum + f.bytes, 0)).toBeLessThan(1 << 20);
  });

  it('has a content_hash over the path-sorted "<path>\\t<sha256>\\n" lines, the one the reference was made with', () => {
    const lines = [...manifest.files]
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
      .map((f) => `${f.path}\t${f.sha256}\n`)
      .join('');
    expect(manifest.content_hash).toBe(`sha256:${sha256(lines)}`);
    expect(manifest.content_hash).toBe(expected.content_hash);
    expect(manifest.io_dtype).toBe(expected.io_dtype);
  });

  it('declares in each graph exactly the inputs and outputs (names, dtypes, shapes) of the manifest', () => {
    const describeValues = (meta: readonly ort.InferenceSession.ValueMetadata[]) =>
      meta.map((m) => (m.isTensor ? { name: m.name, dtype: m.type, shape: [...m.shape] } : { name: m.name }));
    for (const [stage, graph] of Object.entries(manifest.graphs)) {
      const session = sessions.get(stage)!;
      expect({ stage, inputs: describeValues(session.inputMetadata) }).toEqual({ stage, inputs: graph.inputs });
      expect({ stage, outputs: describeValues(session.outputMetadata) }).toEqual({ stage, outputs: graph.outputs });
    }
  });

  it('has a reference case for every stage', () => {
    const covered = new Set(reference.cases.map((c) => c.stage));
    expect(Object.keys(manifest.graphs).filter((s) => !covered.has(s))).toEqual([]);
  });

  it.each(reference.cases.map((c) => [`${c.stage} (${c.label})`, c] as const))('%s matches the torch reference', async (_, c) => {
    const graph = manifest.graphs[c.stage];
    const feeds = Object.fromEntries(
      graph.inputs.map((decl) => [decl.name, feed(reference.tensors[c.inputs[decl.name]], decl)]),
    );
    const results = await sessions.get(c.stage)!.run(feeds);
    for (const [name, id] of Object.entries(c.outputs)) {
      const want = reference.tensors[id];
      expect({ output: name, dims: [...results[name].dims] }).toEqual({ output: name, dims: want.shape });
      const { maxDiff, maxRef } = deviation(asFloat32(results[name]), decode(want) as Float32Array);
      expect(maxRef, `${name}: the reference is not all zeros`).toBeGreaterThan(0);
      expect(maxDiff, `${c.stage}:${name} max|a-b| (max|ref| = ${maxRef})`).toBeLessThanOrEqual(expected.tolerance * maxRef);
    }
  });
});

describe('random-bundle attention semantics, read off onnxruntime outputs', () => {
  const bundle = 'random-bundle';
  const manifest = readManifest(bundle);
  let sessions = new Map<string, ort.InferenceSession>();
  beforeAll(async () => {
    sessions = await openSessions(bundle, manifest);
  });
  afterAll(async () => {
    await Promise.all([...sessions.values()].map((s) => s.release()));
  });

  const caseOf = (stage: string, labelPart: string) =>
    reference.cases.find((c) => c.stage === stage && c.label.includes(labelPart))!;
  const runCase = async (c: RefCase) => {
    const graph = manifest.graphs[c.stage];
    const feeds = Object.fromEntries(graph.inputs.map((d) => [d.name, feed(reference.tensors[c.inputs[d.name]], d)]));
    return sessions.get(c.stage)!.run(feeds);
  };

  it('gives prefill probs no weight on future keys, rows summing to 1, while scores stay unmasked', async () => {
    const out = await runCase(caseOf('language/layer_01.scores', 'prefill'));
    const [, t, l] = out.probs.dims;
    const probs = out.probs.data as Float32Array;
    const scores = out.scores.data as Float32Array;
    for (let q = 0; q < t; q++) {
      let sum = 0;
      for (let j = 0; j < l; j++) {
        sum += probs[q * l + j];
        if (j > q) expect(probs[q * l + j]).toBe(0);
      }
      expect(sum).toBeCloseTo(1, 5);
    }
    expect(scores[0 * l + (l - 1)]).not.toBe(0); // row 0 still scores the last (future) key
  });

  it('gives a decode step no weight on a key whose attention_mask is 0', async () => {
    const c = caseOf('language/layer_00.scores', 'masked');
    const masked = Number(/key (\d+) masked/.exec(c.label)![1]);
    const mask = decode(reference.tensors[c.inputs.attention_mask]) as BigInt64Array;
    expect(mask[masked]).toBe(0n);
    const out = await runCase(c);
    expect((out.probs.data as Float32Array)[masked]).toBe(0);
    expect((out.scores.data as Float32Array)[masked]).not.toBe(0);
  });

  it('treats batch rows independently (dynamic B)', async () => {
    const c = caseOf('vision/layer_01.attn', 'log-size');
    const h = reference.tensors[c.inputs.hidden_in];
    const bias = reference.tensors[c.inputs.attn_bias];
    const hData = decode(h) as Float32Array;
    const biasData = decode(bias) as Float32Array;
    const [, t, d] = h.shape;
    // Row 0: the reference input; row 1: the same tokens reversed with a zero bias.
    const h2 = new Float32Array(2 * t * d);
    h2.set(hData);
    for (let i = 0; i < t; i++) h2.set(hData.subarray((t - 1 - i) * d, (t - i) * d), (t + i) * d);
    const bias2 = new Float32Array(2 * t);
    bias2.set(biasData);
    const session = sessions.get(c.stage)!;
    const both = await session.run({
      hidden_in: new ort.Tensor('float32', h2, [2, t, d]),
      attn_bias: new ort.Tensor('float32', bias2, [2, t]),
    });
    const first = await session.run({
      hidden_in: new ort.Tensor('float32', hData, [1, t, d]),
      attn_bias: new ort.Tensor('float32', biasData, [1, t]),
    });
    const second = await session.run({
      hidden_in: new ort.Tensor('float32', h2.slice(t * d), [1, t, d]),
      attn_bias: new ort.Tensor('float32', new Float32Array(t), [1, t]),
    });
    const all = both.hidden_out.data as Float32Array;
    expect(deviation(all.subarray(0, t * d), first.hidden_out.data as Float32Array).maxDiff).toBeLessThan(1e-5);
    expect(deviation(all.subarray(t * d), second.hidden_out.data as Float32Array).maxDiff).toBeLessThan(1e-5);
  });
});

describe('random bundle tokenizer', () => {
  it('encodes the prompt parts to the ids the Python encoder produced, without [UNK]', async () => {
    const manifest = readManifest('random-bundle');
    const { Tokenizer } = await import('@huggingface/tokenizers');
    const tokenizer = new Tokenizer(JSON.parse(readFileSync(join(FIXTURES, 'random-bundle', 'tokenizer.json'), 'utf8')), {});
    const [prefix, suffixTemplate] = manifest.prompt.template.split(manifest.prompt.image_token);
    const suffix = suffixTemplate.replace('{question}', reference.prompt.question);
    expect([prefix, suffix]).toEqual([reference.prompt.prefix, reference.prompt.suffix]);
    const encode = (text: string) => tokenizer.encode(text, { add_special_tokens: false }).ids;
    expect(encode(prefix)).toEqual(reference.prompt.prefix_ids);
    expect(encode(suffix)).toEqual(reference.prompt.suffix_ids);
    expect(reference.prompt.prefix_ids.length).toBeGreaterThan(0);
    expect([...reference.prompt.prefix_ids, ...reference.prompt.suffix_ids]).not.toContain(tokenizer.token_to_id('[UNK]'));
    expect(['[PAD]', '[UNK]', '<s>', '</s>', '<image>'].map((t) => tokenizer.token_to_id(t))).toEqual([0, 1, 2, 3, 4]);
  });
});
