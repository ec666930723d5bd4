/**
 * `vlm serve all` under a wrapper that does not pass signals on (npm start, npx): when the wrapper is
 * killed, serve all is re-parented and stops its two services instead of leaving them on their ports.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { healthOf } from '../services/common/health-client';
import { freePort } from '../cli/free-port';
import { eventually, portFree, processAlive as alive, servePids } from './service-helpers';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'bin', 'vlm.js');
const BUNDLE = path.join(ROOT, 'test/fixtures/random-bundle');

describe('serve all whose parent dies', () => {
  it('stops both services and exits', async () => {
    const [visionPort, languagePort] = [await freePort(), await freePort()];
    const args = ['serve', 'all', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', String(visionPort), '--language-port', String(languagePort), '--metrics-port', '0'];
    // The wrapper: starts serve all, reports its pid, and ignores signals it would have to pass on.
    const wrapperCode = `const c = require('node:child_process').spawn(process.execPath, ${JSON.stringify([BIN, ...args])}, { stdio: 'ignore' }); process.stdout.write(String(c.pid) + '\\n'); setInterval(() => {}, 1000);`;
    const wrapper = spawn(process.execPath, ['-e', wrapperCode], { stdio: ['ignore', 'pipe', 'ignore'] });
    const servePid = await new Promise<number>((resolve) => wrapper.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim()))));
    let services: number[] = [];
    try {
      await eventually(async () => (await healthOf(`127.0.0.1:${languagePort}`, 500).catch(() => '')) === 'SERVING', 60_000, 200);
      services = servePids(servePid);
      expect(services).toHaveLength(2);
      wrapper.kill('SIGKILL');
      await eventually(() => !alive(servePid), 20_000, 100);
      // Both services drained and exited with it: nothing listens on their ports any more.
      for (const pid of services) expect(alive(pid)).toBe(false);
      expect([await portFree(visionPort), await portFree(languagePort)]).toEqual([true, true]);
    } finally {
      for (const pid of [servePid, ...services]) if (alive(pid)) process.kill(pid, 'SIGKILL');
      if (wrapper.exitCode === null && wrapper.signalCode === null) wrapper.kill('SIGKILL');
    }
  }, 90_000);
});

describe('serve all killed with a signal it cannot pass on (SIGKILL)', () => {
  it('leaves neither service running: each stops once its command is gone', async () => {
    const [visionPort, languagePort] = [await freePort(), await freePort()];
    const args = ['serve', 'all', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', String(visionPort), '--language-port', String(languagePort), '--metrics-port', '0', '--health-port', '0'];
    const serveAll = spawn(process.execPath, [BIN, ...args], { stdio: 'ignore' });
    let services: number[] = [];
    try {
      await eventually(async () => (await healthOf(`127.0.0.1:${languagePort}`, 500).catch(() => '')) === 'SERVING', 60_000, 200);
      services = servePids(serveAll.pid!);
      expect(services).toHaveLength(2);
      serveAll.kill('SIGKILL');
      await eventually(() => services.every((pid) => !alive(pid)), 20_000, 100);
      expect([await portFree(visionPort), await portFree(languagePort)]).toEqual([true, true]);
    } finally {
      for (const pid of services) if (alive(pid)) process.kill(pid, 'SIGKILL');
      if (serveAll.exitCode === null && serveAll.signalCode === null) serveAll.kill('SIGKILL');
    }
  }, 90_000);
});

describe('a service started by a vlm command over an IPC channel (demo, the benches, serve all), whose command dies', () => {
  it('stops when its command dies while it is still loading, before it could note which process started it', async () => {
    const port = await freePort();
    const args = ['serve', 'vision', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', String(port), '--metrics-port', '0', '--health-port', '0', '--log-level', 'info'];
    const errFile = path.join(mkdtempSync(path.join(tmpdir(), 'vlm-orphan-')), 'service.err');
    // The command starts the service and dies at once, while the service still loads its modules.
    const commandCode = `const c = require('node:child_process').spawn(process.execPath, ${JSON.stringify([BIN, ...args])}, { stdio: ['ignore', 'ignore', require('node:fs').openSync(${JSON.stringify(errFile)}, 'w'), 'ipc'] }); process.stdout.write(String(c.pid) + '\\n', () => process.kill(process.pid, 'SIGKILL'));`;
    const command = spawn(process.execPath, ['-e', commandCode], { stdio: ['ignore', 'pipe', 'ignore'] });
    const servicePid = await new Promise<number>((resolve) => command.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim()))));
    try {
      await eventually(() => !alive(servicePid), 20_000, 100);
      expect(await portFree(port)).toBe(true);
      // It stopped as on SIGTERM, not by crashing on the closed channel once it served.
      const err = readFileSync(errFile, 'utf8');
      expect(err).toContain('the vlm command that started this service is gone; stopping');
      expect(err).not.toContain('ERR_IPC_CHANNEL_CLOSED');
    } finally {
      if (alive(servicePid)) process.kill(servicePid, 'SIGKILL');
    }
  }, 60_000);

  it('stops instead of holding its port as an orphan', async () => {
    const port = await freePort();
    const args = ['serve', 'vision', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', String(port), '--metrics-port', '0'];
    // The command: starts the service with an IPC channel, as child-services.ts does, and is then killed
    // with a signal it has no handler for.
    const commandCode = `const c = require('node:child_process').spawn(process.execPath, ${JSON.stringify([BIN, ...args])}, { stdio: ['ignore', 'ignore', 'ignore', 'ipc'] }); process.stdout.write(String(c.pid) + '\\n'); setInterval(() => {}, 1000);`;
    const command = spawn(process.execPath, ['-e', commandCode], { stdio: ['ignore', 'pipe', 'ignore'] });
    const servicePid = await new Promise<number>((resolve) => command.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim()))));
    try {
      await eventually(async () => (await healthOf(`127.0.0.1:${port}`, 500).catch(() => '')) === 'SERVING', 60_000, 200);
      command.kill('SIGKILL');
      await eventually(() => !alive(servicePid), 20_000, 100);
      expect(await portFree(port)).toBe(true);
    } finally {
      if (alive(servicePid)) process.kill(servicePid, 'SIGKILL');
      if (command.exitCode === null && command.signalCode === null) command.kill('SIGKILL');
    }
  }, 90_000);
});
