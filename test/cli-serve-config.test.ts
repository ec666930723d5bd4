/**
 * The `vlm` command's own description of its configuration, and `vlm serve all` wiring the two
 * services together wherever vision listens.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { AUTH_TOKEN_ENV, CONFIG_OPTIONS } from '../shared/config';
import { healthOf } from '../services/common/health-client';
import { freePort } from '../cli/free-port';
import { running } from '../cli/child-running';
import { eventually, stopServeAll, vlm } from './service-helpers';
import { issueCertificate, makeCerts } from './reliability-helpers';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'bin', 'vlm.js');
const BUNDLE = path.join(ROOT, 'test/fixtures/random-bundle');

/** `vlm ARGV` as a user runs it: exit status and stdout. */
function printed(argv: string[]): { code: number | null; out: string } {
  const r = vlm(argv);
  return { code: r.status, out: r.stdout };
}

describe('vlm <command> --help', () => {
  it('prints every config flag with its variable and default, from the table config is read through, and exits 0', () => {
    const { code, out } = printed(['serve', '--help']);
    expect(code).toBe(0);
    expect(out).toMatch(/^usage: vlm serve vision\|language\|all \[flags\]/);
    for (const [flag, o] of Object.entries(CONFIG_OPTIONS)) expect(out).toMatch(new RegExp(`--${flag}\\b.*\\b${o.env}\\b.*\\[default: `));
    expect(out).toMatch(/--deadline-ms MS +VLM_DEADLINE_MS .*\[default: 60000, 1 to 2147483647\]/);
  });

  it('lists the command\'s own flags too, also as `vlm help <command>`', () => {
    const { code, out } = printed(['help', 'ask']);
    expect(code).toBe(0);
    expect(out).toMatch(/^usage: vlm ask \[flags\]/);
    expect(out).toMatch(/^ {2}--image FILE +the image \(required\)/m);
    expect(out).toMatch(/^ {2}--param NAME=VALUE +a method parameter.*\(repeatable\)$/m);
    // A client's config flags only: not the services' (--provider and the rest).
    expect(out).toMatch(/--language-port PORT +VLM_LANGUAGE_PORT/);
    expect(out).not.toMatch(/--provider LIST/);
  });

  it.each([['ask'], ['eval'], ['demo'], ['bench', 'accuracy'], ['bench', 'load'], ['trace', 'collect'], ['trace', 'report']])('describes every flag of vlm %s %s', (...command: string[]) => {
    const { code, out } = printed([...command.filter(Boolean), '--help']);
    expect(code).toBe(0);
    const own = out.slice(out.indexOf('flags of this command:\n')).split('\n\n')[0]!.trimEnd().split('\n').slice(1);
    expect(own.length).toBeGreaterThan(0);
    // Each line: the flag's usage, then a description after at least two spaces.
    for (const line of own) expect(line, line).toMatch(/^ {2}--[a-z-]+( \S+)? {2,}\S/);
  });

  it('points a command with subcommands to theirs', () => {
    const { code, out } = printed(['bench', '-h']);
    expect(code).toBe(0);
    expect(out).toContain('vlm bench accuracy --help, vlm bench load --help');
  });
});

describe("README's configuration table", () => {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('## Telemetry'));
  const rows = section.split('\n').filter((l) => /^\| .*`(--|VLM_)/.test(l)).map((l) => l.split('|').slice(1, 3).map((cell) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!.split(' ')[0]!)));

  it('pairs each flag with the variable config reads for it', () => {
    expect(rows.length).toBeGreaterThan(10);
    for (const [flags, vars] of rows) {
      const vlmVars = vars!.filter((v) => v.startsWith('VLM_'));
      for (const f of flags!) expect(Object.keys(CONFIG_OPTIONS), `${f} is a config flag`).toContain(f.replace(/^--/, ''));
      if (flags!.length === 0) {
        const known = [...Object.values(CONFIG_OPTIONS).map((o) => o.env), AUTH_TOKEN_ENV];
        for (const v of vlmVars) expect(known, `${v} is read by config`).toContain(v);
        continue;
      }
      expect(vlmVars.map((v) => v), `row ${flags!.join(', ')}`).toEqual(flags!.map((f) => CONFIG_OPTIONS[f.replace(/^--/, '') as keyof typeof CONFIG_OPTIONS].env));
    }
  });
});

describe('vlm serve all, vision on a picked port and a specific host', () => {
  let server: ChildProcess | undefined;
  // SIGTERM, so the parent takes both services down with it; SIGKILL only if that hangs.
  afterEach(() => stopServeAll(server));

  it('keeps vision on loopback whatever --host is, and has language dial the port it bound: --host 127.0.0.2 --vision-port 0', async () => {
    const languagePort = await freePort();
    const target = `127.0.0.2:${languagePort}`;
    let stderr = '';
    server = spawn(process.execPath, [BIN, 'serve', 'all', '--model', BUNDLE, '--host', '127.0.0.2', '--vision-port', '0', '--language-port', String(languagePort), '--metrics-port', '0', '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await eventually(async () => {
      if (!running(server!)) throw new Error(`serve all exited:\n${stderr}`);
      return (await healthOf(target, 500).catch(() => '')) === 'SERVING';
    }, 90_000, 200);
    // Vision serves only language: on 127.0.0.2 any client reaching that address could call it.
    expect(stderr).toMatch(/"msg":"vision target","target":"127\.0\.0\.1:[1-9]\d*"/);
    const scratch = mkdtempSync(path.join(tmpdir(), 'vlm-serve-config-'));
    const image = path.join(scratch, 'red.png');
    writeFileSync(image, await sharp({ create: { width: 40, height: 30, channels: 3, background: '#c33' } }).png().toBuffer());
    const r = vlm(['ask', '--image', image, '--question', 'What color is it?', '--target', target, '--max-tokens', '2']);
    rmSync(scratch, { recursive: true, force: true });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  }, 120_000);

  it("keeps the TLS hop working with vision on loopback: language expects --host's name on the one certificate", async () => {
    const scratch = mkdtempSync(path.join(tmpdir(), 'vlm-serve-tls-'));
    const certs = makeCerts(scratch);
    // A certificate for the name alone: verified against the loopback address language dials, it would fail.
    const named = issueCertificate(scratch, 'named', 'localhost', 'serverAuth,clientAuth', 'DNS:localhost');
    const languagePort = await freePort();
    let stderr = '';
    server = spawn(process.execPath, [BIN, 'serve', 'all', '--model', BUNDLE, '--host', 'localhost', '--vision-port', '0', '--language-port', String(languagePort), '--metrics-port', '0', '--tls-cert', named.cert, '--tls-key', named.key, '--vision-ca', certs.caCert, '--log-level', 'info'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      await eventually(() => {
        if (!running(server!)) throw new Error(`serve all exited:\n${stderr}`);
        return (stderr.match(/"msg":"serving"/g) ?? []).length === 2;
      }, 90_000, 200);
      const r = vlm(['ask', '--image', path.join(ROOT, 'models/tiny-llava-shapes/eval/images/0000.png'), '--question', 'what color?', '--target', `localhost:${languagePort}`, '--ca', certs.caCert, '--max-tokens', '2']);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  }, 120_000);
});
