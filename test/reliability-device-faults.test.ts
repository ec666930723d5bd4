/**
 * A GPU in trouble, as the service sees it: a sticky CUDA error (the context is corrupt for the whole
 * process) and a model call that never returns. Either way the replica cannot serve again until its
 * process is replaced, so it says NOT_SERVING (readiness takes it out, liveness restarts it) and tells
 * callers to go elsewhere, instead of failing every request while its health stays SERVING. The faults
 * are injected below ONNX Runtime's JavaScript API (test/fixtures/fault/ort-fault.cjs): a CPU produces
 * neither, and everything above it (worker, pool, service, health) runs for real.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:http2';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { credentials, Metadata, status as GrpcCode } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { VisionServiceClient } from '../gen/vlm/v1/vision_service';
import { ReductionPolicy } from '../gen/vlm/v1/common';
import { decodeStatusDetails } from '../services/common/status';
import { running } from '../cli/child-running';
import { shapesImage } from './reliability-helpers';
import { collect, eventually, healthStatus } from './service-helpers';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'bin', 'vlm.js');
const BUNDLE = path.join(ROOT, 'test/fixtures/random-bundle');
const FAULT = path.join(ROOT, 'test/fixtures/fault/ort-fault.cjs');

interface Vision {
  readonly process: ChildProcess;
  readonly address: string;
  readonly client: VisionServiceClient;
  readonly stderr: () => string;
  /** What session.run does from now on: '' (runs), 'device-fault' or 'hang'. */
  readonly fault: (mode: string) => void;
}

/** A `vlm serve vision` process with the fault hook, on a port of the kernel's choosing; killed by the caller. */
async function startVision(started: ChildProcess[], env: Record<string, string> = {}): Promise<Vision> {
  const dir = mkdtempSync(path.join(tmpdir(), 'vlm-fault-'));
  const modeFile = path.join(dir, 'mode');
  const child = spawn(process.execPath, [BIN, 'serve', 'vision', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--metrics-port', '0', '--health-port', '0', '--log-level', 'info'], {
    cwd: ROOT,
    env: { ...process.env, NODE_OPTIONS: `--require ${FAULT}`, VLM_TEST_ORT_FAULT: modeFile, VLM_INTRA_OP_THREADS: '1', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  started.push(child);
  child.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const serving = /"msg":"serving","address":"(127\.0\.0\.1:\d+)"/;
  await eventually(() => serving.test(stderr) || !running(child), 60_000, 100);
  const address = serving.exec(stderr)?.[1];
  if (!address) throw new Error(`vision did not start: ${stderr}`);
  return { process: child, address, client: new VisionServiceClient(address, credentials.createInsecure()), stderr: () => stderr, fault: (mode) => writeFileSync(modeFile, mode) };
}

async function encode(vision: Vision, deadlineMs = 30_000, policy?: Partial<ReductionPolicy>) {
  const call = vision.client.encode({ image: await shapesImage(), policy: policy ? ReductionPolicy.fromPartial(policy) : undefined, limits: undefined }, new Metadata(), { deadline: Date.now() + deadlineMs });
  const { error } = await collect(call);
  return { code: error?.code ?? GrpcCode.OK, message: error?.details ?? '', details: decodeStatusDetails(error?.metadata) };
}

describe('a replica whose GPU is in trouble', () => {
  let vision: Vision | undefined;
  const started: ChildProcess[] = [];
  afterEach(async () => {
    vision?.client.close();
    vision = undefined;
    // SIGKILL, as the kubelet does at its grace period's end: quick, whatever a test left running.
    // Waited for, so its temporary folder is gone too.
    for (const child of started.splice(0)) {
      if (!running(child)) continue;
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
  });

  it('fails the request it was running with DEVICE_FAULT, then says NOT_SERVING, closes its connections and sends every later request elsewhere, for good', async () => {
    vision = await startVision(started);
    expect((await encode(vision)).code).toBe(GrpcCode.OK);
    // A client's long-lived connection: told to go (GOAWAY), so it reconnects to other replicas
    // instead of sending its share of calls to one that refuses them all.
    const session = connect(`http://${vision.address}`);
    session.on('error', () => undefined);
    const goaway = new Promise<number>((resolve) => session.once('goaway', (code: number) => resolve(code)));

    vision.fault('device-fault');
    const failed = await encode(vision);
    expect(failed.code).toBe(GrpcCode.INTERNAL);
    expect(failed.details.reason).toBe('DEVICE_FAULT');
    expect(failed.details.retryDelayMs).toBeUndefined();
    expect(failed.message).toMatch(/^the GPU of this replica failed while running this request \(stage vision\/\S+ on cpu\); the replica stops serving and is restarted$/);
    await eventually(async () => (await healthStatus(vision!.address)) === 'NOT_SERVING', 10_000, 100);
    const within5s = (p: Promise<number>) => Promise.race([p, new Promise((resolve) => setTimeout(() => resolve('no GOAWAY'), 5000).unref())]);
    expect(await within5s(goaway)).toBe(0);
    session.destroy();
    // A client reconnecting before readiness and its resolver catch up lands here again: told to go too.
    const again = connect(`http://${vision.address}`);
    again.on('error', () => undefined);
    expect(await within5s(new Promise<number>((resolve) => again.once('goaway', (code: number) => resolve(code))))).toBe(0);
    again.destroy();
    // The runtime's own text is in the log, for the operator, and nowhere in what the caller got.
    expect(vision.stderr()).toMatch(/"msg":"job failed".*"runtime":"CUDA failure 700: an illegal memory access was encountered/);
    expect(vision.stderr()).not.toMatch(/"msg":"call".*illegal memory access/);
    expect(failed.message).not.toMatch(/illegal|CUDA failure/);
    expect(vision.stderr()).toMatch(/"msg":"the GPU failed in a way it does not recover from: this replica takes no more requests/);
    expect(vision.stderr()).toMatch(/"msg":"the inference pool cannot run requests: NOT_SERVING","why":"this replica's GPU failed/);

    // A CUDA context stays broken, so nothing is tried on it again, even if a run would now pass.
    vision.fault('');
    const refused = await encode(vision);
    expect(refused.code).toBe(GrpcCode.UNAVAILABLE);
    expect(refused.details).toMatchObject({ reason: 'NO_WORKER', retryDelayMs: 0 });
    expect(refused.message).toMatch(/GPU failed .*retry on another replica/);
    expect(await healthStatus(vision.address)).toBe('NOT_SERVING');
  }, 90_000);

  it('answers a request the device had no memory for RESOURCE_EXHAUSTED OUT_OF_MEMORY with a retry delay, and stays SERVING (memory frees)', async () => {
    vision = await startVision(started);
    vision.fault('out-of-memory');
    const failed = await encode(vision);
    expect(failed.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    expect(failed.details).toMatchObject({ reason: 'OUT_OF_MEMORY', retryDelayMs: 1000 });
    expect(failed.message).toMatch(/ran out of memory on cpu/);
    expect(failed.message).not.toMatch(/bfc_arena/);
    vision.fault('');
    expect((await encode(vision)).code).toBe(GrpcCode.OK);
    expect(await healthStatus(vision.address)).toBe('SERVING');
  }, 90_000);

  it('answers a request whose method needs a graph that fails to open FAILED_PRECONDITION without a retry delay, and serves the others', async () => {
    vision = await startVision(started);
    vision.fault('open-fails');
    const failed = await encode(vision, 30_000, { visionMethod: 'tome', budget: { $case: 'budgetPercent', budgetPercent: 50 } });
    expect(failed.code).toBe(GrpcCode.FAILED_PRECONDITION);
    expect(failed.details.retryDelayMs).toBeUndefined();
    expect(failed.message).toMatch(/^graph vision\/layer_\d+\.scores could not be read: its file is not a model this runtime can load/);
    expect(failed.message).not.toMatch(/Protobuf|\.onnx/);
    expect(vision.stderr()).toMatch(/"msg":"graph file could not be read".*Protobuf parsing failed/);
    expect((await encode(vision)).code).toBe(GrpcCode.OK); // unreduced needs no scores graph
    expect(await healthStatus(vision.address)).toBe('SERVING');
  }, 90_000);

  it('counts a worker out once it has not answered VLM_STUCK_WORKER_MS after its request was stopped, and with no other worker says NOT_SERVING', async () => {
    vision = await startVision(started, { VLM_STUCK_WORKER_MS: '4000' });
    expect((await encode(vision)).code).toBe(GrpcCode.OK);

    vision.fault('hang');
    expect((await encode(vision, 1000)).code).toBe(GrpcCode.DEADLINE_EXCEEDED);
    // Still SERVING while the worker is given time to come back (a long model call is no fault).
    expect(await healthStatus(vision.address)).toBe('SERVING');
    await eventually(async () => (await healthStatus(vision!.address)) === 'NOT_SERVING', 10_000, 100);
    expect(vision.stderr()).toMatch(/"msg":"an inference worker has not answered since its request was stopped: stuck in a model call".*"waited_ms":4000/);

    const refused = await encode(vision);
    expect(refused.code).toBe(GrpcCode.UNAVAILABLE);
    expect(refused.details).toMatchObject({ reason: 'NO_WORKER', retryDelayMs: 0 });
    expect(refused.message).toMatch(/stuck in a model call/);

    // The liveness probe's restart: the stuck worker has had its time, so the stop does not wait for it.
    const stop = await stopped(vision);
    expect(stop.signal).toBe('SIGKILL');
    expect(stop.ms).toBeLessThan(3_000);
    expect(vision.stderr()).toMatch(/"msg":"an inference worker is still inside a model call after its request was stopped; the pool closes without it \(stopping it mid-call would abort the process: only ending the process stops it\)".*"stuck":true,"waited_ms":0/);
    expect(vision.stderr()).toMatch(/"msg":"stopped with inference workers stuck in a model call or a model load; exiting without them","stuck":1/);
  }, 90_000);

  it('on a stop, gives a worker still inside a model call 5 s to come back (not VLM_STUCK_WORKER_MS), then ends the process without it instead of waiting for the kill a grace period later', async () => {
    vision = await startVision(started, { VLM_STUCK_WORKER_MS: '60000' });
    vision.fault('hang');
    expect((await encode(vision, 1000)).code).toBe(GrpcCode.DEADLINE_EXCEEDED);

    const stop = await stopped(vision);
    expect(stop.signal).toBe('SIGKILL');
    expect(stop.ms).toBeGreaterThanOrEqual(4_500);
    expect(stop.ms).toBeLessThan(20_000);
    const log = vision.stderr();
    expect(log).toMatch(/"msg":"stopping","signal":"SIGTERM"/);
    expect(log).toMatch(/"msg":"an inference worker is still inside a model call after its request was stopped; the pool closes without it.*"stuck":false,"waited_ms":5000/);
    expect(log).toMatch(/"msg":"stopped with inference workers stuck in a model call or a model load; exiting without them","stuck":1/);
  }, 90_000);

  it('on a stop while a replacement worker is still loading the model, waits 5 s for it, then ends the process without it', async () => {
    // Eager sessions: the replacement opens its sessions while it loads, which is where it hangs.
    const v = (vision = await startVision(started, { VLM_EAGER_SESSIONS: 'true' }));
    v.fault('crash');
    expect((await encode(v)).code).not.toBe(GrpcCode.OK);
    await eventually(() => /"msg":"inference worker exited; starting a replacement"/.test(v.stderr()), 10_000, 50);

    const stop = await stopped(vision);
    expect(stop.signal).toBe('SIGKILL');
    expect(stop.ms).toBeGreaterThanOrEqual(4_500);
    expect(stop.ms).toBeLessThan(20_000);
    const log = vision.stderr();
    expect(log).toMatch(/"msg":"a replacement inference worker is still loading the model; the pool closes without it.*"loading":1,"waited_ms":5000/);
    expect(log).toMatch(/"msg":"stopped with inference workers stuck in a model call or a model load; exiting without them","stuck":1/);
  }, 90_000);

  it('ends a start whose warm-up hangs in a model call once its deadline and 5 s have passed, instead of staying up for the startup probe to kill', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'vlm-fault-'));
    const modeFile = path.join(dir, 'mode');
    writeFileSync(modeFile, 'hang');
    const child = spawn(process.execPath, [BIN, 'serve', 'vision', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--metrics-port', '0', '--deadline-ms', '1500', '--log-level', 'info'], {
      cwd: ROOT,
      env: { ...process.env, NODE_OPTIONS: `--require ${FAULT}`, VLM_TEST_ORT_FAULT: modeFile, VLM_INTRA_OP_THREADS: '1' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    started.push(child);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const began = performance.now();
    const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    rmSync(dir, { recursive: true, force: true });
    expect({ code, signal }).toEqual({ code: null, signal: 'SIGKILL' });
    expect(performance.now() - began).toBeLessThan(30_000);
    expect(stderr).toMatch(/"msg":"warm-up failed; not serving"/);
    expect(stderr).toMatch(/"msg":"start failed with inference workers stuck in a model call or a model load; exiting without them","stuck":1/);
    expect(stderr).not.toMatch(/"msg":"serving"/);
  }, 60_000);

  it('on a stop with every worker idle, exits 0 and says nothing of stuck workers', async () => {
    vision = await startVision(started, { VLM_STUCK_WORKER_MS: '6000' });
    expect((await encode(vision)).code).toBe(GrpcCode.OK);
    const stop = await stopped(vision);
    expect(stop).toMatchObject({ code: 0, signal: null });
    expect(vision.stderr()).not.toMatch(/stuck in a model call|closes without it/);
  }, 90_000);
});

/** Sends SIGTERM and waits for the process to end: how, and how long it took. */
async function stopped(vision: Vision): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }> {
  const exited = once(vision.process, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  const started = performance.now();
  vision.process.kill('SIGTERM');
  const [code, signal] = await exited;
  return { code, signal, ms: performance.now() - started };
}
