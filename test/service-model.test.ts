/**
 * The embedded model (models/tiny-llava-shapes) through both services: committed evaluation items
 * answered correctly over the hop, identical to the core's single-process answers, and a reducing
 * policy's token counts in the final stats.
 */
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { credentials, Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_MODEL, testConfig, type Config } from '../shared/config';
import { InferencePool } from '../shared/worker';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import type { RunningService } from '../services/common/lifecycle';
import { ReductionPolicy as WirePolicy, SamplingParams } from '../gen/vlm/v1/common';
import { LanguageServiceClient, type GenerateFinal, type GenerateResponse } from '../gen/vlm/v1/language_service';
import { isCorrect, readItems, selectEvenly, type EvalItem } from '../cli/eval-items';
import { collect } from './service-helpers';

const MODEL = path.resolve(__dirname, '..', DEFAULT_MODEL);

function config(visionTarget = ''): Config {
  return testConfig({ model: { dir: MODEL }, services: { host: '127.0.0.1' }, rpc: { visionTarget } });
}

describe('the embedded model through both services', () => {
  let vision: RunningService;
  let language: RunningService;
  let client: LanguageServiceClient;
  let items: Array<EvalItem & { bytes: Buffer }>;

  beforeAll(async () => {
    vision = await startVisionService(config(), { port: 0 });
    language = await startLanguageService(config(vision.address), { port: 0 });
    client = new LanguageServiceClient(language.address, credentials.createInsecure());
    items = await Promise.all(selectEvenly(await readItems(MODEL), 6).map(async (it) => ({ ...it, bytes: await readFile(path.join(MODEL, 'eval', it.image)) })));
  });

  afterAll(async () => {
    client?.close();
    await language?.stop();
    await vision?.stop();
  });

  async function answer(item: { bytes: Buffer; question: string }, policy?: Partial<WirePolicy>): Promise<GenerateFinal> {
    const req = { image: item.bytes, prompt: item.question, sampling: SamplingParams.fromPartial({}), policy: policy ? WirePolicy.fromPartial(policy) : undefined, limits: undefined };
    const { messages, error } = await collect<GenerateResponse>(client.generate(req, new Metadata(), { deadline: Date.now() + 60_000 }));
    expect(error).toBeNull();
    const last = messages.at(-1)?.part;
    if (last?.$case !== 'final') throw new Error('no final message');
    return last.final;
  }

  it('answers committed test items correctly, exactly as the core does in one process', async () => {
    const c = config();
    const pool = await InferencePool.start({ model: c.model, runtime: c.runtime, limits: c.limits });
    try {
      expect(items).toHaveLength(6);
      let correct = 0;
      // The service's default when sampling.max_tokens is unset.
      const maxNewTokens = Math.min(pool.manifest.generation.max_new_tokens, c.limits.maxNewTokens);
      for (const item of items) {
        const final = await answer(item);
        const local = await pool.ask(item.bytes, item.question, { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens }, { vision: 'none', language: 'none', budget: null, mode: 'clean', params: {}, seed: 0 });
        expect(final.text).toBe(local.generate.text);
        if (isCorrect(final.text, item.answer)) correct++;
      }
      // The model's report puts accuracy well above 0.85; six items across types allow one miss.
      expect(correct).toBeGreaterThanOrEqual(items.length - 1);
    } finally {
      await pool.close();
    }
  });

  it("carries a reducing policy's token counts to the final stats (ficoco-v at 25%)", async () => {
    const final = await answer(items[0]!, { visionMethod: 'ficoco-v', budget: { $case: 'budgetPercent', budgetPercent: 25 } });
    const P = final.tokens!.visualFull;
    expect(final.tokens!.visualReceived).toBe(Math.round(P / 4));
    expect(final.tokens!.perLayerVisual.every((n) => n === Math.round(P / 4))).toBe(true);
    expect(final.policy?.achievedBudget).toBe(Math.round(P / 4));
  });
});
