/**
 * What each Dockerfile's runtime stage copies is enough to serve. No Docker engine runs here, so the
 * stage's file set is rebuilt in a scratch /app (its COPY --from=build lines, and node_modules cut to
 * the lockfile's production packages, as `npm prune --omit=dev` leaves it) and `vlm serve all` is
 * started from there on the CPU until both services report SERVING, which they do only after loading
 * the model and running a warm-up. A file the services read from the source tree but the image lacks
 * fails here rather than as a CrashLoopBackOff.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { healthOf } from '../services/common/health-client';
import { running } from '../cli/child-running';
import { eventually, servingPort, stopServeAll } from './service-helpers';

const ROOT = path.resolve(__dirname, '..');
const DOCKER = path.join(ROOT, 'k8s', 'docker');

/** The runtime stage's `COPY --from=build /src/<from> ./<to>` pairs and its ENV VLM_MODEL_DIR. */
function runtimeStage(dockerfile: string): { copies: { from: string; to: string }[]; modelDir: string | undefined } {
  const start = dockerfile.search(/^FROM \S+ AS runtime$/m);
  if (start < 0) throw new Error('the Dockerfile has no "AS runtime" stage');
  const stage = dockerfile.slice(start);
  const copies = [...stage.matchAll(/^COPY --from=build \/src\/(\S+) \.\/(\S+)$/gm)].map((m) => ({ from: m[1]!, to: m[2]! }));
  const modelDir = /VLM_MODEL_DIR=\/app\/(\S+)/.exec(stage)?.[1];
  return { copies, modelDir };
}

/** node_modules as the image has it: only the lockfile's top-level packages not marked dev. */
function productionNodeModules(into: string): void {
  const lock = JSON.parse(readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (!key.startsWith('node_modules/') || key.lastIndexOf('node_modules/') !== 0 || entry.dev) continue;
    const source = path.join(ROOT, key);
    if (!existsSync(source)) continue; // an optional package for another platform
    const target = path.join(into, key);
    mkdirSync(path.dirname(target), { recursive: true });
    // A package's own dependencies resolve from its real path, where production packages only need
    // production packages; what must not leak in is a dev package that dist/ itself requires.
    symlinkSync(source, target, 'dir');
  }
}

function assembleApp(dockerfile: string, app: string): string {
  const { copies, modelDir } = runtimeStage(dockerfile);
  expect(copies.map((c) => c.to)).toContain('dist');
  expect(modelDir, 'the image sets VLM_MODEL_DIR under /app').toBeDefined();
  for (const { from, to } of copies) {
    const source = path.join(ROOT, from);
    expect(existsSync(source), `${from} exists in the build stage (run npm run build first)`).toBe(true);
    if (from === 'node_modules') productionNodeModules(app);
    // Copied, not linked: Node resolves __dirname through links, which would find the source tree.
    else if (from.startsWith('models/')) symlinkSync(source, path.join(app, to), 'dir');
    else cpSync(source, path.join(app, to), { recursive: true });
  }
  return path.join(app, modelDir!);
}

describe('the runtime image holds every file the services read', () => {
  let scratch: string | undefined;
  let server: ChildProcess | undefined;
  let stderr = '';
  afterEach(async () => {
    // SIGTERM, not SIGKILL: serve all stops its two children on SIGTERM; killed outright, it would
    // leave them running.
    await stopServeAll(server);
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it.each(['Dockerfile.cpu', 'Dockerfile.cuda'])('%s: serve all from its files alone reaches SERVING on the embedded model', async (name) => {
    scratch = mkdtempSync(path.join(tmpdir(), 'vlm-image-'));
    const app = path.join(scratch, 'app');
    mkdirSync(path.join(app, 'models'), { recursive: true });
    const modelDir = assembleApp(readFileSync(path.join(DOCKER, name), 'utf8'), app);
    stderr = '';
    // The default log level (info) names the ports the kernel chose.
    server = spawn(process.execPath, [path.join(app, 'bin', 'vlm.js'), 'serve', 'all', '--host', '127.0.0.1', '--vision-port', '0', '--language-port', '0', '--metrics-port', '0'], {
      cwd: app,
      env: { PATH: process.env['PATH'], HOME: process.env['HOME'], NODE_ENV: 'production', VLM_MODEL_DIR: modelDir, VLM_PROVIDER: 'cpu', VLM_INTRA_OP_THREADS: '1' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await eventually(async () => {
      if (!running(server!)) throw new Error(`serve all exited:\n${stderr}`);
      const ports = [servingPort(stderr, 'vision'), servingPort(stderr, 'language')];
      if (ports.includes(undefined)) return false;
      const states = await Promise.all(ports.map((p) => healthOf(`127.0.0.1:${p}`, 500).catch(() => 'DOWN')));
      return states.every((s) => s === 'SERVING');
    }, 90_000, 200);
    // Reflection found the built descriptor set (the proto comments) among the image's files.
    expect(stderr).not.toContain('reflection serves the API without its comments');
  }, 120_000);
});

describe('runtimeStage', () => {
  it('reads the runtime COPY lines and model directory, not the build stage', () => {
    const text = 'FROM node AS build\nCOPY . .\nFROM node AS runtime\nCOPY --from=build /src/dist ./dist\nCOPY --from=other /x ./y\nENV VLM_MODEL_DIR=/app/models/m\n';
    expect(runtimeStage(text)).toEqual({ copies: [{ from: 'dist', to: 'dist' }], modelDir: 'models/m' });
  });
});
