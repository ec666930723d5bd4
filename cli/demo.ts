/**
 * `vlm demo [--model DIR] [--items N] [config flags]` (`npm run demo`)
 *
 * Starts the vision and language services as two processes on free loopback ports, waits until both
 * report SERVING, asks a few of the model's committed evaluation questions under several reduction
 * policies, prints answers, token counts, FLOPs and latency, stops both and exits.
 * Config flags (--provider, --workers, ...) are passed on to both services.
 * A bundle without eval/items.jsonl (e.g. a random-weight fixture) gets one generated image.
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { coLocatedServiceEnv, parseCommandLine } from '../shared/config';
import type { CommandFlags } from './help';
import { VlmError } from '../shared/errors';
import { integerFlag } from './numeric-flags';
import { ReductionPolicy, SamplingParams } from '../gen/vlm/v1/common';
import { generateOnce, languageClient } from '../services/language/client';
import { isCorrect } from './eval-items';
import { questionItems, serveFlags, startChildServices, CHILD_SERVICES_CONFIG } from './child-services';
import { sentToken } from '../shared/auth-tokens';

const FLAGS = { items: { type: 'string', arg: 'N', help: 'questions asked under each policy [default: 3]' } } as const satisfies CommandFlags;

/** Several policies at one budget: what each method keeps, and what it costs. */
const POLICIES: ReadonlyArray<[string, Partial<ReductionPolicy>]> = [
  ['none', {}],
  ['ficoco-v 25%', { visionMethod: 'ficoco-v', budget: { $case: 'budgetPercent', budgetPercent: 25 } }],
  ['tome 25%', { visionMethod: 'tome', budget: { $case: 'budgetPercent', budgetPercent: 25 } }],
  ['fastv 25%', { languageMethod: 'fastv', budget: { $case: 'budgetPercent', budgetPercent: 25 } }],
  ['sparsevlm 25%', { languageMethod: 'sparsevlm', budget: { $case: 'budgetPercent', budgetPercent: 25 } }],
  ['ficoco-vl 25%', { preset: 'ficoco-vl', budget: { $case: 'budgetPercent', budgetPercent: 25 } }],
];

function fmtFlops(f: number): string {
  return f >= 1e12 ? `${(f / 1e12).toFixed(2)} T` : f >= 1e9 ? `${(f / 1e9).toFixed(2)} G` : `${(f / 1e6).toFixed(1)} M`;
}

function row(cells: readonly string[], widths: readonly number[]): string {
  return cells.map((c, i) => c.slice(0, widths[i]).padEnd(widths[i]!)).join('  ');
}

export async function run(argv: string[]): Promise<number> {
  const { config, values } = parseCommandLine(argv, FLAGS, process.env, CHILD_SERVICES_CONFIG);
  const modelDir = config.model.dir;
  if (!existsSync(path.join(modelDir, 'manifest.json'))) {
    throw new VlmError('FAILED_PRECONDITION', `no model bundle at ${modelDir}; pass --model DIR`);
  }
  const items = await questionItems(modelDir, integerFlag(values, 'items', 1, 10_000) ?? 3);
  const env = coLocatedServiceEnv(values, 2);
  const started = Date.now();
  const services = await startChildServices({ modelDir, env, flags: serveFlags(argv, FLAGS) });
  const { visionPort, languagePort } = services;
  const client = languageClient(`127.0.0.1:${languagePort}`);
  try {
    process.stdout.write(`vision :${visionPort} and language :${languagePort} serving ${path.relative(process.cwd(), modelDir) || modelDir} after ${((Date.now() - started) / 1000).toFixed(1)} s\n\n`);
    const widths = [14, 34, 20, 12, 2, 18, 9, 6];
    process.stdout.write(`${row(['policy', 'question', 'answer', 'expected', 'ok', 'visual tokens', 'FLOPs', 'ms'], widths)}\n`);
    for (const [name, policy] of POLICIES) {
      for (const item of items) {
        const cells = [name, item.question];
        let note = '';
        try {
          const out = await generateOnce(client, { image: item.bytes, prompt: item.question, sampling: SamplingParams.fromPartial({}), policy: ReductionPolicy.fromPartial(policy), limits: undefined }, { deadline: Date.now() + config.limits.deadlineMs, authToken: sentToken(config.rpc.auth) });
          const t = out.final.tokens!;
          const ok = item.answer === '' ? '-' : isCorrect(out.answer, item.answer) ? 'y' : 'n';
          const tokens = `${t.visualReceived}/${t.visualFull} avg ${out.final.policy?.achievedBudget.toFixed(1)}`;
          cells.push(out.answer.trim(), item.answer || '-', ok, tokens, fmtFlops(out.final.flops['total'] ?? 0), out.latencyMs.toFixed(0));
        } catch (err) {
          const e = VlmError.from(err);
          cells.push(e.code);
          note = `  ${' '.repeat(widths[0]!)}${e.message}\n`;
        }
        process.stdout.write(`${row(cells, widths).trimEnd()}\n${note}`);
      }
    }
    return 0;
  } finally {
    client.close();
    await services.stop();
  }
}
