/**
 * The inference pool runs the engine on worker threads: the caller's event loop keeps running, a
 * full queue refuses work at once, and cancellation reaches queued and running jobs.
 */
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { Worker } from 'node:worker_threads';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testConfig } from '../shared/config';
import { VlmError } from '../shared/errors';
import { InferencePool, type PoolPlace } from '../shared/worker';
import type { SamplingParams } from '../shared/engine/sampling';
import { failure, policy, RANDOM_BUNDLE, recordingLogger, ROOT, stoppedJob, type LogLine } from './core-helpers';
import { eventually } from './service-helpers';
import { floatRows, rowsFloat32 } from '../shared/tensor/float-rows';

const sampling: SamplingParams = { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 12 };
/** As many tokens as the random bundle's 256 positions leave after this prompt; it emits no stop token before. */
const LONG = 200;
let pool: InferencePool;
let image: Buffer;
const poolLog: LogLine[] = [];

beforeAll(async () => {
  const config = testConfig({ model: { dir: RANDOM_BUNDLE }, runtime: { workers: 1 }, limits: { queueSize: 1 } });
  pool = await InferencePool.start({ ...config, warmUp: 'both', log: recordingLogger(poolLog, 'pool') });
  image = await sharp({ create: { width: 48, height: 40, channels: 3, background: { r: 250, g: 200, b: 0 } } }).png().toBuffer();
});
afterAll(() => pool.close());

describe('InferencePool', () => {
  it('answers like the engine, streaming deltas that add up to the text', async () => {
    let streamed = '';
    const r = await pool.ask(image, 'what color is it?', sampling, policy(), { onDelta: (d) => (streamed += d) });
    expect(streamed).toBe(r.generate.text);
    expect(r.encode.embeds.dims).toEqual([16, 48]);
    expect(r.generate.perLayerVisualTokens).toEqual([16, 16, 16, 16]);
    expect(pool.provider).toBe('cpu');
  });

  it('moves the visual tokens to the worker when the caller gives them up, and copies them otherwise', async () => {
    const { encode } = await pool.ask(image, 'what color is it?', sampling, policy());
    const fresh = () => ({ embeds: { ...encode.embeds, data: encode.embeds.data.slice() } as typeof encode.embeds, origin: encode.origin });
    const kept = fresh();
    const copied = await pool.generate(kept, 'what color is it?', sampling, policy());
    expect(kept.embeds.data.length).toBe(16 * 48);
    const given = fresh();
    const moved = await pool.generate(given, 'what color is it?', sampling, policy(), { transferVisual: true });
    expect(given.embeds.data.length).toBe(0);
    expect(moved.text).toBe(copied.text);
    // Given up twice: refused at once, and the worker is free for the next job (postMessage would
    // have dropped the run message and held it forever).
    const again = await failure(pool.generate(given, 'what color is it?', sampling, policy(), { transferVisual: true }));
    expect(again.message).toMatch(/hold 0 values for dims \[16, 48\]/);
    expect(pool.stats.busy).toBe(0);
    // A view into a larger buffer is copied even when given up: moving it would take the rest along.
    const larger = new Float32Array(2 * 16 * 48);
    larger.set(rowsFloat32(encode.embeds), 16 * 48);
    const view = { embeds: floatRows(encode.embeds.dims, 'float32', larger.subarray(16 * 48)), origin: encode.origin };
    expect((await pool.generate(view, 'what color is it?', sampling, policy(), { transferVisual: true })).text).toBe(copied.text);
    expect(larger.length).toBe(2 * 16 * 48);
  });

  it('infers without the caller thread: a job finishes while the caller is blocked', async () => {
    // The caller's thread is frozen (no timers, no I/O, no message handling) for far longer than one
    // inference takes. Work done on a worker thread is complete when the caller wakes, so the answer
    // arrives within a couple of event-loop turns; work done on the caller's thread would only start
    // then, and need at least one turn per generated token.
    const t0 = performance.now();
    const warm = await pool.ask(image, 'what shape is it?', sampling, policy());
    const oneJobMs = performance.now() - t0;
    expect(warm.generate.tokenIds.length).toBeGreaterThan(3);

    let done = false;
    const job = pool.ask(image, 'what shape is it?', sampling, policy()).then((r) => ((done = true), r));
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Math.max(3000, 50 * oneJobMs));
    let turns = 0;
    while (!done && turns < 1000) {
      await new Promise((resolve) => setImmediate(resolve));
      turns++;
    }
    const r = await job;
    expect(r.generate.text).toBe(warm.generate.text);
    expect(turns).toBeLessThan(Math.min(4, r.generate.tokenIds.length));
  });

  it('says whether it has room before a job is sent (what the language service checks before its vision hop)', async () => {
    expect(pool.refusal()).toBeNull();
    const running = pool.ask(image, 'what color is it?', sampling, policy());
    const queued = pool.ask(image, 'what color is it?', sampling, policy());
    expect(pool.refusal()).toMatchObject({ code: 'RESOURCE_EXHAUSTED', reason: 'QUEUE_FULL' });
    expect(() => pool.reserve()).toThrow(expect.objectContaining({ code: 'RESOURCE_EXHAUSTED', reason: 'QUEUE_FULL' }));
    await Promise.all([running, queued]);
    expect(pool.refusal()).toBeNull();
    const closed = await InferencePool.start(testConfig({ model: { dir: RANDOM_BUNDLE }, runtime: { workers: 1 } }));
    await closed.close();
    expect(() => closed.reserve()).toThrow(expect.objectContaining({ code: 'UNAVAILABLE', reason: 'SHUTTING_DOWN' }));
  });

  it('counts a held place as taken until its job takes it or it is released (a burst is refused before its vision encodes)', async () => {
    // One worker and a queue of one: two places.
    const first = pool.reserve();
    const second = pool.reserve();
    expect(() => pool.reserve()).toThrow(expect.objectContaining({ reason: 'QUEUE_FULL', message: expect.stringMatching(/2 more places held by requests whose images are being encoded/) }));
    expect((await failure(pool.ask(image, 'what color is it?', sampling, policy()))).reason).toBe('QUEUE_FULL');
    // The holders' jobs are taken although every place is counted taken: they hold them.
    const { encode } = await pool.ask(image, 'what color is it?', sampling, policy(), { place: first });
    expect(pool.refusal()).toBeNull(); // first's place is free again once its job is done
    const jobs = [pool.generate(encode, 'what color is it?', sampling, policy(), { place: second }), pool.generate(encode, 'what color is it?', sampling, policy())];
    expect(pool.refusal()).toMatchObject({ reason: 'QUEUE_FULL' });
    await expect(Promise.all(jobs)).resolves.toHaveLength(2);
    // A place its job took gives nothing back when released afterwards.
    first.release();
    second.release();
    const again = [pool.reserve(), pool.reserve()];
    expect(() => pool.reserve()).toThrow(expect.objectContaining({ reason: 'QUEUE_FULL' }));
    for (const place of again) place.release();
    expect(pool.refusal()).toBeNull();
  });

  it('gives back a held place whose job is refused before it runs (an aborted signal)', async () => {
    const place = pool.reserve();
    const other = pool.reserve();
    const freed: PoolPlace[] = [];
    try {
      const aborted = AbortSignal.abort(new VlmError('CANCELLED', 'gone'));
      const { encode } = await pool.ask(image, 'what color is it?', sampling, policy(), { place: other });
      expect((await failure(pool.generate(encode, 'what color is it?', sampling, policy(), { place, signal: aborted }))).code).toBe('CANCELLED');
      // Both places are free again: a leaked one would leave room for one only.
      freed.push(pool.reserve(), pool.reserve());
      expect(() => pool.reserve()).toThrow(expect.objectContaining({ reason: 'QUEUE_FULL' }));
    } finally {
      for (const p of [place, other, ...freed]) p.release();
    }
  });

  it('refuses work beyond the queue with RESOURCE_EXHAUSTED, and still serves what it accepted', async () => {
    const running = pool.ask(image, 'what color is it?', sampling, policy());
    const queued = pool.ask(image, 'what color is it?', sampling, policy());
    const refused = await failure(pool.ask(image, 'what color is it?', sampling, policy()));
    expect(refused.code).toBe('RESOURCE_EXHAUSTED');
    expect(refused.message).toMatch(/1 inference workers are busy and 1 requests are queued \(limit 1\)/);
    expect([refused.reason, refused.retryDelayMs]).toEqual(['QUEUE_FULL', 1000]);
    await expect(running).resolves.toBeDefined();
    await expect(queued).resolves.toBeDefined();
  });

  it('runs an uncancelled long job to its last token (what the cancellation test stops short of)', async () => {
    const r = await pool.ask(image, 'what color is it?', { ...sampling, maxNewTokens: LONG }, policy());
    expect(r.generate.tokenIds).toHaveLength(LONG);
    expect(r.generate.finishReason).toBe('length');
    // The first token came from prefill's logits; each later one took a decode step.
    expect(r.generate.decodeSteps).toBe(LONG - 1);
  });

  it('cancels a running job from its stream: the worker stops within a few decode steps and takes new work', async () => {
    const controller = new AbortController();
    const job = pool.ask(image, 'what color is it?', { ...sampling, maxNewTokens: LONG }, policy(), {
      signal: controller.signal,
      requestId: 'cancelled-on-first-token',
      traceIds: { trace_id: '4bf92f3577b34da6a3ce929d0e0e4736', span_id: '00f067aa0ba902b7' },
      onDelta: () => controller.abort(),
    });
    const e = await failure(job);
    expect(e.code).toBe('CANCELLED');
    // The caller's promise settles at once; the worker's own answer says where it stopped. A worker
    // that ignored the abort would generate all LONG tokens and answer with a result instead (logged
    // as 'aborted job ran to completion'). The abort leaves after the first token reaches this thread,
    // so a few more steps may run meanwhile: a quarter of the job is a wide margin for a slow machine.
    const stopped = await stoppedJob(poolLog, 'cancelled-on-first-token');
    // Found from the call's trace as from its request id.
    expect(stopped).toMatchObject({ kind: 'ask', code: 'CANCELLED', aborted: true, trace_id: '4bf92f3577b34da6a3ce929d0e0e4736', span_id: '00f067aa0ba902b7' });
    expect(stopped.decode_steps).toBeGreaterThanOrEqual(1);
    expect(stopped.decode_steps).toBeLessThan(LONG / 4);
    expect(pool.stats.busy).toBe(0);
    await expect(pool.ask(image, 'what color is it?', sampling, policy())).resolves.toBeDefined();
  });

  it('drops a queued job when its caller cancels, with the caller reason', async () => {
    const running = pool.ask(image, 'what color is it?', sampling, policy());
    const controller = new AbortController();
    const queued = pool.ask(image, 'what color is it?', sampling, policy(), { signal: controller.signal });
    controller.abort(new VlmError('DEADLINE_EXCEEDED', 'the caller deadline passed'));
    const e = await failure(queued);
    expect(e.code).toBe('DEADLINE_EXCEEDED');
    expect(pool.stats.queued).toBe(0);
    await running;
  });

  it('brings errors back as VlmError with their code', async () => {
    const e = await failure(pool.ask(Buffer.from('not an image'), 'what color is it?', sampling, policy()));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/cannot be read as an image/);
    const late = await failure(pool.ask(image, 'what color is it?', sampling, policy(), { deadline: Date.now() - 1 }));
    expect(late.code).toBe('DEADLINE_EXCEEDED');
  });

  it('fails new jobs at once with UNAVAILABLE while no worker can start, and serves again once one can', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'vlm-pool-'));
    await cp(RANDOM_BUNDLE, dir, { recursive: true });
    const own = await InferencePool.start(testConfig({ model: { dir }, runtime: { workers: 1 }, limits: { queueSize: 2 } }));
    try {
      // The only worker dies and its replacement cannot load the (now missing) bundle. (It is stopped
      // idle: terminating a worker inside an ONNX Runtime call aborts the whole process.)
      await rm(dir, { recursive: true, force: true });
      const { slots } = own as unknown as { slots: Array<{ worker: Worker }> };
      await slots[0]!.worker.terminate();
      const t0 = Date.now();
      const first = await failure(own.ask(image, 'what color is it?', sampling, policy()));
      expect([first.code, first.reason, first.retryDelayMs]).toEqual(['UNAVAILABLE', 'NO_WORKER', 1000]);
      expect((await failure(own.ask(image, 'what color is it?', sampling, policy()))).code).toBe('UNAVAILABLE');
      expect(Date.now() - t0).toBeLessThan(15_000); // not the 60 s default deadline

      // The start is retried with backoff: with the bundle back, the pool answers again.
      await cp(RANDOM_BUNDLE, dir, { recursive: true });
      let answer: string | undefined;
      for (let i = 0; i < 60 && answer === undefined; i++) {
        try {
          answer = (await own.ask(image, 'what color is it?', sampling, policy())).generate.text;
        } catch (err) {
          expect((err as VlmError).code).toBe('UNAVAILABLE');
          await new Promise((r) => setTimeout(r, 250));
        }
      }
      expect(typeof answer).toBe('string');
    } finally {
      await own.close();
      await rm(dir, { recursive: true, force: true });
    }
  }, 40_000);

  it('refuses a replacement worker that loaded another bundle: it never answers from a model the service does not advertise', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'vlm-pool-'));
    await cp(RANDOM_BUNDLE, dir, { recursive: true });
    const lines: LogLine[] = [];
    const own = await InferencePool.start({ ...testConfig({ model: { dir }, runtime: { workers: 1 }, limits: { queueSize: 2 } }), log: recordingLogger(lines, 'pool') });
    try {
      const advertised = own.manifest.content_hash;
      // The folder is replaced under the running service (another bundle of the same format), then
      // the only worker dies: its replacement loads what is there now.
      await rm(dir, { recursive: true, force: true });
      await cp(path.join(ROOT, 'test/fixtures/random-bundle-f16'), dir, { recursive: true });
      const { slots } = own as unknown as { slots: Array<{ worker: Worker }> };
      await slots[0]!.worker.terminate();
      // Long enough for several replacement attempts (each loads the bundle in well under a second).
      for (const until = Date.now() + 3000; Date.now() < until; ) {
        const e = await failure(own.ask(image, 'what color is it?', sampling, policy()));
        expect(e.code).toBe('UNAVAILABLE');
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(own.manifest.content_hash).toBe(advertised);
      expect(own.stats.workers).toBe(0);
      // Refused for the bundle it loaded, not for failing to load one (a loaded machine may need
      // longer than the loop above for the first attempt).
      const refusals = () => lines.filter((l) => l.msg === 'replacement worker failed to start; retrying');
      await eventually(() => refusals().length > 0, 15_000, 50);
      expect(own.stats.workers).toBe(0);
      for (const l of refusals()) expect(String(l['error'])).toMatch(/loaded bundle sha256:\w+, but the service serves sha256:\w+/);
    } finally {
      await own.close();
      await rm(dir, { recursive: true, force: true });
    }
  }, 40_000);
});

describe('InferencePool places held outside the queue, with several callers', () => {
  let fair: InferencePool;
  beforeAll(async () => {
    const config = testConfig({ model: { dir: RANDOM_BUNDLE }, runtime: { workers: 1 }, limits: { queueSize: 2 } });
    fair = await InferencePool.start({ ...config, log: recordingLogger([], 'pool') });
  }, 40_000);
  afterAll(() => fair?.close());

  it('do not lock a lighter caller out: one caller holding every place leaves room past the limit for another', () => {
    const a = [fair.reserve('a'), fair.reserve('a'), fair.reserve('a')]; // one worker and a queue of two: every place
    expect(fair.stats).toMatchObject({ busy: 0, queued: 0 });
    const b = fair.reserve('b');
    // a, the heavy one, is refused; b goes past the limit while two lighter than a, up to the queue's size past it.
    expect(fair.refusal('a')).toMatchObject({ reason: 'QUEUE_FULL', message: expect.stringMatching(/4 more places held/) });
    expect(fair.refusal('b')).toBeNull();
    const b2 = fair.reserve('b');
    expect(fair.refusal('b')).toMatchObject({ reason: 'QUEUE_FULL' });
    expect(fair.refusal('c')).toMatchObject({ reason: 'QUEUE_FULL' }); // two past the limit: no further
    for (const p of [...a, b, b2]) p.release();
    expect(fair.refusal('a')).toBeNull();
  });

  it("weigh as the caller's queued jobs do: a caller cannot reserve its way past a heavier one, and sheds only when its job comes", async () => {
    const asked = (caller: string, place?: PoolPlace) => fair.ask(image, 'what color is it?', sampling, policy(), { caller, place });
    const a = [asked('a'), asked('a'), asked('a')]; // one running, two queued: full
    const b = fair.reserve('b');
    expect(fair.stats.queued).toBe(2); // nothing shed yet
    // b holds one and a has two queued: b is not two lighter any more.
    expect(fair.refusal('b')).toMatchObject({ reason: 'QUEUE_FULL' });
    const shed = failure(a[2]!);
    const bJob = asked('b', b);
    expect((await shed).message).toMatch(/shed from the full queue/);
    await Promise.all([a[0], a[1], bJob]);
    expect(fair.stats).toMatchObject({ busy: 0, queued: 0 });
  }, 40_000);

  it('go past the limit by at most the queue\'s size, however many callers count on the same heavier one to shed', async () => {
    const asked = (caller: string, place?: PoolPlace) => fair.ask(image, 'what color is it?', sampling, policy(), { caller, place }).catch((e: VlmError) => e.reason);
    const a = [asked('a'), asked('a'), asked('a')]; // one running, two queued: full
    const held: Array<[string, PoolPlace]> = [];
    for (const caller of ['b', 'c', 'd', 'e', 'f', 'g']) {
      try {
        held.push([caller, fair.reserve(caller)]);
      } catch (err) {
        expect((err as VlmError).reason).toBe('QUEUE_FULL');
      }
    }
    expect(held.length).toBe(2); // the queue's size past the limit
    const jobs = held.map(([caller, place]) => asked(caller, place));
    expect(fair.stats.queued).toBeLessThanOrEqual(2 * 2);
    await Promise.all([...a, ...jobs]);
  }, 60_000);
});

describe('InferencePool with several callers', () => {
  it('serves callers in turn and sheds the heaviest caller\'s newest job rather than refuse a lighter caller', async () => {
    const config = testConfig({ model: { dir: RANDOM_BUNDLE }, runtime: { workers: 1 }, limits: { queueSize: 3 } });
    const fair = await InferencePool.start({ ...config, warmUp: 'both', log: recordingLogger([], 'pool') });
    try {
      const finished: string[] = [];
      const ask = (caller: string, id: string, place?: PoolPlace) =>
        fair.ask(image, 'what color is it?', sampling, policy(), { caller, requestId: id, place }).then(() => void finished.push(id));
      const running = ask('a', 'a0');
      const a = [ask('a', 'a1'), ask('a', 'a2')];
      const shed = ask('a', 'a3');
      // Full with a's jobs: a is refused, b is not.
      expect(fair.refusal('a')).toMatchObject({ reason: 'QUEUE_FULL' });
      expect(fair.refusal('b')).toBeNull();
      // b holds its place (as during a vision hop). Nothing is shed until its job comes (the hop may
      // fail), but the place counts: a may not take another.
      const place = fair.reserve('b');
      expect(fair.stats.queued).toBe(3);
      expect(fair.refusal('a')).toMatchObject({ reason: 'QUEUE_FULL' });
      const b = ask('b', 'b1', place);
      expect(fair.stats.queued).toBe(3);
      const e = await failure(shed);
      expect([e.code, e.reason, e.retryDelayMs]).toEqual(['RESOURCE_EXHAUSTED', 'QUEUE_FULL', 1000]);
      expect(e.message).toMatch(/shed from the full queue to admit another caller's request: this caller had 3 of the 3 waiting/);
      await Promise.all([running, ...a, b]);
      // b's job ran second, not after all of a's.
      expect(finished).toEqual(['a0', 'a1', 'b1', 'a2']);
    } finally {
      await fair.close();
    }
  });
});
