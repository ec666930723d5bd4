/**
 * Faults across the hop, each ending in the right status with nothing left behind: no call in flight
 * on either service, no busy inference worker, no queued job. The services that are killed run as
 * their own processes (`vlm serve vision|language`), so SIGKILL is a real crash:
 * - vision unavailable at start (language starts anyway; UNAVAILABLE naming the target; answered
 *   once vision is up), vision SIGKILLed while encoding (UNAVAILABLE), a vision replica dying
 *   mid-stream while another is up (the Encode is repeated there: the caller sees an answer),
 *   vision slower than the deadline (DEADLINE_EXCEEDED; the service cancels its Encode), vision
 *   restarted (answered again);
 * - the client cancelling (CANCELLED; both workers stop, as their pools log);
 * - the language service SIGKILLed mid-generate and restarted (UNAVAILABLE, then answered on the
 *   same client channel; vision's call ended with the connection).
 * The child services run with a bearer token, and their stderr is checked for it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { credentials, Metadata, Server, status as GrpcCode, type ServerWritableStream } from '@grpc/grpc-js';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import type { RunningService } from '../services/common/lifecycle';
import { healthOf } from '../services/common/health-client';
import { decodeStatusDetails } from '../services/common/status';
import { EncodeResponse, VisionServiceClient, VisionServiceService, type EncodeRequest } from '../gen/vlm/v1/vision_service';
import { LanguageServiceClient } from '../gen/vlm/v1/language_service';
import { bindLoopback, collect, eventually, metadataWith } from './service-helpers';
import { ask, BUNDLE, pairConfig, recordingLogger, request, ROOT, shapesImage, type LogLine } from './reliability-helpers';
import { stoppedJob } from './core-helpers';
import { freePort } from '../cli/free-port';
import { running } from '../cli/child-running';

const TOKEN = 'fault-test-token-5b0c9e2d7a1f4e3c';
const BIN = path.join(ROOT, 'bin/vlm.js');

interface Child {
  readonly proc: ChildProcess;
  readonly stderr: () => string;
  readonly exited: Promise<void>;
  /** Its Prometheus endpoint, http://127.0.0.1:<port>/metrics. */
  readonly metricsPort: number;
}

const logs: string[] = [];

/**
 * `vlm serve <role>` as its own process on a given port, with the token and a Prometheus endpoint on
 * a free port; resolves once SERVING. A child that does not get there is killed before the error is
 * thrown: none outlives the test.
 */
async function serveProcess(role: 'vision' | 'language', port: number, extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<Child> {
  const metricsPort = await freePort();
  const flags = ['serve', role, '--model', BUNDLE, '--host', '127.0.0.1', `--${role}-port`, String(port), '--metrics-port', String(metricsPort), '--shutdown-grace-ms', '500', '--log-level', 'debug', ...extra];
  const proc = spawn(process.execPath, [BIN, ...flags], { env: { ...process.env, VLM_AUTH_TOKEN: TOKEN, VLM_INTRA_OP_THREADS: '1', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const child = { proc, stderr: () => err, exited, metricsPort };
  const address = `127.0.0.1:${port}`;
  try {
    await eventually(async () => {
      if (!running(proc)) throw new Error(`${role} exited during start-up:\n${err}`);
      return (await healthOf(address, 500).catch(() => 'DOWN')) === 'SERVING';
    }, 60_000, 100);
  } catch (e) {
    if (running(proc)) await kill(child, 'SIGKILL'); // a single service process: no children to orphan
    throw e;
  }
  return child;
}

/** The value of a metric (summed over its labels) on a child's Prometheus endpoint; throws when the endpoint or the series is missing. */
async function metric(child: Child, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${child.metricsPort}/metrics`)).text();
  const series = [...text.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`, 'gm'))].filter((m) => (m[1] ?? '').includes(labels));
  if (series.length === 0) throw new Error(`no ${name}${labels ? `{${labels}}` : ''} on the metrics endpoint`);
  return series.reduce((sum, m) => sum + Number(m[2]), 0);
}

async function kill(child: Child, signal: NodeJS.Signals): Promise<void> {
  logs.push(child.stderr());
  child.proc.kill(signal);
  await child.exited;
  logs.push(child.stderr());
}

function withToken(): Metadata {
  const md = new Metadata();
  md.set('authorization', `Bearer ${TOKEN}`);
  return md;
}

let big: Buffer;
/** A 3000x3000 JPEG: decoding and resizing it keeps a vision worker busy for a few hundred ms. */
async function bigJpeg(): Promise<Buffer> {
  const side = 3000;
  const raw = Buffer.alloc(side * side * 3);
  for (let i = 0; i < raw.length; i += 97) raw[i] = (i * 2654435761) >>> 24;
  return (big ??= await sharp(raw, { raw: { width: side, height: side, channels: 3 } }).jpeg({ quality: 40 }).toBuffer());
}

/** Nothing left behind on an in-process service. */
async function idle(svc: RunningService): Promise<void> {
  await eventually(() => svc.activeCalls() === 0 && svc.backend.pool.stats.busy === 0 && svc.backend.pool.stats.queued === 0, 5000, 10);
}

describe('faults across the hop', () => {
  let image: Buffer;
  beforeAll(async () => {
    image = await shapesImage();
    await bigJpeg();
  });

  afterAll(() => {
    // The token went to every child on every call; it must not be in their logs.
    const text = logs.join('\n');
    if (text === '') return; // (no child ran: a filtered run)
    expect(text).toContain('"msg":"call"');
    expect(text).not.toContain(TOKEN);
  });

  describe('the vision service down, killed, dying mid-stream, slow and restarted', () => {
    let visionPort: number;
    let language: RunningService;
    let client: LanguageServiceClient;
    const languageLog: LogLine[] = [];
    // What vision's model calls do (test/fixtures/fault/ort-fault.cjs): '' runs them, 'hang' holds an
    // Encode in flight for as long as the test needs, so a kill lands while it runs.
    let faultDir: string;
    const fault = (mode: string) => writeFileSync(path.join(faultDir, 'mode'), mode);
    const faultEnv = () => ({ NODE_OPTIONS: `--require ${path.join(ROOT, 'test/fixtures/fault/ort-fault.cjs')}`, VLM_TEST_ORT_FAULT: path.join(faultDir, 'mode') });

    beforeAll(async () => {
      faultDir = mkdtempSync(path.join(tmpdir(), 'vlm-faults-'));
      visionPort = await freePort();
      language = await startLanguageService(pairConfig({ visionTarget: `127.0.0.1:${visionPort}`, authToken: TOKEN }), { port: 0, log: recordingLogger(languageLog, 'language') });
      client = new LanguageServiceClient(language.address, credentials.createInsecure());
    });
    afterAll(async () => {
      client?.close();
      await language?.stop();
    });

    let vision: Child | undefined;
    afterAll(async () => {
      if (vision && running(vision.proc)) await kill(vision, 'SIGTERM');
      rmSync(faultDir, { recursive: true, force: true });
    });

    it('unavailable at start: the language service serves anyway, answers UNAVAILABLE and logs the target', async () => {
      expect(await healthOf(language.address, 1000)).toBe('SERVING');
      const out = await ask(client, request(image), { metadata: withToken(), deadlineMs: 5000 });
      expect(out.error?.code).toBe(GrpcCode.UNAVAILABLE);
      expect(out.error?.details).toBe('the vision service is unavailable (no replica answered); retry later');
      expect(languageLog.some((l) => l.msg === 'no vision replica answered' && l['target'] === `127.0.0.1:${visionPort}`)).toBe(true);
      expect(decodeStatusDetails(out.error?.metadata)).toMatchObject({ reason: 'VISION_UNAVAILABLE', retryDelayMs: 1000 });
      await idle(language);
    });

    it('then vision comes up on that address and the next request is answered', async () => {
      vision = await serveProcess('vision', visionPort, [], faultEnv());
      await eventually(async () => (await ask(client, request(image), { metadata: withToken() })).error === null, 10_000, 200);
      await idle(language);
      // Vision counted the hop's calls it accepted under the token's name (the variable's token is `env`).
      expect(await metric(vision!, 'vlm_auth_calls_total', 'vlm_auth_credential="env"')).toBeGreaterThan(0);
      expect(await metric(vision!, 'vlm_auth_calls_total', 'vlm_auth_outcome="accepted"')).toBeGreaterThan(0);
    });

    it('SIGKILLed while encoding: UNAVAILABLE, and the language service holds nothing', async () => {
      expect(await metric(vision!, 'vlm_inflight_requests')).toBe(0);
      fault('hang');
      const pending = ask(client, request(image), { metadata: withToken(), deadlineMs: 20_000 });
      // The Encode is in flight: vision has admitted it, and its worker is inside a model call that does not return.
      await eventually(async () => (await metric(vision!, 'vlm_inflight_requests')) >= 1, 10_000, 5);
      await kill(vision!, 'SIGKILL');
      fault('');
      const out = await pending;
      expect(out.error?.code, out.error?.details).toBe(GrpcCode.UNAVAILABLE);
      expect(out.deltas).toBe('');
      await idle(language);
    });

    it('restarted on the same address: answered again on the same channel', async () => {
      vision = await serveProcess('vision', visionPort, [], faultEnv());
      await eventually(async () => (await ask(client, request(image), { metadata: withToken() })).error === null, 10_000, 200);
      const out = await ask(client, request(image), { metadata: withToken() });
      expect(out.error).toBeNull();
      expect(out.final?.text).toBe(out.deltas);
      await idle(language);
    });

    it('without Encode (an older or other service on the target): UNAVAILABLE MODEL_MISMATCH naming the skew, not UNIMPLEMENTED for the caller', async () => {
      const other = new Server();
      const port = await bindLoopback(other);
      const skewed = await startLanguageService(pairConfig({ visionTarget: `127.0.0.1:${port}` }), { port: 0 });
      const skewedClient = new LanguageServiceClient(skewed.address, credentials.createInsecure());
      try {
        const out = await ask(skewedClient, request(image), { deadlineMs: 5000 });
        expect(out.error?.code).toBe(GrpcCode.UNAVAILABLE);
        expect(out.error?.details).toMatch(/^the vision service does not implement this call/);
        expect(decodeStatusDetails(out.error?.metadata)).toMatchObject({ reason: 'MODEL_MISMATCH', retryDelayMs: 1000 });
      } finally {
        skewedClient.close();
        await skewed.stop();
        other.forceShutdown();
      }
    });

    it('slower than the deadline (a vision that never answers): DEADLINE_EXCEEDED, and the service cancels its Encode', async () => {
      const stalled = new Server();
      const open: Array<{ end(): void }> = [];
      let cancelled = 0;
      const encode = (call: ServerWritableStream<EncodeRequest, EncodeResponse>) => {
        open.push(call);
        call.on('cancelled', () => cancelled++);
      };
      stalled.addService(VisionServiceService, { encode, getModelInfo: () => undefined });
      const port = await bindLoopback(stalled);
      const slow = await startLanguageService(pairConfig({ visionTarget: `127.0.0.1:${port}` }), { port: 0 });
      const slowClient = new LanguageServiceClient(slow.address, credentials.createInsecure());
      try {
        const out = await ask(slowClient, request(image), { deadlineMs: 1500 });
        expect(out.error?.code).toBe(GrpcCode.DEADLINE_EXCEEDED);
        expect(open.length).toBe(1);
        // The language service's duty: its own Encode to the stalled vision ends with the caller's
        // deadline (cancelled by the hop or expired by the deadline it carries), not left open.
        await eventually(() => cancelled === 1, 5000, 10);
        await idle(slow);
      } finally {
        slowClient.close();
        await slow.stop();
        stalled.forceShutdown();
      }
    });
  });

  describe('a vision replica dying mid-stream while another is up', () => {
    let healthy: RunningService;
    let dying: ChildProcess | undefined;
    let language: RunningService;
    let client: LanguageServiceClient;
    let dyingPort: number;

    beforeAll(async () => {
      healthy = await startVisionService(pairConfig(), { port: 0 });
      const visionClient = new VisionServiceClient(healthy.address, credentials.createInsecure());
      const genuine = await collect<EncodeResponse>(visionClient.encode({ image, policy: undefined, limits: { rowsPerChunk: 4 } }));
      visionClient.close();
      const firstTwo = genuine.messages.slice(0, 2).map((m) => Buffer.from(EncodeResponse.encode(m).finish()).toString('base64'));
      dying = spawn(process.execPath, ['--require', require.resolve('tsx/cjs'), path.join(ROOT, 'test/reliability-dying-vision.ts')], {
        env: { ...process.env, VLM_FAKE_MESSAGES: JSON.stringify(firstTwo), VLM_FAKE_PORT: '0' },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      dyingPort = await new Promise<number>((resolve) => {
        let out = '';
        dying!.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /listening (\d+)/.exec(out);
          if (m) resolve(Number(m[1]));
        });
      });
      language = await startLanguageService(pairConfig({ visionTarget: `127.0.0.1:${dyingPort},${healthy.address}` }), { port: 0 });
      client = new LanguageServiceClient(language.address, credentials.createInsecure());
    });
    afterAll(async () => {
      client?.close();
      await language?.stop();
      await healthy?.stop();
      if (dying && running(dying)) dying.kill('SIGKILL');
    });

    it('repeats the Encode on the other replica: every request is answered, none sees the crash', async () => {
      // Round robin reaches the dying replica within the first few calls; it sends a header and a
      // chunk, then SIGKILLs itself.
      for (let i = 0; i < 4; i++) {
        const out = await ask(client, request(image));
        expect(out.error, out.error?.details).toBeNull();
        expect(out.final?.text).toBe(out.deltas);
      }
      expect(dying!.signalCode).toBe('SIGKILL');
      await idle(language);
      await idle(healthy);
    });
  });

  describe('the client cancelling', () => {
    let vision: RunningService;
    let language: RunningService;
    let client: LanguageServiceClient;
    // The pools' 'job stopped early' lines say where a cancelled job stopped.
    const visionLog: LogLine[] = [];
    const languageLog: LogLine[] = [];
    beforeAll(async () => {
      vision = await startVisionService(pairConfig(), { port: 0, log: recordingLogger(visionLog, 'vision') });
      language = await startLanguageService(pairConfig({ visionTarget: vision.address }), { port: 0, log: recordingLogger(languageLog, 'language') });
      client = new LanguageServiceClient(language.address, credentials.createInsecure());
    });
    afterAll(async () => {
      client?.close();
      await language?.stop();
      await vision?.stop();
    });

    it('while vision encodes and while language decodes: CANCELLED, both workers stop, both services hold nothing', async () => {
      const duringEncode = client.generate(request(big), metadataWith({ 'x-request-id': 'cancel-during-encode' }));
      const encodeOutcome = collect(duringEncode);
      await eventually(() => vision.backend.pool.stats.busy === 1, 5000, 2);
      duringEncode.cancel();
      expect((await encodeOutcome).error?.code).toBe(GrpcCode.CANCELLED);
      // The vision worker stopped instead of finishing the encode ('aborted job ran to completion').
      expect(await stoppedJob(visionLog, 'cancel-during-encode')).toMatchObject({ kind: 'encode', code: 'CANCELLED', aborted: true });

      // 200 tokens (the random bundle emits no stop token); cancelled at the first delta, the worker
      // stops soon after the abort reaches the pool.
      const duringDecode = client.generate(request(image, { maxTokens: 200 }), metadataWith({ 'x-request-id': 'cancel-during-decode' }));
      const decodeOutcome = collect(duringDecode);
      await new Promise<void>((resolve) => duringDecode.once('data', () => resolve()));
      duringDecode.cancel();
      expect((await decodeOutcome).error?.code).toBe(GrpcCode.CANCELLED);
      const stopped = await stoppedJob(languageLog, 'cancel-during-decode');
      expect(stopped).toMatchObject({ kind: 'generate', code: 'CANCELLED', aborted: true });
      expect(stopped.ms_after_abort).toBeLessThan(5000);

      await idle(vision);
      await idle(language);
      expect((await ask(client, request(image))).error).toBeNull();
    });
  });

  describe('the language service killed and restarted', () => {
    let vision: RunningService;
    let language: Child | undefined;
    let port: number;
    afterAll(async () => {
      if (language && running(language.proc)) await kill(language, 'SIGTERM');
      await vision?.stop();
    });

    it('SIGKILL mid-generate: the client gets UNAVAILABLE, vision ends its call; after a restart the same channel is answered', async () => {
      vision = await startVisionService(pairConfig({ authToken: TOKEN }), { port: 0 });
      port = await freePort();
      language = await serveProcess('language', port, ['--vision-target', vision.address]);
      const client = new LanguageServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
      try {
        expect((await ask(client, request(image), { metadata: withToken() })).error).toBeNull();
        const pending = ask(client, request(big), { metadata: withToken(), deadlineMs: 20_000 });
        await eventually(() => vision.activeCalls() === 1, 5000, 2);
        await kill(language, 'SIGKILL');
        const out = await pending;
        expect(out.error?.code).toBe(GrpcCode.UNAVAILABLE);
        await idle(vision);

        language = await serveProcess('language', port, ['--vision-target', vision.address]);
        await eventually(async () => (await ask(client, request(image), { metadata: withToken() })).error === null, 10_000, 200);
        await idle(vision);
      } finally {
        client.close();
      }
    });
  });
});
