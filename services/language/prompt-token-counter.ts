/**
 * Counts a prompt's text tokens (template and question, as the engine assembles them) so that a prompt
 * too long for the model fails before the vision hop, not after a whole encode. The count runs on a
 * thread of its own (prompt-count-worker.ts), one prompt at a time: this service's event loop serves
 * every call and the health checks, and a tokenizer's cost depends on the text it is given.
 */
import * as path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { abortReason, VlmError } from '../../shared/errors';
import type { Manifest } from '../../shared/bundle/manifest';
import { loadTokenizer, promptTextTokens, type PromptLimits } from '../../shared/tokenizer/tokenizer';
import type { CountAnswer, CountRequest, CountWorkerInit } from './prompt-count-protocol';
import { BUSY_RETRY_MS, startWorker } from '../../shared/worker';

export interface PromptTokenCounter {
  /** The exact count, from the counting thread; rejects as tokenizing would (an empty question: INVALID_ARGUMENT). */
  count(question: string, signal?: AbortSignal): Promise<number>;
  /**
   * No fewer than the count, without tokenizing: the template's tokens and one per UTF-8 byte of the
   * question (no tokenizer makes more: byte-level BPE and WordPiece at most one per byte, SentencePiece
   * one more for its leading word marker, which the template's own count covers).
   */
  atMost(question: string): number;
  /** The tokenizer's special tokens, whose text a question may not hold (validateGenerate). */
  readonly specialTokens: readonly string[];
  /** Counts waiting for the thread, besides the one it runs. */
  readonly waiting: number;
  /** Stops the counting thread; counts still waiting are refused. */
  close(): Promise<void>;
}

const WORKER_FILE = path.join(__dirname, `prompt-count-worker${path.extname(__filename)}`);

/**
 * Counts waiting for the thread, at most. Each may cost tens of milliseconds (`prompt-count-worker.ts`),
 * so past this a request that needs one is refused at once rather than made to wait more than a
 * second or two behind a flood (`--max-inflight-calls`, when set lower, bounds them first).
 */
export const COUNTS_WAITING_MAX = 32;

interface Count {
  readonly id: number;
  readonly question: string;
  readonly resolve: (count: number) => void;
  readonly reject: (err: VlmError) => void;
  /** Settled already (its caller gave up, or it failed): its answer, if one comes, is dropped. */
  done: boolean;
}

export async function startPromptTokenCounter(modelDir: string, manifest: Manifest, limits: PromptLimits): Promise<PromptTokenCounter> {
  const tokenizerFile = path.join(modelDir, 'tokenizer.json');
  // Loaded here too: a tokenizer that cannot load fails the start, and the template is counted once.
  const tokenizer = await loadTokenizer(tokenizerFile);
  const template = promptTextTokens(tokenizer, manifest.prompt, manifest.tokens, 'x', limits);
  const init: CountWorkerInit = { tokenizerFile, prompt: manifest.prompt, tokens: manifest.tokens, limits };
  // One count at a time on the thread, the rest waiting here: a count whose caller gave up while it
  // waited is never sent, so abandoned work does not hold up the counts after it.
  const waiting: Count[] = [];
  let running: Count | undefined;
  let worker: Worker | undefined;
  let nextId = 1;
  let closed = false;

  const settle = (c: Count, outcome: { count: number } | { error: VlmError }): void => {
    if (c.done) return;
    c.done = true;
    if ('count' in outcome) c.resolve(outcome.count);
    else c.reject(outcome.error);
  };

  const start = (): Worker => {
    const w = startWorker(WORKER_FILE, init);
    // Never what keeps the process open.
    w.unref();
    w.on('message', (a: CountAnswer) => {
      if (w !== worker || running?.id !== a.id) return;
      const c = running;
      running = undefined;
      settle(c, 'error' in a ? { error: VlmError.fromJSON(a.error) } : { count: a.count });
      pump();
    });
    // 'error' comes before 'exit' for one death: only the first, and only for the current thread, counts.
    const lost = (why: string): void => {
      if (w !== worker) return;
      worker = undefined;
      const c = running;
      running = undefined;
      // The count it was running is the one that may have killed it: failed, not retried.
      if (c) settle(c, { error: new VlmError('INTERNAL', `the prompt-counting thread ${why}`) });
      if (!closed) pump();
    };
    w.on('error', (err) => lost(`failed: ${err.message}`));
    w.on('exit', (code) => lost(`exited with code ${code}`));
    return w;
  };

  const pump = (): void => {
    if (running || closed) return;
    // A count leaves `waiting` when its caller gives up, and at a close: what is here is still wanted.
    const next = waiting.shift();
    if (!next) return;
    try {
      worker ??= start();
    } catch (err) {
      // No thread could be made (the process out of threads or memory): this count fails, and the
      // next one tries again, rather than every count waiting behind one that never ran.
      settle(next, { error: new VlmError('INTERNAL', `the prompt-counting thread could not start: ${(err as Error).message}`) });
      return pump();
    }
    running = next;
    worker.postMessage({ id: next.id, question: next.question } satisfies CountRequest);
  };

  worker = start();

  return {
    count(question, signal) {
      if (closed) return Promise.reject(VlmError.shuttingDown('the language service is stopping'));
      if (signal?.aborted) return Promise.reject(abortReason(signal));
      if (waiting.length >= COUNTS_WAITING_MAX) {
        return Promise.reject(
          new VlmError('RESOURCE_EXHAUSTED', `${COUNTS_WAITING_MAX} long prompts are waiting to be counted against the model's positions; retry later`, { reason: 'QUEUE_FULL', retryDelayMs: BUSY_RETRY_MS }),
        );
      }
      return new Promise<number>((resolve, reject) => {
        const onAbort = (): void => {
          const at = waiting.indexOf(c);
          if (at >= 0) waiting.splice(at, 1);
          settle(c, { error: abortReason(signal!) });
        };
        const c: Count = {
          id: nextId++,
          question,
          resolve: (n) => (signal?.removeEventListener('abort', onAbort), resolve(n)),
          reject: (e) => (signal?.removeEventListener('abort', onAbort), reject(e)),
          done: false,
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        waiting.push(c);
        pump();
      });
    },
    atMost: (question) => template + Buffer.byteLength(question, 'utf8'),
    specialTokens: tokenizer.specialTokens,
    get waiting() {
      return waiting.length;
    },
    async close() {
      closed = true;
      const stopping = VlmError.shuttingDown('the language service is stopping');
      for (const c of [...(running ? [running] : []), ...waiting.splice(0)]) settle(c, { error: stopping });
      running = undefined;
      const w = worker;
      worker = undefined;
      await w?.terminate();
    },
  };
}
