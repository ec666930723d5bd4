/**
 * Counts a prompt's text tokens (template and question, as the engine assembles them) so that a prompt
 * too long for the model fails before the vision hop, not after a whole encode. The count runs on a
 * thread of its own (prompt-count-worker.ts), one prompt at a time: this service's event loop serves
 * every call and the health checks, and a tokenizer's cost depends on the text it is given.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { abortReason, VlmError } from '../../shared/errors';
import type { Manifest } from '../../shared/bundle/manifest';
import { assemblePrompt, loadTokenizer, type PromptLimits } from '../../shared/tokenizer/tokenizer';
import type { CountAnswer, CountRequest, CountWorkerInit } from './prompt-count-protocol';

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
  /** Stops the counting thread; counts still waiting are refused. */
  close(): Promise<void>;
}

const WORKER_FILE = path.join(__dirname, `prompt-count-worker${path.extname(__filename)}`);

interface Pending {
  resolve(count: number): void;
  reject(err: VlmError): void;
}

export async function startPromptTokenCounter(modelDir: string, manifest: Manifest, limits: PromptLimits): Promise<PromptTokenCounter> {
  const tokenizerFile = path.join(modelDir, 'tokenizer.json');
  // Loaded here too: a tokenizer that cannot load fails the start, and the template is counted once.
  const tokenizer = await loadTokenizer(tokenizerFile);
  const template = (() => {
    const p = assemblePrompt(tokenizer, manifest.prompt, manifest.tokens, 'x', limits);
    return p.prefix.length + p.suffix.length;
  })();
  const init: CountWorkerInit = { tokenizerFile, prompt: manifest.prompt, tokens: manifest.tokens, limits };
  const pending = new Map<number, Pending>();
  let nextId = 1;
  let worker: Worker | undefined;
  let closed = false;

  const failAll = (err: VlmError): void => {
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  };
  // Started on first use and again after a crash; unref'd, so it never holds the process open.
  const current = (): Worker => {
    if (worker) return worker;
    const ts = WORKER_FILE.endsWith('.ts');
    const w = new Worker(WORKER_FILE, { workerData: init, execArgv: ts ? ['--require', require.resolve('tsx/cjs')] : [], stdout: false, stderr: false });
    w.unref();
    w.on('message', (a: CountAnswer) => {
      const p = pending.get(a.id);
      if (!p) return; // its caller gave up
      pending.delete(a.id);
      if ('error' in a) p.reject(VlmError.fromJSON(a.error));
      else p.resolve(a.count);
    });
    const lost = (why: string): void => {
      if (worker === w) worker = undefined;
      failAll(new VlmError('INTERNAL', `the prompt-counting thread ${why}`));
    };
    w.on('error', (err) => lost(`failed: ${err.message}`));
    w.on('exit', (code) => lost(`exited with code ${code}`));
    return (worker = w);
  };

  return {
    count(question, signal) {
      if (closed) return Promise.reject(VlmError.shuttingDown('the language service is stopping'));
      if (signal?.aborted) return Promise.reject(abortReason(signal));
      const id = nextId++;
      return new Promise<number>((resolve, reject) => {
        const onAbort = (): void => {
          pending.delete(id);
          reject(abortReason(signal!));
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        const settle = <T>(f: (v: T) => void) => (v: T) => (signal?.removeEventListener('abort', onAbort), f(v));
        pending.set(id, { resolve: settle(resolve), reject: settle(reject) });
        current().postMessage({ id, question } satisfies CountRequest);
      });
    },
    atMost: (question) => template + Buffer.byteLength(question, 'utf8'),
    specialTokens: tokenizer.specialTokens,
    async close() {
      closed = true;
      const w = worker;
      worker = undefined;
      failAll(VlmError.shuttingDown('the language service is stopping'));
      await w?.terminate();
    },
  };
}
