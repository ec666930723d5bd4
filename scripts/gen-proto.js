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
// describe the API (grpcurl describe, buf curl, Postman) show the contract's comments
// (services/common/reflection.ts). grpc.health.v1 comes from grpc-health-check's own health.proto,
// built the same way (as health/v1/health.proto): proto-loader's descriptor of it names the map entry
// and types in ways Go reflection clients refuse. Two sets concatenated are one set (a repeated field).
const healthRoot = path.resolve(path.dirname(require('grpc-health-check').protoPath), '..', '..');
const sets = [[], [healthRoot]].map((input, i) => {
  const file = path.join(out, `descriptors-${i}.binpb`);
  const built = spawnSync(buf, ['build', ...input, '--as-file-descriptor-set', '-o', file], { cwd: root, stdio: 'inherit' });
  if (built.error) {
    console.error(`gen-proto: cannot run ${buf}: ${built.error.message}`);
    process.exit(1);
  }
  if (built.status !== 0) process.exit(built.status ?? 1);
  const bytes = fs.readFileSync(file);
  fs.rmSync(file);
  return bytes;
});
fs.writeFileSync(path.join(out, 'descriptors.binpb'), Buffer.concat(sets));
