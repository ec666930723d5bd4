/**
 * The Python bundle writer and onnxruntime-node agree: every graph of test/fixtures/random-bundle
 * declares what the manifest says and computes what the independent torch reference
 * (tools/bundle/reference_torch.py) computed, within 1e-4 of the reference's largest magnitude.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const BUNDLE = join(__dirname, 'fixtures', 'random-bundle');
const REFERENCE = join(__dirname, 'fixtures', 'random-bundle-reference.json');

interface TensorDecl {
  name: string;
  dtype: 'float32' | 'float16' | 'int64';
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
  content_hash: string;
  tolerance: { relative_to_max_abs: number };
  prompt: { question: string; prefix: string; suffix: string; prefix_ids: number[]; suffix_ids: number[] };
  cases: RefCase[];
  tensors: Record<string, RefTensor>;
}

const manifest = JSON.parse(readFileSync(join(BUNDLE, 'manifest.json'), 'utf8')) as Manifest;
const reference = JSON.parse(readFileSync(REFERENCE, 'utf8')) as Reference;

function toOrt(t: RefTensor): ort.Tensor {
  const bytes = Buffer.from(t.data, 'base64');
  // Copy into a fresh, aligned ArrayBuffer: Buffer.from may hand back a slice of a shared pool.
  const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  return t.dtype === 'int64'
    ? new ort.Tensor('int64', new BigInt64Array(buf), t.shape)
    : new ort.Tensor('float32', new Float32Array(buf), t.shape);
}

/** max |a - b| and max |ref|, over float32 data of equal length. */
function deviation(actual: Float32Array, expected: Float32Array): { maxDiff: number; maxRef: number } {
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < expected.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(actual[i] - expected[i]));
    maxRef = Math.max(maxRef, Math.abs(expected[i]));
  }
  return { maxDiff, maxRef };
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [relative(BUNDLE, path).split(sep).join('/')];
  });
}

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

describe('random bundle files', () => {
  it('lists every file but manifest.json, with its size and sha256', () => {
    const onDisk = filesUnder(BUNDLE).filter((p) => p !== 'manifest.json').sort();
    expect(manifest.files.map((f) => f.path)).toEqual(onDisk);
    for (const f of manifest.files) {
      const data = readFileSync(join(BUNDLE, f.path));
      expect({ path: f.path, bytes: data.length, sha256: sha256(data) }).toEqual(f);
    }
  });

  it('has a content_hash over the sorted "<path>\\t<sha256>\\n" lines, matching the reference', () => {
    const lines = [...manifest.files]
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
      .map((f) => `${f.path}\t${f.sha256}\n`)
      .join('');
    expect(manifest.content_hash).toBe(`sha256:${sha256(lines)}`);
    expect(reference.content_hash).toBe(manifest.content_hash);
  });

  it('stays small enough for the repository', () => {
    const total = manifest.files.reduce((sum, f) => sum + f.bytes, 0);
    expect(total).toBeLessThan(1 << 20);
  });
});

describe('random bundle tokenizer', () => {
  it('encodes the prompt parts to the ids the Python encoder produced', async () => {
    const { Tokenizer } = await import('@huggingface/tokenizers');
    const tokenizer = new Tokenizer(JSON.parse(readFileSync(join(BUNDLE, 'tokenizer.json'), 'utf8')), {});
    const [prefix, suffixTemplate] = manifest.prompt.template.split(manifest.prompt.image_token);
    const suffix = suffixTemplate.replace('{question}', reference.prompt.question);
    expect([prefix, suffix]).toEqual([reference.prompt.prefix, reference.prompt.suffix]);
    const encode = (text: string) => tokenizer.encode(text, { add_special_tokens: false }).ids;
    expect(encode(prefix)).toEqual(reference.prompt.prefix_ids);
    expect(encode(suffix)).toEqual(reference.prompt.suffix_ids);
    expect(reference.prompt.prefix_ids.length).toBeGreaterThan(0);
    expect(reference.prompt.suffix_ids).not.toContain(tokenizer.token_to_id('[UNK]'));
  });
});

describe('random bundle graphs in onnxruntime-node', () => {
  const sessions = new Map<string, ort.InferenceSession>();

  beforeAll(async () => {
    for (const [stage, graph] of Object.entries(manifest.graphs)) {
      sessions.set(stage, await ort.InferenceSession.create(join(BUNDLE, graph.path), { intraOpNumThreads: 1 }));
    }
  });
  afterAll(async () => {
    await Promise.all([...sessions.values()].map((s) => s.release()));
  });

  it('declares exactly the inputs and outputs (names, dtypes, shapes) the manifest lists', () => {
    for (const [stage, graph] of Object.entries(manifest.graphs)) {
      const session = sessions.get(stage)!;
      const describe = (meta: readonly ort.InferenceSession.ValueMetadata[]) =>
        meta.map((m) => (m.isTensor ? { name: m.name, dtype: m.type, shape: [...m.shape] } : { name: m.name }));
      expect({ stage, inputs: describe(session.inputMetadata) }).toEqual({ stage, inputs: graph.inputs });
      expect({ stage, outputs: describe(session.outputMetadata) }).toEqual({ stage, outputs: graph.outputs });
    }
  });

  it('has a reference case for every stage', () => {
    const covered = new Set(reference.cases.map((c) => c.stage));
    expect([...Object.keys(manifest.graphs)].filter((s) => !covered.has(s))).toEqual([]);
  });

  it.each(reference.cases.map((c) => [`${c.stage} (${c.label})`, c] as const))('%s matches the torch reference', async (_, c) => {
    const session = sessions.get(c.stage)!;
    const feeds = Object.fromEntries(Object.entries(c.inputs).map(([name, id]) => [name, toOrt(reference.tensors[id])]));
    const results = await session.run(feeds);
    for (const [name, id] of Object.entries(c.outputs)) {
      const expected = reference.tensors[id];
      const actual = results[name];
      expect({ output: name, dims: [...actual.dims] }).toEqual({ output: name, dims: expected.shape });
      const { maxDiff, maxRef } = deviation(actual.data as Float32Array, toOrt(expected).data as Float32Array);
      expect(Number.isFinite(maxDiff), `${name} is finite`).toBe(true);
      expect(maxDiff, `${c.stage}:${name} max|a-b| vs max|ref| ${maxRef}`).toBeLessThanOrEqual(
        reference.tolerance.relative_to_max_abs * maxRef,
      );
    }
  });
});
