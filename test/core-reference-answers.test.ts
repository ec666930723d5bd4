/**
 * Greedy answers of the TypeScript engine, unreduced, identical to the Python reference on every
 * committed eval item of the embedded default model (reference-answers.jsonl, written by
 * tools/model/parity.py, whose ONNX answers it checked equal to PyTorch's), and the prompt token ids
 * of every eval question identical to Python `tokenizers` (eval-token-ids.json).
 *
 * The items run through an InferencePool (one worker per CI core): each image is encoded once and
 * its questions generated from the same visual tokens. Runs once the model and the reference files
 * exist; until then it reports itself skipped.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testConfig } from '../shared/config';
import { loadTokenizer, assemblePrompt } from '../shared/tokenizer';
import type { Manifest } from '../shared/bundle/manifest';
import { InferencePool } from '../shared/worker';
import type { EncodeResult } from '../shared/engine';
import { policy, ROOT } from './core-helpers';

const MODEL_DIR = path.join(ROOT, 'models/tiny-llava-shapes');
const CANDIDATES = [path.join(ROOT, 'test/fixtures/golden'), path.join(MODEL_DIR, 'eval'), path.join(ROOT, 'test/fixtures/tiny-llava-shapes')];
const find = (name: string) => CANDIDATES.map((d) => path.join(d, name)).find((f) => existsSync(f));
const ANSWERS = find('reference-answers.jsonl');
const TOKEN_IDS = find('eval-token-ids.json');
const modelPresent = existsSync(path.join(MODEL_DIR, 'manifest.json'));

interface RefAnswer {
  image: string;
  question: string;
  type: string;
  gold: string;
  answer: string;
  ids: number[];
}

describe.runIf(modelPresent && TOKEN_IDS !== undefined)('tokenizer parity with Python tokenizers on every eval question', () => {
  it('prefix and suffix ids are identical', async () => {
    const doc = JSON.parse(readFileSync(TOKEN_IDS!, 'utf8')) as { items: { question: string; prefix_ids: number[]; suffix_ids: number[] }[] };
    const manifest = JSON.parse(readFileSync(path.join(MODEL_DIR, 'manifest.json'), 'utf8')) as Manifest;
    const tok = await loadTokenizer(path.join(MODEL_DIR, 'tokenizer.json'));
    const mismatches: string[] = [];
    for (const it of doc.items) {
      const p = assemblePrompt(tok, manifest.prompt, manifest.tokens, it.question, { maxPromptChars: 4096 });
      const prefix = manifest.prompt.add_bos ? p.prefix.slice(1) : p.prefix;
      if (JSON.stringify(prefix) !== JSON.stringify(it.prefix_ids) || JSON.stringify(p.suffix) !== JSON.stringify(it.suffix_ids)) mismatches.push(it.question);
    }
    expect(doc.items.length).toBeGreaterThan(0);
    expect(mismatches).toEqual([]);
  });
});

describe.runIf(modelPresent && ANSWERS !== undefined)('greedy answers identical to the Python reference on every committed item', () => {
  let pool: InferencePool;
  beforeAll(async () => {
    const config = testConfig({ model: { dir: MODEL_DIR }, runtime: { workers: 2, intraOpThreads: 1 }, limits: { queueSize: 4096 } });
    pool = await InferencePool.start(config);
  });
  afterAll(() => pool?.close());

  it('every item', { timeout: 900_000 }, async () => {
    const refs = readFileSync(ANSWERS!, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as RefAnswer);
    const items = readFileSync(path.join(MODEL_DIR, 'eval/items.jsonl'), 'utf8').split('\n').filter(Boolean);
    expect(refs.length, 'one reference answer per committed item').toBe(items.length);
    const sampling = { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: pool.manifest.generation.max_new_tokens };
    const stops = new Set(pool.manifest.tokens.stop_ids);
    const encoded = new Map<string, Promise<EncodeResult>>();
    const encode = (image: string) => {
      let e = encoded.get(image);
      if (!e) {
        e = pool.encode(readFileSync(path.join(MODEL_DIR, 'eval', image)), policy());
        encoded.set(image, e);
      }
      return e;
    };
    const differences: string[] = [];
    let correct = 0;
    await Promise.all(
      refs.map(async (ref) => {
        const r = await pool.generate(await encode(ref.image), ref.question, sampling, policy());
        const refTokens = ref.ids.filter((id) => !stops.has(id));
        if (r.text.trim() !== ref.answer || JSON.stringify(r.tokenIds) !== JSON.stringify(refTokens)) {
          differences.push(`${ref.image} "${ref.question}": engine "${r.text.trim()}" ${JSON.stringify(r.tokenIds)}, reference "${ref.answer}" ${JSON.stringify(ref.ids)}`);
        }
        if (r.text.trim() === ref.gold) correct++;
      }),
    );
    expect(differences).toEqual([]);
    // The accuracy the model's report states follows from identical answers; print it for the record.
    process.stderr.write(`[reference answers] ${refs.length} items identical; accuracy ${(correct / refs.length).toFixed(4)}\n`);
  });
});
