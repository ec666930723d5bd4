/**
 * A prompt too long for the model is refused before the vision hop: the language service knows the
 * visual tokens from the resolved vision schedule and counts the prompt's text tokens itself, so the
 * vision service never encodes for a request that cannot run. The violation names the proto field
 * to change: `sampling.max_tokens` when the caller set it and the prompt leaves room, else `prompt`.
 * An unset max_tokens is cut to the room left instead.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VlmError } from '../shared/errors';
import { createLogger, type Logger } from '../shared/log';
import { startInferenceBackend, type InferenceBackend } from '../services/common/inference-backend';
import type { RunningService } from '../services/common/lifecycle';
import { startVisionService } from '../services/vision/server';
import { VisionClient } from '../services/language/vision-client';
import { parseVisionTarget } from '../services/language/vision-target';
import { receiveLimit } from '../services/common/message-limits';
import { generateStream } from '../services/language/generate-stream';
import { COUNTS_WAITING_MAX, startPromptTokenCounter, type PromptTokenCounter } from '../services/language/prompt-token-counter';
import { loadTokenizer, promptTextTokens } from '../shared/tokenizer/tokenizer';
import type { ReductionPolicy as WirePolicy } from '../gen/vlm/v1/common';
import { FinishReason } from '../gen/vlm/v1/language_service';
import { BUNDLE, pairConfig, QUESTION, recordingLogger, request, ROOT, shapesImage, type LogLine } from './reliability-helpers';
import type { Manifest } from '../shared/bundle/manifest';

const config = pairConfig();
const silent: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => silent };

describe('prompt length, judged before the hop', () => {
  let vision: RunningService;
  let visionLog: LogLine[];
  let hop: VisionClient;
  let backend: InferenceBackend;
  let counter: PromptTokenCounter;
  /** The text tokens of a question's prompt, tokenized here as the engine assembles it. */
  let count: (question: string) => number;
  let image: Buffer;
  let positions: number;
  let patches: number;
  let defaultMaxTokens: number;

  beforeAll(async () => {
    visionLog = [];
    vision = await startVisionService(config, { port: 0, log: recordingLogger(visionLog, 'vision') });
    hop = new VisionClient({ target: parseVisionTarget(vision.address), authToken: null, maxRequestBytes: receiveLimit(config.limits) });
    backend = await startInferenceBackend(config, createLogger('language'), 'language');
    const m = backend.model.manifest;
    counter = await startPromptTokenCounter(BUNDLE, m, config.limits);
    const tokenizer = await loadTokenizer(path.join(BUNDLE, 'tokenizer.json'));
    count = (question) => promptTextTokens(tokenizer, m.prompt, m.tokens, question, config.limits);
    image = await shapesImage();
    positions = m.language.max_positions;
    patches = m.vision.num_patches;
    defaultMaxTokens = m.generation.max_new_tokens;
  });

  afterAll(async () => {
    await counter?.close();
    hop?.close();
    await backend?.close();
    await vision?.stop();
  });

  /** Encode calls the vision service has finished (each logs one `call` line). */
  const encodes = (): number => visionLog.filter((l) => l['msg'] === 'call' && l['method'] === '/vlm.v1.VisionService/Encode').length;

  async function generate(over: { prompt?: string; maxTokens?: number; policy?: Partial<WirePolicy> }): Promise<{ text: string; generated?: number; finish?: FinishReason; error: VlmError | null }> {
    const req = request(image, over);
    if (over.maxTokens === undefined) req.sampling = undefined;
    const ctx = { signal: new AbortController().signal, deadline: Date.now() + 30_000, requestId: 'prompt-length', caller: '', metadata: new Metadata(), log: silent };
    let text = '';
    let generated: number | undefined;
    let finish: FinishReason | undefined;
    try {
      for await (const r of generateStream({ backend, vision: hop, limits: config.limits, promptTokens: counter }, req, ctx)) {
        if (r.part?.$case === 'final') ({ text, finishReason: finish } = r.part.final), (generated = r.part.final.tokens?.generated);
      }
      return { text, generated, finish, error: null };
    } catch (err) {
      if (!(err instanceof VlmError)) throw err;
      return { text, error: err };
    }
  }

  /** A question of about `tokens` text tokens (the template's included). */
  function questionOf(tokens: number): string {
    let q = QUESTION;
    while (count(q) < tokens) q += ' and the square?';
    return q;
  }

  it("counts on its own thread exactly what the engine assembles, and refuses what the engine would refuse", async () => {
    for (const q of [QUESTION, questionOf(100), 'é'.repeat(300), `${'b'.repeat(100)} `.repeat(40)]) expect(await counter.count(q)).toBe(count(q));
    await expect(counter.count('   ')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it("keeps the service's event loop free while it counts costly prompts (100-letter words cost WordPiece ~50 ms each)", async () => {
    const costly = `${'b'.repeat(100)} `.repeat(40).slice(0, config.limits.maxPromptChars);
    let turns = 0;
    let counting = true;
    const spin = (): void => {
      turns++;
      if (counting) setImmediate(spin);
    };
    setImmediate(spin);
    await Promise.all(Array.from({ length: 8 }, () => counter.count(costly)));
    counting = false;
    // Counted here instead, the eight would have held the loop for all their time: a turn or two each.
    expect(turns).toBeGreaterThan(100);
  });

  it('never counts a prompt whose caller gave up while it waited, and refuses counts past its backlog', async () => {
    const own = await startPromptTokenCounter(BUNDLE, backend.model.manifest, config.limits);
    const costly = `${'b'.repeat(100)} `.repeat(40).slice(0, config.limits.maxPromptChars);
    try {
      const gaveUp = Array.from({ length: 10 }, () => new AbortController());
      const abandoned = gaveUp.map((a) => own.count(costly, a.signal).catch((e: VlmError) => e.code));
      expect(own.waiting).toBe(9); // one on the thread
      for (const a of gaveUp) a.abort(new VlmError('CANCELLED', 'gone'));
      expect(await Promise.all(abandoned)).toEqual(Array(10).fill('CANCELLED'));
      expect(own.waiting).toBe(0); // nothing left for the thread but the one it had
      const flood = Array.from({ length: COUNTS_WAITING_MAX + 1 }, () => own.count(costly).catch((e: VlmError) => e.code));
      const refused = await own.count(costly).catch((e: VlmError) => `${e.code} ${e.reason}`);
      expect(refused).toBe('RESOURCE_EXHAUSTED QUEUE_FULL');
      await own.close();
      // Refused at the stop, never run; but for the one the thread may have taken by then.
      const outcomes = await Promise.all(flood);
      expect(outcomes.filter((o) => o !== 'UNAVAILABLE').length).toBeLessThanOrEqual(1);
    } finally {
      await own.close();
    }
  });

  it('refuses a prompt that alone fills the positions, naming the prompt, without an Encode', async () => {
    const question = questionOf(positions);
    expect(question.length).toBeLessThanOrEqual(config.limits.maxPromptChars);
    const out = await generate({ prompt: question });
    expect(out.error?.code).toBe('INVALID_ARGUMENT');
    expect(out.error?.violations.map((v) => v.field)).toEqual(['prompt']);
    expect(out.error?.message).toMatch(/^prompt: is too long: its \d+ tokens \(\d+ of text, 16 visual\) leave no room for an answer in the model's 256 positions/);
    expect(encodes()).toBe(0);
  });

  it('names sampling.max_tokens, with the most it can be, when the caller set it and the prompt leaves room', async () => {
    const room = positions - count(QUESTION) - patches;
    const out = await generate({ maxTokens: room + 1 });
    expect(out.error?.violations).toEqual([{ field: 'sampling.max_tokens', description: expect.stringMatching(new RegExp(`^must be at most ${room} for this prompt: .*; got ${room + 1}$`)) }]);
    expect(encodes()).toBe(0);
  });

  it('cuts the default max_tokens to the room the prompt leaves when the caller left it unset, and says LENGTH', async () => {
    const question = questionOf(positions - patches - defaultMaxTokens + 1);
    const room = positions - count(question) - patches;
    expect(room).toBeGreaterThanOrEqual(1);
    expect(room).toBeLessThan(defaultMaxTokens);
    const out = await generate({ prompt: question });
    expect(out.error).toBeNull();
    // The random bundle never emits its stop token: the answer runs to the room left, not the default.
    expect(out.generated).toBe(room);
    expect(out.finish).toBe(FinishReason.FINISH_REASON_LENGTH);
  }, 60_000);

  it('counts the visual tokens the vision schedule will send: what fits after ficoco-v to 4 tokens is answered', async () => {
    const question = questionOf(positions - patches - 8);
    const maxTokens = positions - count(question) - 4;
    expect(count(question) + patches + maxTokens).toBeGreaterThan(positions);
    const out = await generate({ prompt: question, maxTokens, policy: { visionMethod: 'ficoco-v', budget: { $case: 'budgetTokens', budgetTokens: 4 } } });
    expect(out.error).toBeNull();
    // The same request unreduced does not fit.
    const unreduced = await generate({ prompt: question, maxTokens });
    expect(unreduced.error?.violations.map((v) => v.field)).toEqual(['sampling.max_tokens']);
  }, 60_000);

  it('answers a request that exactly fills the positions, as the engine does', async () => {
    const maxTokens = positions - count(QUESTION) - patches;
    expect(maxTokens).toBeLessThanOrEqual(config.limits.maxNewTokens);
    const before = encodes();
    const out = await generate({ maxTokens });
    expect(out.error).toBeNull();
    expect(encodes()).toBe(before + 1);
  }, 60_000);
});

describe('the prompt-length bound that spares the tokenizer', () => {
  it.each([
    ['the embedded model (WordPiece)', 'models/tiny-llava-shapes'],
    ['the LLaVA fixture (byte-level BPE)', 'test/fixtures/llava-tiny/bundle'],
  ])('is never below the exact count: %s', async (_name, dir) => {
    const bundle = path.join(ROOT, dir);
    const manifest = JSON.parse(readFileSync(path.join(bundle, 'manifest.json'), 'utf8')) as Manifest;
    const counter = await startPromptTokenCounter(bundle, manifest, { maxPromptChars: 4096 });
    try {
      const prompts = ['x', 'what color is the diamond?', '  spaced   out  ', 'a.b,c;d!e?f', '日本語の質問ですか', '🙂🙃 emoji 🧪', 'ǅ̀ combining', 'x'.repeat(4000), '。'.repeat(1000)];
      for (const q of prompts) expect(counter.atMost(q), q.slice(0, 20)).toBeGreaterThanOrEqual(await counter.count(q));
    } finally {
      await counter.close();
    }
  });
});
