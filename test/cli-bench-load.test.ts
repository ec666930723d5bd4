/**
 * `vlm bench load` as a user runs it: `--light-concurrency` gives the two callers tokens of its own
 * (so it refuses a configured token before starting anything), splits the outcomes by caller, and
 * Ctrl-C ends the load early with a summary and without leaving its token file behind; a second
 * signal quits without leaving the services it started running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BUNDLE, ROOT } from './reliability-helpers';
import { eventually, processAlive as alive, servePids as childPids, vlm } from './service-helpers';

const temps: string[] = [];
/** Every process a test started: a failed assertion must not leave a 600 s load and its services running. */
const started: number[] = [];
afterEach(() => {
  for (const pid of started.splice(0)) if (alive(pid)) process.kill(pid, 'SIGKILL');
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('vlm bench load with a light caller', () => {
  it('refuses a configured token before starting any service: the bench makes its own two', () => {
    const r = vlm(['bench', 'load', '--model', BUNDLE, '--light-concurrency', '1'], { VLM_AUTH_TOKEN: 'a-token-of-16-chars-or-more' });
    expect(r.stderr).toMatch(/^INVALID_ARGUMENT: --light-concurrency: .*VLM_AUTH_TOKEN_FILE/);
    expect([r.status, r.stdout]).toEqual([1, '']);
  });

  it('stops on SIGINT: the summary splits outcomes by caller, is marked interrupted, and the token file is gone', async () => {
    const bench = await startedBench();
    expect(readdirSync(bench.tmp).filter((f) => f.startsWith('vlm-bench-tokens-'))).toHaveLength(1); // the token file is in use
    await new Promise((r) => setTimeout(r, 3000));
    bench.child.kill('SIGINT');

    expect(await bench.exited).toBe(130);
    expect(bench.stderr()).toContain('stopping the load');
    const s = JSON.parse(bench.stdout().trim().split('\n').at(-1)!);
    expect(s.interrupted).toBe(true);
    expect(s.durationS).toBeLessThan(60);
    const { heavy, light } = s.byCaller;
    expect([heavy.clients, light.clients]).toEqual([2, 1]);
    expect(heavy.sent + light.sent).toBe(s.sent);
    expect(heavy.answered + light.answered).toBe(s.answered);
    expect(light.answered).toBeGreaterThan(0);
    expect(light.invalid).toBe(0); // the light caller sends valid requests only
    expect(s.lost).toBe(0);
    expect(readdirSync(bench.tmp).filter((f) => f.startsWith('vlm-bench-tokens-'))).toEqual([]);
  }, 60_000);

  it('quits at a second signal, killing the services it started rather than leaving them on their ports', async () => {
    const bench = await startedBench();
    expect(bench.services).toHaveLength(2);
    bench.child.kill('SIGTERM');
    // Only once the first was handled: two signals sent at once may be delivered as one.
    await eventually(() => bench.stderr().includes('stopping the load'), 10_000, 20);
    bench.child.kill('SIGTERM');
    expect(await bench.exited).toBe(130);
    for (const pid of bench.services) await eventually(() => !alive(pid), 10_000, 50);
    expect(readdirSync(bench.tmp).filter((f) => f.startsWith('vlm-bench-tokens-'))).toEqual([]);
  }, 60_000);
});

/** `vlm bench load` with a light caller, once its load runs; TMPDIR is a folder of its own. */
async function startedBench(): Promise<{ child: ChildProcess; services: number[]; exited: Promise<number | null>; tmp: string; stdout: () => string; stderr: () => string }> {
  const tmp = mkdtempSync(path.join(tmpdir(), 'vlm-bench-load-test-'));
  temps.push(tmp);
  const args = ['bench', 'load', '--model', BUNDLE, '--duration-s', '600', '--concurrency', '2', '--light-concurrency', '1', '--queue-size', '1', '--workers', '1'];
  const child = spawn(process.execPath, [path.join(ROOT, 'bin/vlm.js'), ...args], { cwd: ROOT, env: { ...process.env, TMPDIR: tmp }, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child.pid!);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('load running')) resolve();
    });
    void exited.then(() => reject(new Error(`bench load exited before its load ran: ${stderr}`)));
  });
  // Its services have reported serving by now.
  const services = childPids(child.pid!);
  started.push(...services);
  return { child, services, exited, tmp, stdout: () => stdout, stderr: () => stderr };
}
