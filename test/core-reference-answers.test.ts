/**
 * Greedy answers of the TypeScript engine, unreduced, identical to the Python reference on every
 * committed eval item of the embedded default model (reference-answers.jsonl, written by
 * tools/model/parity.py, whose ONNX answers it checked equal to PyTorch's), and the prompt token ids
 * of every eval question identical to Python `tokenizers` (eval-token-ids.json).
 *
 * The items run through an InferencePool (one worker per CI core): each image is encoded once and
 * its questions generated from the same visual tokens. From the same answers: the accuracy equals the
 * figure docs/model-report.md states, and the items `vlm eval --limit 300` selects score at least 0.85.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testConfig } from '../shared/config';
import { loadTokenizer, assemblePrompt } from '../shared/tokenizer';
import type { Manifest } from '../shared/bundle/manifest';
import { InferencePool } from '../shared/worker';
import type { EncodeResult } from '../shared/engine';
import { selectEvenly, type EvalItem } from '../cli/eval-items';
import { policy, ROOT } from './core-helpers';

const MODEL_DIR = path.join(ROOT, 'models/tiny-llava-shapes');
const ANSWERS = path.join(MODEL_DIR, 'eval/reference-answers.jsonl');
const TOKEN_IDS = path.join(ROOT, 'test/fixtures/golden/eval-token-ids.json');
const MODEL_REPORT = path.join(ROOT, 'docs/model-report.md');

interface RefAnswer {
  image: string;
  question: string;
  type: string;
  gold: string;
  answer: string;
  ids: number[];
}

describe('tokenizer parity with Python tokenizers on every eval question', () => {
  it('prefix and suffix ids are identical', async () => {
    const doc = JSON.parse(readFileSync(TOKEN_IDS, 'utf8')) as { items: { question: string; prefix_ids: number[]; suffix_ids: number[] }[] };
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

describe('greedy answers identical to the Python reference on every committed item', () => {
  let pool: InferencePool;
  beforeAll(async () => {
    const config = testConfig({ model: { dir: MODEL_DIR }, runtime: { workers: 2, intraOpThreads: 1 }, limits: { queueSize: 4096 } });
    pool = await InferencePool.start(config);
  });
  afterAll(() => pool?.close());

  it('every item', { timeout: 240_000 }, async () => {
    const refs = readFileSync(ANSWERS, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as RefAnswer);
    const items = readFileSync(path.join(MODEL_DIR, 'eval/items.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as EvalItem);
    expect(refs.map((r) => [r.image, r.question]), 'one reference answer per committed item, in order').toEqual(items.map((it) => [it.image, it.question]));
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
    const answers = await Promise.all(refs.map(async (ref) => pool.generate(await encode(ref.image), ref.question, sampling, policy())));

    const differences = refs.flatMap((ref, i) => {
      const r = answers[i]!;
      const same = r.text.trim() === ref.answer && JSON.stringify(r.tokenIds) === JSON.stringify(ref.ids.filter((id) => !stops.has(id)));
      return same ? [] : [`${ref.image} "${ref.question}": engine "${r.text.trim()}" ${JSON.stringify(r.tokenIds)}, reference "${ref.answer}" ${JSON.stringify(ref.ids)}`];
    });
    expect(differences).toEqual([]);

    // The accuracy the model report states for this test, written there when it was run.
    const stated = /identical on all (\d+)\s+items \(accuracy (0\.\d{4})\)/.exec(readFileSync(MODEL_REPORT, 'utf8'));
    expect(stated, 'docs/model-report.md states "identical on all N items (accuracy 0.xxxx)"').not.toBeNull();
    const correct = new Set(items.flatMap((it, i) => (answers[i]!.text.trim() === it.answer ? [i] : [])));
    expect([items.length, (correct.size / items.length).toFixed(4)]).toEqual([Number(stated![1]), stated![2]]);
    const indexOf = new Map(items.map((it, i) => [it, i]));
    const limited = selectEvenly(items, 300);
    const limitedAccuracy = limited.filter((it) => correct.has(indexOf.get(it)!)).length / limited.length;
    expect(limitedAccuracy).toBeGreaterThanOrEqual(0.85);
    process.stderr.write(`[reference answers] ${refs.length} identical; accuracy ${(correct.size / refs.length).toFixed(4)}; --limit 300: ${limitedAccuracy.toFixed(4)}\n`);
  });
});
