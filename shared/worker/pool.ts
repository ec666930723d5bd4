/**
 * InferencePool: N worker threads, each with its own copy of the model, fed from one bounded queue.
 *
 * - A job waits for a free worker; beyond `queueSize` waiting jobs, submit fails at once with
 *   RESOURCE_EXHAUSTED (callers shed load instead of piling up latency). Waiting jobs are served
 *   round-robin between callers (`CallOptions.caller`), and a full queue sheds the newest job of a
 *   caller with two or more waiting than the newcomer's rather than refusing the newcomer
 *   (fair-queue.ts).
 * - Cancellation: a queued job is dropped; a running job's worker gets an abort message and stops at
 *   the engine's next check. The caller's promise settles with the signal's reason (CANCELLED, or the
 *   DEADLINE_EXCEEDED a service put there). When the worker answers, a job that was aborted or ran
 *   past its deadline is logged (info) with the tokens it had generated: 'job stopped early', or
 *   'aborted job ran to completion' where the abort came too late to save any work.
 * - Deltas stream back as they are produced; errors arrive as VlmError.
 * - A worker that dies fails its job (INTERNAL: the job may be what killed it, so it is not one to
 *   retry elsewhere) and is replaced. If no worker is left and the
 *   replacement cannot start, queued and new jobs fail at once with UNAVAILABLE (a client retries
 *   another replica instead of waiting for its deadline) and the start is retried with backoff.
 * Under vitest or tsx the worker runs the TypeScript source through tsx's require hook; built code
 * runs the compiled worker.
 */
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { context, trace, type Context } from '@opentelemetry/api';
import { abortReason, VlmError } from '../errors';
import type { LimitsConfig, ModelConfig, RuntimeConfig } from '../config';
import { createLogger, logLevel, type Logger, type LogLevel } from '../log';
import type { Manifest } from '../bundle/manifest';
import type { ModelSide } from '../bundle/loader';
import type { ReductionPolicy } from '../methods/policy';
import type { EncodeResult, VisualTokens } from '../engine/encode-image';
import type { GenerateResult, OnDelta } from '../engine/generate';
import type { SamplingParams } from '../engine/sampling';
import type { AskResult, FromWorker, Job, JobResult, JobResultOf, ToWorker, WarmUp, WorkerInit } from './protocol';
import { ATTR_ERROR_TYPE, SpanName } from '../telemetry/names';
import { isServerFault } from '../telemetry/span-status';
import { epochMillis, replaySpans, type SpanTiming } from '../telemetry/span-recorder';
import { contentCaptured, tracingEnabled } from '../telemetry/state';
import { FairQueue, HeldByCaller } from './fair-queue';
import { startWorker } from './start-worker';

export interface PoolDeps {
  readonly model: ModelConfig;
  readonly runtime: RuntimeConfig;
  readonly limits: LimitsConfig;
  readonly logLevel?: LogLevel;
  readonly log?: Logger;
  /** Each worker runs a worst-case request through these parts before the pool is ready. */
  readonly warmUp?: WarmUp;
  /** A service's side: with eager sessions each worker opens only that side's graphs. */
  readonly side?: ModelSide;
}

export interface CallOptions {
  readonly signal?: AbortSignal;
  readonly deadline?: number;
  readonly requestId?: string;
  /** The call's trace and span ids, which the pool's lines about this job carry beside its request id. */
  readonly traceIds?: Readonly<{ trace_id?: string; span_id?: string }>;
  readonly onDelta?: OnDelta;
  /**
   * generate: the caller gives up the visual tokens' buffer, which moves to the worker instead of
   * being copied on this thread (about 3 ms for LLaVA's 576 x 4096 rows). Read it afterwards and it
   * is empty.
   */
  readonly transferVisual?: boolean;
  /**
   * Who asked (the accepted bearer token's name): waiting jobs are served round-robin between
   * callers, and a full queue sheds the heaviest caller's newest job before refusing a lighter
   * caller (fair-queue.ts). Unset: one anonymous caller, a plain FIFO.
   */
  readonly caller?: string;
  /**
   * A place `reserve` held for this job: it takes that place instead of asking for room (which it
   * has by construction), so a job whose request already cost a vision encode is not refused now.
   */
  readonly place?: PoolPlace;
}

/**
 * A place in the pool (a worker or the queue) held for a job not yet submitted: the language service
 * holds one while the request's image is encoded by the vision service. Counted as taken by every
 * room check, so a burst is refused at its headers instead of after an encode each.
 */
export interface PoolPlace {
  /** Gives the place back (the hop failed); once the job took it, or a second time, it does nothing. */
  release(): void;
}

/** What a close left undone. */
export interface PoolCloseReport {
  /** Workers left inside a model call that did not return, or still loading the model (they keep the process from exiting). */
  readonly stuckWorkers: number;
}

interface Task {
  readonly id: number;
  readonly job: Job;
  readonly options: CallOptions;
  readonly resolve: (r: JobResult) => void;
  readonly reject: (e: VlmError) => void;
  onAbort?: () => void;
  /** performance.now() when the worker running it was sent an abort. */
  abortedAt?: number;
  /** Fires if the worker has not answered `stuckWorkerMs` after the abort (markStuck). */
  stuckTimer?: NodeJS.Timeout;
  /** The caller's trace context and when the job was queued: the worker's spans are replayed there. */
  readonly trace?: { readonly parent: Context; readonly queuedAt: number; dispatchedAt?: number };
}

/** A job's request and trace ids, for the pool's log lines about it. */
function jobIds(task: Pick<Task, 'options'>): Record<string, string | undefined> {
  return { requestId: task.options.requestId, ...task.options.traceIds };
}

interface Slot {
  worker: Worker;
  task: Task | undefined;
  /** No answer long after its job was stopped: inside a model call that does not return. */
  stuck: boolean;
  /** Left running by a close (stopWorker): terminated if it answers after all. */
  abandoned?: boolean;
}

const WORKER_FILE = path.join(__dirname, `inference-worker${path.extname(__filename)}`);

function spawn(init: WorkerInit): Worker {
  return startWorker(WORKER_FILE, init);
}

export class InferencePool {
  private readonly slots: Slot[] = [];
  private readonly queue = new FairQueue<Task>();
  /** Places reserve() handed out that no job has taken yet, with their callers. */
  private readonly held = new Map<PoolPlace, string>();
  private readonly heldBy = new HeldByCaller();
  private nextId = 1;
  private closed = false;
  private closing: Promise<PoolCloseReport> | undefined;
  /**
   * Replacement workers being started, by their start: each leaves once it has loaded or failed, and
   * settles once its worker is attached, stopped after a close, or its retry scheduled.
   */
  private readonly starting = new Set<Promise<void>>();
  /** One per worker whose replacement is waiting to retry (several workers can die together). */
  private readonly restartTimers = new Set<NodeJS.Timeout>();
  private readonly availabilityListeners = new Set<(available: boolean, why: string) => void>();
  /** The runtime's account of a device fault (isDeviceFault): no worker of this process can use the device again. */
  private deviceFault: string | undefined;
  private readonly log: Logger;

  private constructor(
    private readonly deps: PoolDeps,
    readonly manifest: Manifest,
    readonly provider: string | undefined,
  ) {
    this.log = deps.log ?? createLogger('pool');
  }

  /** Starts the workers and resolves once every one has loaded the model. */
  static async start(deps: PoolDeps): Promise<InferencePool> {
    const n = Math.max(1, deps.runtime.workers);
    const first = await InferencePool.startWorker(deps, 0);
    const pool = new InferencePool(deps, first.manifest, first.provider);
    pool.attach(first.worker);
    // Each worker is attached the moment it is ready, not once its siblings are: a ready worker without
    // the pool's listeners would take the process down with an 'error' event while the others load
    // (minutes on a GPU). Attached, a started worker is also terminated by close() if a sibling fails.
    const rest = await Promise.allSettled(
      Array.from({ length: n - 1 }, (_, i) => InferencePool.startWorker(deps, i + 1, pool.identity).then((w) => (pool.attach(w.worker), w))),
    );
    const failed = rest.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await pool.close();
      throw failed.reason;
    }
    pool.log.info('inference pool ready', { workers: n, queue: deps.limits.queueSize, provider: first.provider, intra_op_threads: deps.runtime.intraOpThreads });
    return pool;
  }

  /** Workers for a machine: one per `intraOpThreads` cores, at least one. */
  static workersFor(intraOpThreads: number): number {
    return Math.max(1, Math.floor(availableParallelism() / Math.max(1, intraOpThreads)));
  }

  /** What every worker must have loaded: the pool advertises one bundle on one provider. */
  private get identity(): WorkerIdentity {
    return { contentHash: this.manifest.content_hash, provider: this.provider };
  }

  /**
   * Starts one worker; with `expected`, a worker that loaded another bundle (the folder was replaced
   * under a running service) or landed on another provider (its first session fell back) is stopped
   * and rejected, since the service would go on advertising what the first worker loaded.
   */
  private static startWorker(deps: PoolDeps, index: number, expected?: WorkerIdentity): Promise<{ worker: Worker; manifest: Manifest; provider: string | undefined }> {
    const init: WorkerInit = { model: deps.model, runtime: deps.runtime, limits: deps.limits, logLevel: deps.logLevel ?? logLevel(), index, warmUp: deps.warmUp, side: deps.side };
    const worker = spawn(init);
    return new Promise((resolve, reject) => {
      const onMessage = (msg: FromWorker) => {
        if (msg.type === 'ready') {
          cleanup();
          const mismatch = expected && identityMismatch(expected, { contentHash: msg.manifest.content_hash, provider: msg.provider });
          if (mismatch) {
            void worker.terminate();
            reject(new VlmError('FAILED_PRECONDITION', `inference worker ${index} ${mismatch}; restart the service to serve it`));
          } else resolve({ worker, manifest: msg.manifest, provider: msg.provider });
        } else if (msg.type === 'init-error') {
          cleanup();
          void worker.terminate();
          reject(VlmError.fromJSON(msg.error));
        }
      };
      const onError = (err: Error) => {
        cleanup();
        reject(new VlmError('INTERNAL', `inference worker ${index} failed to start: ${err.message}`, { cause: err }));
      };
      const onExit = (code: number) => {
        cleanup();
        reject(new VlmError('INTERNAL', `inference worker ${index} exited with code ${code} while loading the model`));
      };
      const cleanup = () => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    });
  }

  /**
   * Calls `listener` whenever a worker starts, dies, fails to be replaced, gets stuck or the device
   * fails, with whether the pool can still serve and, when it cannot, why. It cannot with no worker
   * running and none being started (a replacement that failed and waits to retry), with every worker
   * stuck in a model call, or after a device fault; in each only a new process helps, which the
   * service's NOT_SERVING gets from the liveness probe. A worker being replaced is no outage: its
   * restart can take as long as a start (minutes on a GPU), and a service that said NOT_SERVING for
   * it would have its pod restarted mid-way. Returns the unregister function.
   */
  onAvailability(listener: (available: boolean, why: string) => void): () => void {
    this.availabilityListeners.add(listener);
    return () => this.availabilityListeners.delete(listener);
  }

  private announceAvailability(): void {
    const outage = this.outage();
    for (const l of this.availabilityListeners) l(outage === undefined, outage?.message ?? '');
  }

  /** Why no job can run now, as the error a new one gets; undefined while the pool can serve. */
  private outage(): VlmError | undefined {
    if (this.deviceFault !== undefined) {
      return new VlmError('UNAVAILABLE', "this replica's GPU failed and the replica is being restarted; retry on another replica", { reason: 'NO_WORKER', retryDelayMs: 0 });
    }
    if (this.workerless) return noWorker();
    // A replacement being started may yet serve: a start can take minutes on a GPU.
    if (this.slots.length > 0 && this.starting.size === 0 && this.slots.every((s) => s.stuck)) {
      return new VlmError('UNAVAILABLE', 'every inference worker of this replica is stuck in a model call and the replica is being restarted; retry on another replica', { reason: 'NO_WORKER', retryDelayMs: 0 });
    }
    return undefined;
  }

  get stats(): { workers: number; busy: number; queued: number; queueSize: number } {
    return { workers: this.slots.length, busy: this.slots.filter((s) => s.task).length, queued: this.queue.length, queueSize: this.deps.limits.queueSize };
  }

  /**
   * Holds a place for a job of `caller`'s that is submitted later (with `options.place`), or throws
   * what a job submitted now would be refused with: the language service sheds a request before its
   * vision hop, and keeps its place through it. Nothing is shed for it now: the hop may yet fail, and
   * a queued job shed for a place never used would be lost for nothing; its job sheds when it comes.
   */
  reserve(caller = ''): PoolPlace {
    const refused = this.refusal(caller);
    if (refused) throw refused;
    const place: PoolPlace = { release: () => void this.unhold(place) };
    this.held.set(place, caller);
    this.heldBy.add(caller);
    return place;
  }

  /** Ends a held place (its job came, or it was given back); false if it was not held. */
  private unhold(place: PoolPlace): boolean {
    const caller = this.held.get(place);
    if (caller === undefined) return false;
    this.held.delete(place);
    this.heldBy.remove(caller);
    return true;
  }

  /** Idle workers and queue room, less the places held for jobs on their way (negative past the limit). */
  private freePlaces(): number {
    const idle = this.slots.filter((s) => !s.task).length;
    return idle + this.deps.limits.queueSize - this.queue.length - this.held.size;
  }

  /** Whether the places taken past the limit (held, or queued beyond it) already number the queue's size. */
  private overLimitFull(): boolean {
    return -this.freePlaces() >= Math.max(1, this.deps.limits.queueSize);
  }

  /**
   * Whether `caller` may take a place past the limit: held places cannot be shed as queued jobs can,
   * so a caller at least two lighter than one holding places outside the queue is not refused for
   * them (as the fair queue does not refuse a light caller for a heavy one's queued jobs), up to the
   * queue's size past the limit in all (overLimitFull).
   */
  private mayExceed(caller: string): boolean {
    // By exact caller, not token first as the fair queue weighs: the language pool's callers are
    // tokens (a `token/sub` caller is vision's, whose pool holds no places).
    return this.heldBy.heaviestOther(caller) >= this.queue.countOf(caller) + this.heldBy.of(caller) + 2;
  }

  /**
   * Why a job of `caller`'s submitted now would be refused (shut down, no worker, every place taken by
   * running, queued or reserved jobs with no heavier caller's queued job to shed and none holding
   * places to go past); null if it would be taken. The services ask it when a call's headers arrive,
   * before its request message is received.
   */
  refusal(caller = ''): VlmError | null {
    if (this.closed) return VlmError.shuttingDown('the inference pool is shut down');
    const outage = this.outage();
    if (outage) return outage;
    if (this.freePlaces() > 0) return null;
    // A victim is only shed when the job comes, so several callers may count on the same one: the
    // places past the limit are bounded here as mayExceed bounds its own.
    if (!this.overLimitFull() && (this.queue.victimFor(caller, this.heldBy) !== undefined || this.mayExceed(caller))) return null;
    const busy = this.slots.filter((s) => s.task).length;
    const taken =
      this.held.size === 0
        ? `all ${this.slots.length} inference workers are busy and ${this.queue.length} requests are queued (limit ${this.deps.limits.queueSize})`
        : `every place is taken: ${busy} of ${this.slots.length} inference workers busy, ${this.queue.length} requests queued (limit ${this.deps.limits.queueSize}), ${this.held.size} more places held by requests whose images are being encoded`;
    return new VlmError('RESOURCE_EXHAUSTED', `${taken}; retry later`, { reason: 'QUEUE_FULL', retryDelayMs: BUSY_RETRY_MS });
  }

  encode(image: Uint8Array, policy: ReductionPolicy, options: CallOptions = {}): Promise<EncodeResult> {
    return this.submit({ kind: 'encode', image: copyBytes(image), policy }, options);
  }

  generate(visual: VisualTokens, question: string, sampling: SamplingParams, policy: ReductionPolicy, options: CallOptions = {}): Promise<GenerateResult> {
    // A view whose buffer was transferred away (passed twice with transferVisual) is empty, and
    // postMessage drops a message naming a detached buffer without a word: the job would hold its
    // worker forever. Refused here instead.
    const [rows, width] = visual.embeds.dims;
    if (visual.embeds.data.length !== rows * width) {
      return Promise.reject(new VlmError('INTERNAL', `visual tokens hold ${visual.embeds.data.length} values for dims [${rows}, ${width}] (a buffer already transferred?)`));
    }
    return this.submit({ kind: 'generate', visual, question, sampling, policy }, options);
  }

  /** Encode and generate in one worker (the CLI's eval and local runs: no stream in between). */
  ask(image: Uint8Array, question: string, sampling: SamplingParams, policy: ReductionPolicy, options: CallOptions = {}): Promise<AskResult> {
    return this.submit({ kind: 'ask', image: copyBytes(image), question, sampling, policy }, options);
  }

  /**
   * Fails queued jobs with UNAVAILABLE, lets running ones finish (or aborts them after `graceMs`), stops
   * the workers. A worker still inside a model call STOP_WAIT_MS after its abort is left running and
   * counted in the report (stopWorker says why); it is terminated if its call returns after all. So is
   * a replacement still loading the model STOP_WAIT_MS into the stop (a load on a GPU takes minutes,
   * and stopping a worker inside a native session create aborts the process): it is terminated once it
   * has loaded. Idempotent: every call gets the same report.
   */
  close(graceMs = 0): Promise<PoolCloseReport> {
    this.closing ??= this.closeOnce(graceMs);
    return this.closing;
  }

  private async closeOnce(graceMs: number): Promise<PoolCloseReport> {
    this.closed = true;
    this.cancelRestarts();
    for (const t of this.queue.drain()) this.settle(t, VlmError.shuttingDown('the inference pool is shutting down'));
    const deadline = Date.now() + graceMs;
    while (this.slots.some((s) => s.task) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const [stopped, loading] = await Promise.all([Promise.all(this.slots.map((s) => this.stopWorker(s))), this.stillStartingAfter(STOP_WAIT_MS)]);
    if (loading > 0) this.log.error('a replacement inference worker is still loading the model; the pool closes without it (stopping it mid-load would abort the process: only ending the process stops it)', { loading, waited_ms: STOP_WAIT_MS });
    this.slots.length = 0;
    return { stuckWorkers: stopped.filter((ok) => !ok).length + loading };
  }

  /** How many replacement starts are still loading after `ms` (each settles once its worker is stopped or failed). */
  private async stillStartingAfter(ms: number): Promise<number> {
    const pending = new Set(this.starting);
    for (const start of pending) void start.finally(() => pending.delete(start));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(pending), new Promise((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
    return pending.size;
  }

  /**
   * Terminating a worker while it is inside an ONNX Runtime call aborts the whole process
   * (onnxruntime-node throws into the torn-down thread: "terminate called after throwing an instance
   * of 'Napi::Error'", exit 134), and so does process.exit(). A running job is aborted first; the
   * worker stops at its next check between layers or decode steps and answers, and only then is it
   * terminated. One native call cannot be interrupted: a worker still inside one STOP_WAIT_MS after
   * the abort (at once if it already counts as stuck) is left running and false returned, and the
   * process has to end without it (lifecycle's exitNow). A stop waits no longer than that whatever
   * `stuckWorkerMs` says: the request has been answered already, and the manifests' grace periods
   * count on the pool's close taking at most STOP_WAIT_MS.
   */
  private async stopWorker(s: Slot): Promise<boolean> {
    const task = s.task;
    if (task) {
      const reason = VlmError.shuttingDown('the inference pool shut down while the request ran');
      this.settle(task, reason);
      s.worker.postMessage({ type: 'abort', id: task.id, reason: reason.toJSON() } satisfies ToWorker);
      const waitedMs = s.stuck ? 0 : STOP_WAIT_MS;
      const giveUpAt = Date.now() + waitedMs;
      while (s.task === task) {
        if (Date.now() >= giveUpAt) {
          this.log.error('an inference worker is still inside a model call after its request was stopped; the pool closes without it (stopping it mid-call would abort the process: only ending the process stops it)', { ...jobIds(task), stuck: s.stuck, waited_ms: waitedMs });
          s.abandoned = true;
          return false;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    await s.worker.terminate();
    return true;
  }

  private submit<K extends Job['kind']>(job: Extract<Job, { kind: K }>, options: CallOptions): Promise<JobResultOf[K]> {
    return new Promise<JobResultOf[K]>((resolve, reject) => {
      // A held place is this job's: taken first, so no early answer leaves it held; the job does not
      // ask for room, but closing and outages still refuse it.
      const placed = options.place !== undefined && this.unhold(options.place);
      if (this.closed) return reject(VlmError.shuttingDown('the inference pool is shut down'));
      if (options.signal?.aborted) return reject(abortReason(options.signal));
      const caller = options.caller ?? '';
      const refused = placed ? this.outage() : this.refusal(caller);
      if (refused) return reject(refused);
      const idle = this.slots.find((s) => !s.task);
      // Traced only inside a caller's span that records: warm-up and other background jobs would be
      // orphan traces, and a trace the sampler dropped would replay every span only to discard it.
      const parent = context.active();
      const traced = tracingEnabled() && trace.getSpan(parent)?.isRecording() ? { parent, queuedAt: epochMillis() } : undefined;
      // The worker tags its answer with the job's kind; TypeScript cannot tie that tag to K, the check can.
      const settleWith = (r: JobResult) =>
        r.kind === job.kind ? resolve(r.value as JobResultOf[K]) : reject(new VlmError('INTERNAL', `the inference worker answered a ${job.kind} job with a ${r.kind} result`));
      const task: Task = { id: this.nextId++, job, options, resolve: settleWith, reject, trace: traced };
      if (options.signal) {
        task.onAbort = () => this.abort(task, abortReason(options.signal!));
        options.signal.addEventListener('abort', task.onAbort, { once: true });
      }
      if (idle) return this.dispatch(idle, task);
      // Past the limit (a job let past it, a worker lost meanwhile), a heavier caller's newest queued
      // job is shed if there is one; otherwise the job waits past the limit, as its admission allowed.
      if (this.freePlaces() <= 0 && this.queue.victimFor(caller, this.heldBy) !== undefined) this.shedFor(caller);
      this.queue.push(caller, task);
    });
  }

  private dispatch(slot: Slot, task: Task): void {
    slot.task = task;
    const transfer: ArrayBuffer[] = [];
    if (task.job.kind !== 'generate') transfer.push(task.job.image.buffer as ArrayBuffer);
    else if (task.options.transferVisual && ownsBuffer(task.job.visual.embeds.data)) transfer.push(task.job.visual.embeds.data.buffer as ArrayBuffer);
    if (task.trace) task.trace.dispatchedAt = epochMillis();
    const msg: ToWorker = { type: 'run', id: task.id, job: task.job, deadline: task.options.deadline, requestId: task.options.requestId, record: task.trace !== undefined, content: task.trace !== undefined && contentCaptured() };
    slot.worker.postMessage(msg, transfer);
  }

  /** Makes room in a full queue for one of `caller`'s jobs (refusal() has found a heavier caller). */
  private shedFor(caller: string): void {
    const victim = this.queue.victimFor(caller, this.heldBy)!;
    const waiting = this.queue.countOf(victim);
    const shed = this.queue.popNewest(victim)!;
    this.log.info('shed a queued job to admit a lighter caller', { caller: victim, for: caller, waiting, ...jobIds(shed) });
    this.settle(
      shed,
      new VlmError('RESOURCE_EXHAUSTED', `shed from the full queue to admit another caller's request: this caller had ${waiting} of the ${this.queue.length + 1} waiting; retry later`, {
        reason: 'QUEUE_FULL',
        retryDelayMs: BUSY_RETRY_MS,
      }),
    );
  }

  private abort(task: Task, reason: VlmError): void {
    if (this.queue.remove(task)) {
      this.settle(task, reason);
      return;
    }
    const slot = this.slots.find((s) => s.task === task);
    // The worker stops at its next check and answers with the reason; settle now so the caller is not kept waiting.
    if (slot) {
      task.abortedAt = performance.now();
      slot.worker.postMessage({ type: 'abort', id: task.id, reason: reason.toJSON() } satisfies ToWorker);
      const waitMs = this.deps.runtime.stuckWorkerMs;
      if (waitMs > 0) {
        task.stuckTimer = setTimeout(() => this.markStuck(slot, task, waitMs), waitMs);
        task.stuckTimer.unref();
      }
    }
    this.settle(task, reason);
  }

  /**
   * A worker that has not answered long after its job was stopped is inside a model call that does not
   * return (a hung kernel, a driver fault): it cannot be terminated (stopWorker says why), so it is only
   * counted out; with every worker stuck the pool says it cannot serve.
   */
  private markStuck(slot: Slot, task: Task, waitedMs: number): void {
    if (slot.task !== task || this.closed) return;
    slot.stuck = true;
    this.log.error('an inference worker has not answered since its request was stopped: stuck in a model call', { ...jobIds(task), waited_ms: waitedMs, stuck: this.slots.filter((s) => s.stuck).length, workers: this.slots.length });
    this.failQueuedIfOut();
    this.announceAvailability();
  }

  /** Replacements waiting to retry are not started: the pool is closing, or its device failed. */
  private cancelRestarts(): void {
    for (const t of this.restartTimers) clearTimeout(t);
    this.restartTimers.clear();
  }

  /** After a device fault: the jobs waiting are told to go elsewhere, and nothing more is taken. */
  private failDevice(message: string): void {
    if (this.deviceFault !== undefined || this.closed) return;
    this.deviceFault = message;
    this.cancelRestarts();
    this.log.error('the GPU failed in a way it does not recover from: this replica takes no more requests and reports NOT_SERVING, so that it is restarted', { error: message });
    this.failQueuedIfOut();
    this.announceAvailability();
  }

  private failQueuedIfOut(): void {
    const outage = this.outage();
    if (outage) for (const t of this.queue.drain()) this.settle(t, outage);
  }

  private settle(task: Task, outcome: VlmError | { result: JobResult }): void {
    if (task.onAbort) task.options.signal?.removeEventListener('abort', task.onAbort);
    // A job ended while still queued (its deadline, a cancel, shed, the pool closing) never reaches a
    // worker, whose answer is where the wait is otherwise recorded: without this its trace would show
    // the request's time with nothing inside to explain it.
    if (task.trace && task.trace.dispatchedAt === undefined && outcome instanceof VlmError) replayUndispatched(task.trace, outcome);
    if (outcome instanceof VlmError) task.reject(outcome);
    else task.resolve(outcome.result);
  }

  private attach(worker: Worker): void {
    const slot: Slot = { worker, task: undefined, stuck: false };
    this.slots.push(slot);
    worker.on('message', (msg: FromWorker) => this.onMessage(slot, msg));
    worker.on('error', (err) => this.log.error('inference worker crashed', { error: err.message }));
    worker.on('exit', (code) => this.onExit(slot, code));
    this.announceAvailability();
  }

  private onMessage(slot: Slot, msg: FromWorker): void {
    const task = slot.task;
    if (msg.type === 'ready' || msg.type === 'init-error' || !task || msg.id !== task.id) return; // a late message of an aborted job
    if (msg.type === 'delta') {
      task.options.onDelta?.(msg.delta, msg.tokenId);
      return;
    }
    if (task.trace) replayJobSpans(task.trace, msg.spans);
    this.logEarlyEnd(task, msg);
    this.settle(task, msg.type === 'result' ? { result: msg.result } : VlmError.fromJSON(msg.error));
    if (msg.type === 'error' && msg.error.reason === 'DEVICE_FAULT') this.failDevice(msg.error.message);
    this.release(slot);
  }

  /** Where a job that was aborted, or ran past its deadline, stopped (its worker's answer is in). */
  private logEarlyEnd(task: Task, msg: Extract<FromWorker, { type: 'result' | 'error' }>): void {
    const aborted = task.abortedAt !== undefined;
    const fields = { id: task.id, ...jobIds(task), kind: task.job.kind, decode_steps: msg.tokensGenerated, aborted, ms_after_abort: aborted ? Math.round(performance.now() - task.abortedAt!) : undefined };
    if (msg.type === 'result') {
      if (aborted) this.log.info('aborted job ran to completion', fields);
    } else if (aborted || msg.error.code === 'CANCELLED' || msg.error.code === 'DEADLINE_EXCEEDED') {
      this.log.info('job stopped early', { ...fields, code: msg.error.code });
    }
  }

  /** No worker is running and none is being started: nothing can run a job. */
  private get workerless(): boolean {
    return this.slots.length === 0 && this.starting.size === 0;
  }

  /** The slot is free once its worker has answered (result or error), aborted jobs included. */
  private release(slot: Slot): void {
    clearTimeout(slot.task?.stuckTimer);
    slot.task = undefined;
    // Its call returned after the close gave up on it: now it can be stopped, or it would keep an
    // in-process caller (vlm eval, a test) from exiting.
    if (slot.abandoned) return void slot.worker.terminate();
    if (slot.stuck) {
      slot.stuck = false;
      this.log.info('a stuck inference worker answered at last and takes requests again');
      this.announceAvailability();
    }
    if (this.outage()) return;
    const next = this.queue.shift();
    if (next) this.dispatch(slot, next);
  }

  private onExit(slot: Slot, code: number): void {
    const i = this.slots.indexOf(slot);
    // While closing, a worker that exits ends its job: its caller is answered (if close's grace had
    // not already), and stopWorker need not wait for it. Nothing replaces it, so the caller is told
    // to go elsewhere, not that a replacement is coming.
    if (this.closed && slot.task) {
      this.settle(slot.task, VlmError.shuttingDown(`the inference worker exited (code ${code}) while the pool shut down`));
      slot.task = undefined;
    }
    if (i < 0 || this.closed) return;
    this.slots.splice(i, 1);
    clearTimeout(slot.task?.stuckTimer);
    if (slot.task) this.settle(slot.task, workerExited(code));
    // No replacement after a device fault: it would load onto the failed device, and fail, over and over.
    if (this.deviceFault !== undefined) return;
    this.log.error('inference worker exited; starting a replacement', { code });
    this.replace(i, 0);
    this.announceAvailability();
  }

  private replace(index: number, attempt: number): void {
    // Tracked for close(), which must not end the process while this worker loads: terminating it,
    // or exiting, inside a native session create aborts the process (see stopWorker).
    const start: Promise<void> = InferencePool.startWorker(this.deps, index, this.identity)
      .then(async ({ worker }) => {
        this.starting.delete(start);
        // After a device fault a worker that loaded anyway would run on the failed device.
        if (this.closed || this.deviceFault !== undefined) return void (await worker.terminate());
        this.attach(worker);
        const next = this.queue.shift();
        if (next) this.dispatch(this.slots[this.slots.length - 1]!, next);
      })
      .catch((err: unknown) => {
        this.starting.delete(start);
        if (this.closed) return;
        if (err instanceof VlmError && err.reason === 'DEVICE_FAULT') return this.failDevice(err.message);
        if (this.deviceFault !== undefined) return;
        const delayMs = Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** attempt);
        this.log.error('replacement worker failed to start; retrying', { error: (err as Error).message, retry_in_ms: delayMs, workers: this.slots.length });
        // Without a worker that can run them the queued jobs would only wait for their deadlines.
        this.failQueuedIfOut();
        this.announceAvailability();
        const timer = setTimeout(() => {
          this.restartTimers.delete(timer);
          if (!this.closed && this.deviceFault === undefined) this.replace(index, attempt + 1);
        }, delayMs);
        timer.unref();
        this.restartTimers.add(timer);
      });
    this.starting.add(start);
  }
}

interface WorkerIdentity {
  contentHash: string;
  /** Undefined until a worker opens its first session (no warm-up and lazy sessions). */
  provider: string | undefined;
}

function identityMismatch(want: WorkerIdentity, got: WorkerIdentity): string | undefined {
  if (got.contentHash !== want.contentHash) return `loaded bundle ${got.contentHash}, but the service serves ${want.contentHash}`;
  if (want.provider !== undefined && got.provider !== undefined && got.provider !== want.provider) return `runs on ${got.provider}, but the service runs on ${want.provider}`;
  return undefined;
}

/** How long a closing pool waits for an aborted job's worker to reach its next check before it leaves it running. */
const STOP_WAIT_MS = 5_000;
const RESTART_BASE_MS = 500;
const RESTART_MAX_MS = 30_000;

/**
 * Retry hints sent with the errors below (google.rpc.RetryInfo). A full queue drains in about a
 * request's time; a replacement worker takes about as long to start; another replica can take a
 * request refused by a closing pool at once.
 */
export const BUSY_RETRY_MS = 1_000;
const NO_WORKER_RETRY_MS = 1_000;

function noWorker(): VlmError {
  return new VlmError('UNAVAILABLE', 'no inference worker is running (a replacement is being started); retry later or on another replica', { reason: 'NO_WORKER', retryDelayMs: NO_WORKER_RETRY_MS });
}

/**
 * INTERNAL, not UNAVAILABLE: callers and the hop retry UNAVAILABLE elsewhere, and a request that
 * kills its worker would kill one on every replica it is retried on.
 */
function workerExited(code: number): VlmError {
  return new VlmError('INTERNAL', `the inference worker exited (code ${code}) while running this request; it is being replaced`, { reason: 'WORKER_LOST' });
}

/** The wait for a worker as `vlm.queue`, then the worker's own spans, all under the caller's span. */
function replayJobSpans(trace: NonNullable<Task['trace']>, spans: readonly SpanTiming[] = []): void {
  const queued: SpanTiming = { name: SpanName.Queue, attributes: {}, startMs: trace.queuedAt, endMs: trace.dispatchedAt ?? trace.queuedAt, parent: -1, events: [] };
  replaySpans([queued, ...spans.map((s) => ({ ...s, parent: s.parent < 0 ? -1 : s.parent + 1 }))], trace.parent);
}

/** The wait of a job that ended before any worker took it, as `vlm.queue` ending now with its error. */
function replayUndispatched(trace: NonNullable<Task['trace']>, err: VlmError): void {
  const queued: SpanTiming = { name: SpanName.Queue, attributes: { [ATTR_ERROR_TYPE]: err.code }, startMs: trace.queuedAt, endMs: epochMillis(), parent: -1, events: [] };
  if (isServerFault(err.code)) queued.status = { code: 'ERROR', message: err.message };
  replaySpans([queued], trace.parent);
}

/** Whether a view spans its whole buffer: only then can the buffer move without taking other data along. */
function ownsBuffer(view: ArrayBufferView): boolean {
  return view.byteOffset === 0 && view.byteLength === view.buffer.byteLength && view.buffer instanceof ArrayBuffer;
}

/** A private copy the pool can transfer to the worker without detaching the caller's buffer. */
function copyBytes(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(b.byteLength);
  out.set(b);
  return out;
}
