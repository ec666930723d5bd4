#!/usr/bin/env node
// The `vlm` command: the compiled CLI when `npm run build` has produced dist/, otherwise the
// TypeScript source through tsx (a dev dependency), so `npx vlm` works from a fresh checkout.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const compiled = path.join(root, 'dist', 'cli', 'vlm.js');
let cli;
if (fs.existsSync(compiled)) {
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
