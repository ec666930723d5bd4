/**
 * The prompt-counting thread's failures cost one count each, never the counter: a thread that dies
 * is replaced on the next count, and a thread that cannot be started fails the count that needed it
 * while the next count starts one. (Counting itself, its backlog and cancellation:
 * test/service-prompt-length.test.ts.)
 */
import type { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

const started: Worker[] = [];
let failNextStart = false;
vi.mock('../shared/worker/start-worker', async (original) => {
  const real = (await original()) as typeof import('../shared/worker/start-worker');
  return {
    startWorker: (file: string, data: unknown) => {
      if (failNextStart) {
        failNextStart = false;
        throw Object.assign(new Error('Worker initialization failure: EAGAIN'), { code: 'ERR_WORKER_INIT_FAILED' });
      }
      const w = real.startWorker(file, data);
      started.push(w);
      return w;
    },
  };
});

import { VlmError } from '../shared/errors';
import { readManifest } from '../shared/bundle/loader';
import { startPromptTokenCounter, type PromptTokenCounter } from '../services/language/prompt-token-counter';
import { BUNDLE, pairConfig } from './reliability-helpers';

describe('the prompt-counting thread', () => {
  let counter: PromptTokenCounter;
  let expected: number;
  beforeAll(async () => {
    counter = await startPromptTokenCounter(BUNDLE, await readManifest(BUNDLE), pairConfig().limits);
    expected = await counter.count('what color is the circle?');
  });
  afterAll(() => counter?.close());

  it('is replaced on the next count when it has died', async () => {
    await started.at(-1)!.terminate();
    expect(await counter.count('what color is the circle?')).toBe(expected);
  });

  it('that cannot be started fails only the count that needed it', async () => {
    await started.at(-1)!.terminate();
    failNextStart = true;
    const failed = await counter.count('what color is the circle?').catch((e: VlmError) => `${e.code}: ${e.message}`);
    expect(failed).toMatch(/^INTERNAL: the prompt-counting thread could not start: Worker initialization failure/);
    expect(await counter.count('what color is the circle?')).toBe(expected);
    expect(counter.waiting).toBe(0);
  });
});
