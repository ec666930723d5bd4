#!/usr/bin/env node
// `npm run gen`: regenerates gen/ from proto/ with buf (the npm-packaged binary, see buf-path.js) and the local
// ts-proto plugin. Runs in `npm ci` (prepare -> build), so it must work offline and on a fresh clone.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const out = path.join(root, 'gen');
const { bufPath } = require('./buf-path.js');
const buf = bufPath();

// Wiped each run so a deleted or renamed proto leaves no stale TypeScript behind.
fs.rmSync(out, { recursive: true, force: true });

const result = spawnSync(buf, ['generate', '--template', 'buf.gen.yaml'], { cwd: root, stdio: 'inherit' });
if (result.error) {
  console.error(`gen-proto: cannot run ${buf}: ${result.error.message} (run npm ci first)`);
  process.exit(1);
}
if (result.status !== 0) process.exit(result.status ?? 1);

// The protos as a FileDescriptorSet with source info: server reflection serves it, so tools that
// describe the API (grpcurl describe, Postman) show the contract's comments (services/common/reflection.ts).
const set = spawnSync(buf, ['build', '--as-file-descriptor-set', '-o', path.join('gen', 'descriptors.binpb')], { cwd: root, stdio: 'inherit' });
if (set.status !== 0) process.exit(set.status ?? 1);
