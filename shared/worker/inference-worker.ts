/**
 * A worker thread of an InferencePool: loads the model once, then runs one job at a time. ONNX
 * Runtime calls, tensor work and the methods' host code all happen here, never on the caller's
 * event loop. An abort message aborts the job's signal; the engine stops at its next check. Every
 * answer says how many tokens the job had generated (decode steps), so the pool can log where a
 * cancelled job stopped.
 */
import { warmUpSampling, zeroVisualTokens } from '../engine/warm-up-inputs';
import { parentPort, workerData } from 'node:worker_threads';
import sharp from 'sharp';
import { VlmError } from '../errors';
import { createLogger, setLogLevel } from '../log';
import { encodeImage, type VisualTokens } from '../engine/encode-image';
import { generate } from '../engine/generate';
import type { RunContext } from '../engine/context';
import { loadModel, type LoadedModel } from '../engine/model';
import { languageMethodNames, visionMethodNames } from '../methods/registry';
import { isInfeasibleBudget, noReduction } from '../methods/policy';
import { SpanRecorder } from '../telemetry/span-recorder';
import type { FromWorker, Job, ToWorker, WarmUp, WorkerInit } from './protocol';

const init = workerData as WorkerInit;
setLogLevel(init.logLevel);
const log = createLogger(`worker.${init.index}`);
const port = parentPort!;
const running = new Map<number, AbortController>();

function send(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

function errorData(err: unknown) {
  const e = VlmError.from(err);
  // The runtime's own text (a CUDA error, a graph's complaint) is kept out of the caller's message: here is where an operator finds it.
  if (e.code === 'INTERNAL') log.error('job failed', { error: err instanceof Error ? err.stack ?? err.message : String(err), runtime: e.cause instanceof Error ? e.cause.message : undefined });
  else if (e.reason === 'OUT_OF_MEMORY') log.warn('job ran out of device memory', { error: e.message, runtime: e.cause instanceof Error ? e.cause.message : undefined });
  return e.toJSON();
}

// The engine's withSpan calls record into `recorder` (no SDK in a worker); the spans ride with the
// result or error and the pool replays them under the caller's span.
async function run(model: LoadedModel, id: number, job: Job, ctx: RunContext & { signal: AbortSignal }, progress: { tokensGenerated: number }, recorder?: SpanRecorder): Promise<void> {
  // The engine reports every generated token once with its id (and a flush without one).
  const onDelta = (delta: string, tokenId: number | undefined) => {
    if (tokenId !== undefined) progress.tokensGenerated++;
    send({ type: 'delta', id, delta, tokenId });
  };
  const spans = recorder?.spans;
  switch (job.kind) {
    case 'encode': {
      const r = await encodeImage(model, job.image, job.policy, ctx);
      send({ type: 'result', id, result: { kind: 'encode', value: r }, spans, tokensGenerated: 0 }, [r.embeds.data.buffer as ArrayBuffer]);
      return;
    }
    case 'generate': {
      const result = await generate(model, job.visual, job.question, job.sampling, job.policy, ctx, onDelta);
      send({ type: 'result', id, result: { kind: 'generate', value: result }, spans, tokensGenerated: progress.tokensGenerated });
      return;
    }
    case 'ask': {
      const encode = await encodeImage(model, job.image, job.policy, ctx);
      const gen = await generate(model, encode, job.question, job.sampling, job.policy, ctx, onDelta);
      send({ type: 'result', id, result: { kind: 'ask', value: { encode, generate: gen } }, spans, tokensGenerated: progress.tokensGenerated }, [encode.embeds.data.buffer as ArrayBuffer]);
      return;
    }
  }
}

/**
 * The unreduced path at full token count (the most any request runs), so sessions are open, ORT's
 * first-run allocations are done, and a broken bundle fails before the worker reports ready. With
 * eager sessions, also one pass of every reduction method of those parts at its default operating
 * point: a first request per method otherwise took twice as long (the scores graphs' first runs and
 * the methods' code compiling), on every worker and replacement.
 */
async function warmUp(model: LoadedModel, parts: WarmUp, methods: boolean): Promise<void> {
  const policy = noReduction();
  const size = model.manifest.preprocess.size;
  let visual: VisualTokens = zeroVisualTokens(model.manifest);
  const sampling = warmUpSampling(model.limits.maxNewTokens);
  if (parts !== 'language') {
    const image = await sharp({ create: { width: size, height: size, channels: 3, background: { r: 128, g: 128, b: 128 } } }).png().toBuffer();
    visual = await encodeImage(model, image, { ...policy });
    if (methods) for (const vision of visionMethodNames()) if (vision !== 'none') await unlessInfeasible(vision, () => encodeImage(model, image, { ...policy, vision }));
  }
  if (parts !== 'vision') {
    await generate(model, visual, 'warm-up', sampling, { ...policy });
    if (methods) for (const language of languageMethodNames()) if (language !== 'none') await unlessInfeasible(language, () => generate(model, visual, 'warm-up', sampling, { ...policy, language }));
  }
}

/** A method whose default operating point this model cannot reach is refused per request; the rest still serve. */
async function unlessInfeasible(method: string, pass: () => Promise<unknown>): Promise<void> {
  try {
    await pass();
  } catch (err) {
    // Only the methods' refusal of the budget; any other error is a fault to see.
    if (!isInfeasibleBudget(err)) throw err;
    log.warn('warm-up skipped a method its default cannot run on this model', { method, error: err.message });
  }
}

async function main(): Promise<void> {
  let model: LoadedModel;
  try {
    // With eager sessions the loader opened every graph of the side; else one, to pin the provider
    // before the first request.
    model = await loadModel({ model: init.model, runtime: init.runtime, limits: init.limits, side: init.side, log });
    if (!init.model.eagerSessions) await model.bundle.stages.get(init.side === 'language' ? 'language/embed' : 'vision/embed');
    if (init.warmUp) {
      const t0 = performance.now();
      await warmUp(model, init.warmUp, init.model.eagerSessions);
      log.info('warm-up done', { parts: init.warmUp, methods: init.model.eagerSessions, ms: Math.round(performance.now() - t0) });
    }
  } catch (err) {
    send({ type: 'init-error', error: errorData(err) });
    return;
  }
  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'abort') {
      running.get(msg.id)?.abort(VlmError.fromJSON(msg.reason));
      return;
    }
    const controller = new AbortController();
    running.set(msg.id, controller);
    const recorder = msg.record ? new SpanRecorder() : undefined;
    const progress = { tokensGenerated: 0 };
    const job = () => run(model, msg.id, msg.job, { signal: controller.signal, deadline: msg.deadline, requestId: msg.requestId, captureContent: msg.content }, progress, recorder);
    (recorder ? recorder.run(job) : job())
      .catch((err: unknown) => send({ type: 'error', id: msg.id, error: errorData(err), spans: recorder?.spans, tokensGenerated: progress.tokensGenerated }))
      .finally(() => running.delete(msg.id));
  });
  send({ type: 'ready', manifest: model.manifest, provider: model.bundle.stages.provider });
}

void main();
