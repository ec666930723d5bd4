#!/usr/bin/env node
// The `vlm` command: the compiled CLI when `npm run build` has produced dist/, otherwise the
// TypeScript source through tsx (a dev dependency), so `npx vlm` works from a fresh checkout.
// In a working checkout a dist/ older than the sources would run stale code, so when tsx is
// installed and any .ts under cli/, shared/ or services/ is newer than dist/cli/vlm.js, the source
// runs instead.
'use strict';
// `vlm serve` reads SIGHUP as "re-read the TLS and token files", and `serve all` passes it on to
// services that may have just started: from the first line on, one must not end a service as Node's
// default would while its modules still load (cli/serve.ts replaces this once it installs its own).
if (process.argv[2] === 'serve') process.on('SIGHUP', function sighupWhileLoading() {});
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const compiled = path.join(root, 'dist', 'cli', 'vlm.js');

function newestSource(dir) {
  let newest = 0;
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestSource(p));
    else if (e.name.endsWith('.ts')) newest = Math.max(newest, fs.statSync(p).mtimeMs);
  }
  return newest;
}

function tsxAvailable() {
  try {
    require.resolve('tsx/cjs');
    return true;
  } catch {
    return false;
  }
}

function useCompiled() {
  if (!fs.existsSync(compiled)) return false;
  if (!tsxAvailable()) return true;
  const built = fs.statSync(compiled).mtimeMs;
  return ['cli', 'shared', 'services'].every((d) => newestSource(path.join(root, d)) <= built);
}

let cli;
if (useCompiled()) {
  cli = require(compiled);
} else {
  require('tsx/cjs');
  cli = require(path.join(root, 'cli', 'vlm.ts'));
}
cli.main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`INTERNAL: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  },
);
