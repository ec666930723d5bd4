/**
 * An answer that ends at its first token (the model's first choice is a stop token): the stream
 * carries no delta and exactly one final, with finish reason stop, no generated token, and a time to
 * first token. The random-weight bundle never chooses its stop token, so a copy of it names the token
 * it does choose first as a stop token; its graphs, and so its content hash, are the same.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import type { RunningService } from '../services/common/lifecycle';
import { FinishReason, LanguageServiceClient, type GenerateResponse } from '../gen/vlm/v1/language_service';
import { InferencePool } from '../shared/worker';
import { pairConfig, request, shapesImage } from './reliability-helpers';
import { policy } from './core-helpers';
import { collect } from './service-helpers';

const RANDOM_BUNDLE = path.resolve(__dirname, 'fixtures/random-bundle');

describe('an answer that is only a stop token', () => {
  let dir: string;
  let vision: RunningService;
  let language: RunningService;
  let client: LanguageServiceClient;

  beforeAll(async () => {
    // The token the random model answers this request with first, from the same bundle in one process.
    const config = pairConfig({});
    const pool = await InferencePool.start({ model: config.model, runtime: config.runtime, limits: config.limits });
    let firstId: number;
    try {
      const first = await pool.ask(await shapesImage(), 'what color is the circle?', { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 1 }, policy());
      firstId = first.generate.tokenIds[0]!;
    } finally {
      await pool.close();
    }

    dir = await mkdtemp(path.join(tmpdir(), 'vlm-stop-first-'));
    await cp(RANDOM_BUNDLE, dir, { recursive: true });
    const manifest = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as { tokens: { stop_ids: number[] } };
    manifest.tokens.stop_ids = [...manifest.tokens.stop_ids, firstId];
    await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));

    const base = pairConfig({});
    const onCopy = { ...base, model: { ...base.model, dir } };
    vision = await startVisionService(onCopy, { port: 0 });
    language = await startLanguageService({ ...onCopy, rpc: { ...onCopy.rpc, visionTarget: vision.address } }, { port: 0 });
    client = new LanguageServiceClient(language.address, credentials.createInsecure());
  });
  afterAll(async () => {
    client?.close();
    await language?.stop();
    await vision?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('streams no delta and one final: stop, 0 generated, empty text, a time to first token', async () => {
    const { messages, error } = await collect<GenerateResponse>(client.generate(request(await shapesImage(), { prompt: 'what color is the circle?', maxTokens: 8 })));
    expect(error).toBeNull();
    expect(messages.map((m) => m.part?.$case)).toEqual(['final']);
    const final = messages[0]!.part?.$case === 'final' ? messages[0]!.part.final : undefined;
    expect(final).toMatchObject({ text: '', finishReason: FinishReason.FINISH_REASON_STOP, tokens: { generated: 0 } });
    expect(final!.timingsMs['first_token']).toBeGreaterThan(0);
    expect(final!.timingsMs['first_token']).toBeLessThanOrEqual(final!.timingsMs['total']!);
  });
});
