#!/usr/bin/env node
/**
 * Runs the TypeScript runtime (compiled dist/) over the items of gpu_bench.py's ref.json, with and
 * without reduction, and writes what gpu_bench.py compare reads:
 *
 *   node tools/llava/ts_run.cjs --model /tmp/l7/bundle --dir /tmp/l7 --provider cuda \
 *        --policies none,ficoco-v:none:192,none:fastv:192,none:sparsevlm:192,tome:none:192,ficoco-v:ficoco-l:192
 *
 * A policy is `vision:language[:budget]`. For each item and policy: greedy tokens, per-stage timings of
 * the second of two runs (the first opens sessions and warms the provider), visual tokens; with
 * policy none also every step's logits (ts_logits_<item>.bin, float32) for the logit comparison.
 * Plain CommonJS so it runs on the GPU host next to the packed runtime without a TypeScript toolchain.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const dist = path.resolve(__dirname, '..', '..', 'dist', 'shared');
const { configFrom, providerName } = require(path.join(dist, 'config.js'));
const engine = require(path.join(dist, 'engine', 'index.js'));

function parsePolicy(spec) {
  const [vision, language, budget] = spec.split(':');
  return {
    label: spec,
    policy: { vision, language, budget: budget ? { tokens: Number(budget) } : null, mode: 'clean', params: {}, seed: 0 },
  };
}

async function runOnce(model, item, policy, maxNewTokens, keepLogits) {
  const logits = [];
  const tap = keepLogits ? (key, t) => { if (key === 'language/head:logits') logits.push(Float32Array.from(t.data)); } : undefined;
  const png = new Uint8Array(fs.readFileSync(item.image));
  const t0 = performance.now();
  const visual = await engine.encodeImage(model, png, policy, { tap });
  const result = await engine.generate(model, visual, item.question, { ...engine.GREEDY, maxNewTokens }, policy, { tap });
  const totalMs = performance.now() - t0;
  return { visual, result, logits, totalMs };
}

async function main() {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' }, dir: { type: 'string' }, provider: { type: 'string', default: 'cuda' },
      policies: { type: 'string', default: 'none:none' }, 'max-new-tokens': { type: 'string' }, items: { type: 'string' },
      append: { type: 'boolean', default: false },
    },
  });
  const dir = values.dir;
  const ref = JSON.parse(fs.readFileSync(path.join(dir, 'ref.json'), 'utf8'));
  const maxNewTokens = Number(values['max-new-tokens'] ?? ref.max_new_tokens);
  const config = configFrom({ model: values.model, provider: values.provider, 'log-level': 'warn', 'max-new-tokens-limit': String(maxNewTokens) });
  const t0 = performance.now();
  const model = await engine.loadModel({ model: config.model, runtime: config.runtime, limits: config.limits });
  const loadMs = performance.now() - t0;
  console.error(`loaded ${model.manifest.model_id} (${model.manifest.io_dtype}) on ${config.runtime.providers.map(providerName).join(',')} in ${(loadMs / 1000).toFixed(1)} s`);
  const itemIndexes = values.items ? values.items.split(',').map(Number) : ref.items.map((_, i) => i);
  const outFile = path.join(dir, 'ts.json');
  // --append: keep the runs of an earlier invocation (e.g. reductions on fewer items after 'none' on all)
  const runs = values.append && fs.existsSync(outFile) ? JSON.parse(fs.readFileSync(outFile, 'utf8')).runs : [];
  const provider = config.runtime.providers.map(providerName).join(',');
  // Written after every run, so a run cut short by the host's time limit still leaves its results.
  const save = () => fs.writeFileSync(outFile, JSON.stringify({ provider, io_dtype: model.manifest.io_dtype, load_ms: Math.round(loadMs), runs }, null, 1));
  for (const spec of values.policies.split(',')) {
    const { label, policy } = parsePolicy(spec);
    for (const i of itemIndexes) {
      const item = ref.items[i];
      const keepLogits = policy.vision === 'none' && policy.language === 'none';
      try {
        const first = await runOnce(model, item, policy, maxNewTokens, keepLogits);
        const second = await runOnce(model, item, policy, maxNewTokens, false);
        const r = second.result;
        const entry = {
          item: i, policy: label, tokens: [...first.result.tokenIds], finish: first.result.finishReason,
          same_tokens_second_run: JSON.stringify(r.tokenIds) === JSON.stringify(first.result.tokenIds),
          visual_tokens: first.visual.embeds.dims[0], achieved_budget: r.achievedBudget,
          timing: {
            first_run_ms: Math.round(first.totalMs), total_ms: Math.round(second.totalMs),
            vision_ms: Math.round(second.visual.timingsMs.vision), preprocess_ms: Math.round(second.visual.timingsMs.preprocess),
            prefill_ms: Math.round(r.timingsMs.prefill), decode_ms_per_token: r.tokenIds.length > 1 ? +(r.timingsMs.decode / (r.tokenIds.length - 1)).toFixed(1) : null,
          },
          flops: { vision: second.visual.flops.vision, prefill: r.flops.prefill, decode: r.flops.decode },
        };
        if (keepLogits) {
          const file = `ts_logits_${i}.bin`;
          const flat = new Float32Array(first.logits.length * first.logits[0].length);
          first.logits.forEach((l, s) => flat.set(l, s * l.length));
          fs.writeFileSync(path.join(dir, file), Buffer.from(flat.buffer));
          entry.logits_file = file;
          entry.logits_shape = [first.logits.length, first.logits[0].length];
        }
        runs.push(entry);
        console.error(`[${label}] item ${i}: ${entry.tokens.join(' ')} | ${JSON.stringify(entry.timing)}`);
      } catch (err) {
        runs.push({ item: i, policy: label, error: String(err && err.message || err) });
        console.error(`[${label}] item ${i}: ERROR ${err && err.message || err}`);
      }
      save();
    }
  }
  await engine.disposeModel(model);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
