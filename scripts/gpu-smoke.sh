#!/usr/bin/env bash
# A smoke run of the services on a GPU host (docs/deploy.md, "Node.js in the images"): the embedded
# model's demo, then a float16 bundle through `serve all` and `vlm ask` under every method. Exits
# non-zero if the demo fails, a request fails, or the services log an error.
#   PROVIDER=cuda:0 OUT=/tmp/smoke bash scripts/gpu-smoke.sh      (PROVIDER=cpu works anywhere)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vlm-smoke}
PROVIDER=${PROVIDER:-cuda:0}
BUNDLE=${BUNDLE:-test/fixtures/random-bundle-gpu}
PORT=${PORT:-50652}
mkdir -p "$OUT"
failed=0
echo "node $(node --version), provider $PROVIDER"
timeout 240 node bin/vlm.js demo --provider "$PROVIDER" > "$OUT/demo.txt" 2> "$OUT/demo.err" || { echo "demo failed: $(tail -3 "$OUT/demo.err")"; failed=1; }
tail -20 "$OUT/demo.txt"
node bin/vlm.js serve all --host 127.0.0.1 --model "$BUNDLE" --provider "$PROVIDER" --vision-port 0 --language-port "$PORT" --metrics-port 0 > "$OUT/serve.out" 2> "$OUT/serve.err" &
pid=$!
for _ in $(seq 1 120); do grep -q "\"msg\":\"serving\".*:$PORT\"" "$OUT/serve.err" && break; sleep 1; done
for args in "" "--vision-method ficoco-v --budget 50%" "--vision-method tome --budget 50%" "--language-method sparsevlm --budget 50%" \
    "--language-method ficoco-l --budget 50%" "--language-method fastv --budget 50%" "--preset ficoco-vl --budget 50%"; do
  # shellcheck disable=SC2086 # the method flags are meant to split
  if answer=$(timeout 60 node bin/vlm.js ask --target "127.0.0.1:$PORT" --image models/tiny-llava-shapes/eval/images/0000.png \
      --question "what color is the diamond?" --max-tokens 4 --json $args 2>&1); then
    echo "ok   ${args:-unreduced}: $(node -e 'const r = JSON.parse(process.argv[1]); console.log(JSON.stringify(r.answer), "visual", JSON.stringify(r.tokens.perLayerVisual))' "$answer")"
  else
    echo "FAIL ${args:-unreduced}: $answer"; failed=1
  fi
done
kill -TERM "$pid"; wait "$pid" || failed=1
errors=$(grep -c '"level":"error"' "$OUT/serve.err")
[ "$errors" = 0 ] || { echo "$errors error lines in $OUT/serve.err"; failed=1; }
exit $failed
