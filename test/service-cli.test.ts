/**
 * The CLI as a user runs it: `vlm serve all` (two processes), `vlm ask` against it, SIGTERM; and
 * `vlm demo`. Uses the random-weight bundle, so answers are checked for shape, not meaning.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type ClientHttp2Session } from 'node:http2';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { healthOf } from '../services/common/health-client';
import { eventually, healthStatus, partialMessage, rawCall, servingPort, sleep, stopServeAll, vlm } from './service-helpers';
import { freePort, isFree } from '../cli/free-port';
import { running } from '../cli/child-running';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'bin', 'vlm.js');
const BUNDLE = path.join(ROOT, 'test/fixtures/random-bundle');

/** A free port whose next port is free too (`serve all` gives language the next one). */
async function freePortPair(): Promise<number> {
  for (;;) {
    const port = await freePort();
    if (await isFree(port + 1)) return port;
  }
}


describe('vlm serve all + vlm ask', () => {
  let server: ChildProcess;
  let target: string;
  let visionAddress: string;
  let image: string;
  let scratch: string;
  let stderr = '';
  let metricsPort: number;
  let healthPort: number;

  beforeAll(async () => {
    // The metrics and health ports have no port-0 form: picked apart from each other and below the
    // kernel's ephemeral range (free-port.ts); the services' own ports are the kernel's choice.
    metricsPort = await freePortPair();
    do healthPort = await freePortPair();
    while (Math.abs(healthPort - metricsPort) <= 1);
    server = spawn(process.execPath, [BIN, 'serve', 'all', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--language-port', '0', '--metrics-port', String(metricsPort), '--health-port', String(healthPort), '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    scratch = mkdtempSync(path.join(tmpdir(), 'vlm-cli-'));
    image = path.join(scratch, 'red.png');
    writeFileSync(image, await sharp({ create: { width: 40, height: 30, channels: 3, background: '#c33' } }).png().toBuffer());
    await eventually(() => servingPort(stderr, 'language') !== undefined, 60_000, 100);
    target = `127.0.0.1:${servingPort(stderr, 'language')}`;
    visionAddress = `127.0.0.1:${servingPort(stderr, 'vision')}`;
  });

  afterAll(async () => {
    await stopServeAll(server); // (a no-op after the SIGTERM test, unless it failed)
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('runs the two services as two processes, logging JSON lines with one request id across the hop', async () => {
    const r = vlm(['ask', '--image', image, '--question', 'What color is it?', '--target', target, '--max-tokens', '4']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.trim().length).toBeGreaterThan(0);
    // spawnSync blocked this event loop: let the server's log lines arrive.
    await eventually(() => stderr.includes('/vlm.v1.LanguageService/Generate'), 5000);
    const lines = stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const calls = lines.filter((l) => l['msg'] === 'call' && l['code'] === 'OK');
    const generate = calls.find((l) => l['method'] === '/vlm.v1.LanguageService/Generate');
    const encode = calls.find((l) => l['method'] === '/vlm.v1.VisionService/Encode' && l['requestId'] === generate?.['requestId']);
    expect(encode, 'the Encode call carries the Generate request id').toBeDefined();
    expect(lines.map((l) => String(l['component']).split('.')[0])).toEqual(expect.arrayContaining(['vision', 'language']));
  });

  it('gives language the port after vision\'s for its metrics and its plaintext health checks', async () => {
    const service = async (port: number) => /service_name="([^"]+)"/.exec(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text())?.[1];
    expect([await service(metricsPort), await service(metricsPort + 1)]).toEqual(['vlm-vision', 'vlm-language']);
    expect(await healthStatus(`127.0.0.1:${healthPort}`, 'vlm.v1.VisionService')).toBe('SERVING');
    expect(await healthStatus(`127.0.0.1:${healthPort + 1}`, 'vlm.v1.LanguageService')).toBe('SERVING');
    await expect(healthStatus(`127.0.0.1:${healthPort + 1}`, 'vlm.v1.VisionService')).rejects.toMatchObject({ code: 5 }); // NOT_FOUND: not this one's
  });

  it('prints one JSON line with the answer and the final stats with --json', () => {
    const r = vlm(['ask', '--image', image, '--question', 'What color is it?', '--target', target, '--max-tokens', '3', '--vision-method', 'ficoco-v', '--budget', '50%', '--json']);
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]!) as { answer: string; tokens: { visualReceived: number; generated: number }; policy: { visionMethod: string; achievedBudget: number }; flops: { total: number } };
    expect(typeof out.answer).toBe('string');
    expect(out.tokens.visualReceived).toBe(8);
    expect(out.tokens.generated).toBeLessThanOrEqual(3);
    expect(out.policy).toMatchObject({ visionMethod: 'ficoco-v', achievedBudget: 8 });
    expect(out.flops.total).toBeGreaterThan(0);
  });

  it('passes the bytes unchecked and prints the service\'s CODE: message on stderr, exit 1', () => {
    const notAnImage = vlm(['ask', '--image', path.join(ROOT, 'package.json'), '--question', 'What?', '--target', target]);
    expect(notAnImage.status).toBe(1);
    expect(notAnImage.stderr).toMatch(/^INVALID_ARGUMENT: image: /);
    const infeasible = vlm(['ask', '--image', image, '--question', 'What?', '--target', target, '--vision-method', 'ficoco-v', '--budget', '999']);
    expect(infeasible.status).toBe(1);
    expect(infeasible.stderr).toMatch(/^INVALID_ARGUMENT: .*999/);
  });

  it('passes SIGHUP (reload TLS and token files) on to both services and keeps all three running', async () => {
    const children = () => spawnSync('ps', ['-o', 'pid=', '--ppid', String(server.pid)], { encoding: 'utf8' }).stdout.trim().split(/\s+/).filter(Boolean);
    expect(children()).toHaveLength(2);
    server.kill('SIGHUP');
    // Plaintext services have nothing to re-read; each says so, and neither takes SIGHUP's default (exit).
    await eventually(() => (stderr.match(/"msg":"SIGHUP: no TLS or token files to re-read"/g) ?? []).length === 2, 10_000);
    expect(stderr).toMatch(/"component":"serve","msg":"SIGHUP: passing it to the services"/);
    expect(running(server)).toBe(true);
    expect(children()).toHaveLength(2);
    expect(await healthOf(target, 1000)).toBe('SERVING');
    expect(await healthOf(visionAddress, 1000)).toBe('SERVING');
  });

  it('stops both services on SIGTERM and exits 0', async () => {
    server.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => server.once('exit', (c) => resolve(c)));
    expect(code).toBe(0);
    expect(stderr).toMatch(/"component":"vision","msg":"stopped","drained":true/);
    expect(stderr).toMatch(/"component":"language","msg":"stopped","drained":true/);
  });
});

describe('vlm serve all on the default host, stopped with Ctrl-C in a terminal', () => {
  let server: ChildProcess | undefined;
  afterEach(() => stopServeAll(server));

  it('keeps vision on loopback, and drains both services and exits 0 though the signal reaches every process of the group and serve all passes it on', async () => {
    // Its own process group, as a job in a terminal: a signal to the group reaches serve all and both children.
    // The default --host, a wildcard: language listens on every interface, vision on loopback only.
    server = spawn(process.execPath, [BIN, 'serve', 'all', '--model', BUNDLE, '--vision-port', '0', '--language-port', '0', '--metrics-port', '0', '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => server!.once('exit', (c) => resolve(c)));
    await eventually(() => servingPort(stderr, 'language') !== undefined, 60_000, 100);
    expect(stderr).toMatch(/"component":"vision","msg":"serving","address":"127\.0\.0\.1:\d+"/);
    expect(stderr).toMatch(/"component":"language","msg":"serving","address":"0\.0\.0\.0:\d+"/);
    expect(await healthOf(`127.0.0.1:${servingPort(stderr, 'language')}`, 1000)).toBe('SERVING');
    expect(await healthOf(`127.0.0.1:${servingPort(stderr, 'vision')}`, 1000)).toBe('SERVING');
    process.kill(-server.pid!, 'SIGINT');
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/"component":"vision","msg":"stopped","drained":true/);
    expect(stderr).toMatch(/"component":"language","msg":"stopped","drained":true/);
    expect(stderr).not.toMatch(/second signal/);
  }, 90_000);
});

describe('vlm serve all, stopped with SIGTERM (a supervisor, npm, a container runtime)', () => {
  let server: ChildProcess | undefined;
  afterEach(() => stopServeAll(server));

  it('drains language first and signals vision only once language has exited (so requests language admitted can still reach vision)', async () => {
    server = spawn(process.execPath, [BIN, 'serve', 'all', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--language-port', '0', '--metrics-port', '0', '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => server!.once('exit', (c) => resolve(c)));
    // Both serving (with port 0, language starts once vision serves).
    await eventually(() => servingPort(stderr, 'language') !== undefined && servingPort(stderr, 'vision') !== undefined, 60_000, 100);
    server.kill('SIGTERM');
    expect(await exited).toBe(0);
    const at = (re: RegExp) => stderr.search(re);
    expect(at(/"component":"language","msg":"stopped","drained":true/)).toBeGreaterThanOrEqual(0);
    expect(at(/"component":"vision","msg":"draining"/)).toBeGreaterThan(at(/"component":"language","msg":"stopped"/));
    expect(stderr).toMatch(/"component":"vision","msg":"stopped","drained":true/);
  }, 90_000);
});

describe('vlm serve all with a hop token of its own (--vision-token-file)', () => {
  it('has vision accept that token, so a client holding its own is answered across the hop', async () => {
    const scratch = mkdtempSync(path.join(tmpdir(), 'vlm-tokens-'));
    const clients = path.join(scratch, 'clients');
    const hop = path.join(scratch, 'hop');
    writeFileSync(clients, 'app t0k3n-app-xxxxxxxx\n');
    writeFileSync(hop, 'hop t0k3n-hop-xxxxxxxx\n');
    const server = spawn(process.execPath, [BIN, 'serve', 'all', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--language-port', '0', '--metrics-port', '0', '--log-level', 'info', '--auth-token-file', clients, '--vision-token-file', hop], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      await eventually(() => servingPort(stderr, 'language') !== undefined, 60_000, 100);
      const r = vlm(['ask', '--image', path.join(ROOT, 'models/tiny-llava-shapes/eval/images/0000.png'), '--question', 'what color?', '--language-port', String(servingPort(stderr, 'language')), '--max-tokens', '2'], { VLM_AUTH_TOKEN_FILE: clients });
      expect([r.status, r.stderr]).toEqual([0, '']);
    } finally {
      await stopServeAll(server);
      rmSync(scratch, { recursive: true, force: true });
    }
  }, 90_000);
});

describe('vlm serve all, a child stuck while draining', () => {
  it('drains on the first SIGTERM and kills the stuck child on the second, then exits', async () => {
    const server = spawn(process.execPath, [BIN, 'serve', 'all', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--language-port', '0', '--metrics-port', '0', '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    let vision = 0;
    try {
      await eventually(() => servingPort(stderr, 'language') !== undefined, 60_000, 100);
      const children = spawnSync('ps', ['-o', 'pid=,args=', '--ppid', String(server.pid)], { encoding: 'utf8' }).stdout.split('\n');
      vision = Number(children.find((l) => / serve vision /.test(l))?.trim().split(/\s+/)[0]);
      expect(vision).toBeGreaterThan(0);
      // A stopped process takes no SIGTERM: it stands for a service that hangs in its drain.
      process.kill(vision, 'SIGSTOP');
      const exited = new Promise<number | null>((resolve) => server.once('exit', (c) => resolve(c)));
      server.kill('SIGTERM');
      const first = await Promise.race([exited, new Promise<'waiting'>((r) => setTimeout(() => r('waiting'), 3000))]);
      expect(first, 'serve all waits for the stuck child after one signal').toBe('waiting');
      server.kill('SIGTERM');
      const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 10_000))]);
      expect(code).toBe(1); // the killed child's status
      expect(stderr).toMatch(/second signal: killing the services that still run/);
      expect(() => process.kill(vision, 0)).toThrow(); // gone
    } finally {
      if (vision > 0) {
        try {
          process.kill(vision, 'SIGKILL'); // never leave a stopped orphan behind
        } catch {
          // already gone
        }
      }
      await stopServeAll(server); // SIGTERM, so the language child goes down with its parent
    }
  }, 90_000);
});

describe('vlm serve <role>, signalled while it loads its model', () => {
  let server: ChildProcess | undefined;
  // In a hook, so a test that times out leaves no service behind either.
  afterEach(() => {
    if (server && running(server)) server.kill('SIGKILL');
  });

  it('exits at once instead of loading on (a pod deleted while starting): status 0 before its workers start, SIGKILL once they load, never an abort', async () => {
    // The embedded model: its load and warm-up take long enough to signal in the middle of them. A
    // start that finished before the signal arrived (a stall here) tests nothing: tried again.
    let code: string | 'running' = '';
    let stderr = '';
    for (let attempt = 0; attempt < 3 && (attempt === 0 || /"msg":"serving"/.test(stderr)); attempt++) {
      if (server && running(server)) server.kill('SIGKILL'); // the attempt before, if it is still draining
      server = spawn(process.execPath, [BIN, 'serve', 'vision', '--host', '127.0.0.1', '--vision-port', '0', '--metrics-port', '0', '--health-port', '0', '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
      const child = server;
      stderr = '';
      const exited = new Promise<string>((resolve) => child.once('exit', (c, signal) => resolve(signal ?? String(c))));
      // The first log line comes before the model loads.
      await new Promise<void>((resolve) => child.stderr!.on('data', (d: Buffer) => ((stderr += d.toString()), resolve())));
      child.kill('SIGTERM');
      code = await Promise.race([exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 10_000))]);
    }
    // process.exit() with a worker inside a native model call aborts the process (SIGABRT, "terminate
    // called after throwing"): once workers exist the service ends itself with SIGKILL instead.
    expect(['0', 'SIGKILL']).toContain(code);
    expect(stderr).toMatch(/"msg":"stopped while starting","signal":"SIGTERM"/);
    expect(stderr).not.toMatch(/terminate called/);
    expect(stderr).not.toMatch(/"msg":"serving"/);
  }, 30_000);
});

describe('vlm serve <role>, signalled again while it drains', () => {
  let server: ChildProcess | undefined;
  let session: ClientHttp2Session | undefined;
  afterEach(() => {
    session?.destroy();
    if (server && running(server)) server.kill('SIGKILL');
  });

  it('ends the process at once on a second SIGTERM past the repeat window, without waiting out the grace', async () => {
    server = spawn(process.execPath, [BIN, 'serve', 'vision', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--metrics-port', '0', '--health-port', '0', '--log-level', 'info'], {
      cwd: ROOT,
      env: { ...process.env, VLM_SHUTDOWN_GRACE_MS: '120000' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const child = server;
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    await eventually(() => servingPort(stderr, 'vision') !== undefined, 60_000, 100);
    // A call whose request never completes holds the drain open (until the default deadline, 60 s, ends
    // it: longer than this test waits).
    session = connect(`http://127.0.0.1:${servingPort(stderr, 'vision')}`);
    rawCall(session, '/vlm.v1.VisionService/Encode', { headers: { 'grpc-timeout': '300S' }, write: partialMessage(100, 10) });
    // A health check answered on the same connection, after it: the service has taken the Encode's headers.
    const probe = rawCall(session, '/grpc.health.v1.Health/Check', { write: Buffer.alloc(5) });
    probe.stream.end();
    expect((await probe.status).code).toBe(0);
    child.kill('SIGTERM');
    await eventually(() => /"msg":"draining"/.test(stderr), 10_000, 50);
    expect(stderr).toMatch(/"msg":"draining","inFlight":1/);
    await sleep(2500); // past the window in which a repeat counts as the same stop
    expect(running(child)).toBe(true);
    child.kill('SIGTERM');
    const end = await Promise.race([exited, sleep(20_000).then(() => 'still running' as const)]);
    expect(end).toEqual({ code: null, signal: 'SIGKILL' });
    expect(stderr).toMatch(/"msg":"second signal; exiting now","signal":"SIGTERM"/);
  }, 90_000);
});

describe('vlm serve <role> with eager sessions', () => {
  let server: ChildProcess | undefined;
  afterEach(() => {
    if (server && running(server)) server.kill('SIGTERM');
  });

  it("warms every worker on its own side, each reduction method included, before it serves", async () => {
    server = spawn(process.execPath, [BIN, 'serve', 'vision', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--metrics-port', '0', '--eager-sessions', '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await eventually(() => /"msg":"serving"/.test(stderr), 60_000, 100);
    expect(stderr).toMatch(/"component":"worker\.0","msg":"bundle loaded",.*"eager":true,"side":"vision"/);
    expect(stderr).toMatch(/"component":"worker\.0","msg":"warm-up done","parts":"vision","methods":true/);
    // The worker's warm-up comes before the service's own end-to-end one.
    expect(stderr.indexOf('"msg":"warm-up done"')).toBeLessThan(stderr.indexOf('"msg":"warm-up passed"'));
  }, 90_000);
});

describe('vlm demo', () => {
  it('starts both services, asks under several policies, prints tokens, FLOPs and latency, and exits 0', () => {
    const r = vlm(['demo', '--model', BUNDLE, '--items', '1']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/serving .*random-bundle/);
    for (const policy of ['none', 'ficoco-v 25%', 'tome 25%', 'ficoco-vl 25%']) {
      expect(r.stdout).toMatch(new RegExp(`^${policy}\\s+What color.*\\s\\d+/16 avg [\\d.]+\\s+[\\d.]+ [MGT]\\s+\\d+$`, 'm'));
    }
  });
});
