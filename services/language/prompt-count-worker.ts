/**
 * The thread that counts prompts' text tokens for the language service (prompt-token-counter.ts).
 * Tokenizing is the one piece of request work a language replica did on its event loop, and its cost
 * depends on the text: the embedded model's WordPiece takes 55 ms for 4096 characters of 100-letter
 * words against 1 ms for ordinary text, so a stream of such prompts stalled every call and the health
 * checks. Here it costs only the requests that need a count.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { VlmError } from '../../shared/errors';
import { loadTokenizer, promptTextTokens } from '../../shared/tokenizer/tokenizer';
import type { CountAnswer, CountRequest, CountWorkerInit } from './prompt-count-protocol';

const init = workerData as CountWorkerInit;
const port = parentPort!;
const tokenizer = loadTokenizer(init.tokenizerFile);

port.on('message', (m: CountRequest) => {
  void tokenizer
    .then((tok) => {
      return { id: m.id, count: promptTextTokens(tok, init.prompt, init.tokens, m.question, init.limits) } satisfies CountAnswer;
    })
    .catch((err: unknown): CountAnswer => ({ id: m.id, error: VlmError.from(err).toJSON() }))
    .then((answer) => port.postMessage(answer));
});
