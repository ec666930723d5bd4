// Resolves the buf CLI binary. We depend on the platform package directly (@bufbuild/buf-linux-x64)
// rather than @bufbuild/buf, because the registry this project installs from lacks some of the
// wrapper's optional platform packages, which leaves package-lock.json unusable for `npm ci`.
'use strict';
const path = require('node:path');
const fs = require('node:fs');

function bufPath() {
  const arch = { x64: 'x64', arm64: 'aarch64' }[process.arch] ?? process.arch;
  const pkg = `@bufbuild/buf-${process.platform}-${arch}`;
  const candidate = path.join(__dirname, '..', 'node_modules', pkg, 'bin', 'buf');
  if (!fs.existsSync(candidate)) {
    throw new Error(`buf CLI not found at ${candidate}: install ${pkg}@1.75.0 (a devDependency on linux-x64)`);
  }
  return candidate;
}

module.exports = { bufPath };
if (require.main === module) {
  const r = require('node:child_process').spawnSync(bufPath(), process.argv.slice(2), { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
