/**
 * `vlm bench accuracy [--model DIR] [--limit N] [--mode clean|exact] [--seed N] [--docs DIR] [--json]`
 *
 * Every reduction method (and ficoco-vl) at budgets of 50 %, 25 % and 12.5 % of the unreduced visual
 * tokens, plus the unreduced model, on the bundle's evaluation items. One InferencePool serves every
 * cell (the policy is per request). A budget a method cannot reach on this model is reported as an
 * infeasible row, not dropped. Progress goes to stderr; the last stdout line is one JSON object with
 * `rows` (--json) or a markdown table. `--docs DIR` also writes DIR/bench-accuracy.md and
 * DIR/bench-accuracy.svg (accuracy against FLOPs) for the README.
 */
import { GREEDY } from '../shared/engine/sampling';
import { mkdir, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { parseCommandLine } from '../shared/config';
import type { CommandFlags } from './help';
import { VlmError } from '../shared/errors';
import { writableDir } from './output-paths';
import { addFlops, emptyFlops, totalFlops, type StageFlops } from '../shared/flops/flops';
import { setLogLevel } from '../shared/log';
import { isInfeasibleBudget, METHOD_PRESETS, type ReductionPolicy } from '../shared/methods/policy';
import type { LanguageMethodName, VisionMethodName } from '../shared/methods/types';
import { languageMethodNames, visionMethodNames } from '../shared/methods/registry';
import { InferencePool } from '../shared/worker';
import { evalRunFlags, evalRuntime, IN_PROCESS_CONFIG } from './eval';
import { isCorrect, readItemImage, type EvalItem } from './eval-items';

const FLAGS = {
  limit: { type: 'string', arg: 'N', help: 'N items taken evenly across the question types [default: all]' },
  mode: { type: 'string', arg: 'MODE', help: 'clean or exact [default: clean]' },
  seed: { type: 'string', arg: 'N', help: 'seed of the random methods [default: 0]' },
  docs: { type: 'string', arg: 'DIR', help: 'also write DIR/bench-accuracy.md and DIR/bench-accuracy.svg' },
  'max-new-tokens': { type: 'string', arg: 'N', help: 'most answer tokens per item [default: the model\'s]' },
  json: { type: 'boolean', help: 'last stdout line: one JSON object with rows (else a markdown table)' },
} as const satisfies CommandFlags;

export const BUDGET_PERCENTS = [50, 25, 12.5] as const;

export interface Cell {
  readonly vision: VisionMethodName;
  readonly language: LanguageMethodName;
  readonly preset?: string;
  /** Percent of the unreduced visual tokens; null for the unreduced model. */
  readonly percent: number | null;
}

export function benchCells(): Cell[] {
  // Every method alone, in the registry's order, then every preset.
  const methods: Array<Omit<Cell, 'percent'>> = [
    ...visionMethodNames().filter((v) => v !== 'none').map((vision) => ({ vision, language: 'none' as const })),
    ...languageMethodNames().filter((l) => l !== 'none').map((language) => ({ vision: 'none' as const, language })),
    ...Object.entries(METHOD_PRESETS).map(([preset, pair]) => ({ ...pair, preset })),
  ];
  return [{ vision: 'none', language: 'none', percent: null }, ...methods.flatMap((m) => BUDGET_PERCENTS.map((percent) => ({ ...m, percent })))];
}

export interface Row {
  vision_method: VisionMethodName;
  language_method: LanguageMethodName;
  preset: string | null;
  budget_percent: number | null;
  /** Absolute average visual tokens per decoder layer requested; null for the unreduced model. */
  budget: number | null;
  feasible: boolean;
  error: string | null;
  items: number;
  correct: number;
  accuracy: number | null;
  /** Wilson score interval, 95 %. */
  ci95: [number, number] | null;
  retention: number | null;
  visual_tokens_avg: number | null;
  /** FLOPs per item (2 x multiply-accumulates), all stages and method overhead. */
  flops: number | null;
}

export function wilson(correct: number, n: number, z = 1.959963984540054): [number, number] {
  if (n === 0) return [0, 1];
  const p = correct / n;
  const denom = 1 + (z * z) / n;
  const centre = (p + (z * z) / (2 * n)) / denom;
  const half = (z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n))) / denom;
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

export function label(r: Pick<Row, 'vision_method' | 'language_method' | 'preset'>): string {
  if (r.preset) return r.preset;
  if (r.vision_method === 'none' && r.language_method === 'none') return 'none';
  return r.vision_method !== 'none' ? `${r.vision_method} (vision)` : `${r.language_method} (language)`;
}

export function markdownTable(rows: readonly Row[]): string {
  const pct = (x: number | null) => (x === null ? '—' : `${(100 * x).toFixed(1)}`);
  const lines = [
    '| method | budget | visual tokens (avg) | accuracy % (95 % CI) | retention % | GFLOPs / item |',
    '|---|---|---|---|---|---|',
    ...rows.map((r) => {
      const budget = r.budget === null ? 'unreduced' : `${r.budget_percent} % (${r.budget.toFixed(1)})`;
      if (!r.feasible) return `| ${label(r)} | ${budget} | infeasible | — | — | — |`;
      const ci = r.ci95 ? ` (${pct(r.ci95[0])}–${pct(r.ci95[1])})` : '';
      return `| ${label(r)} | ${budget} | ${r.visual_tokens_avg?.toFixed(1)} | ${pct(r.accuracy)}${ci} | ${pct(r.retention)} | ${((r.flops ?? 0) / 1e9).toFixed(3)} |`;
    }),
  ];
  return lines.join('\n');
}

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#17becf'];

/** Accuracy against FLOPs per item; one polyline per method through its budgets, the unreduced model as a star. */
export function svgPlot(rows: readonly Row[], title: string): string {
  const ok = rows.filter((r) => r.feasible && r.accuracy !== null && r.flops !== null);
  const W = 720;
  const H = 440;
  const m = { l: 64, r: 200, t: 40, b: 52 };
  const xs = ok.map((r) => r.flops! / 1e9);
  const xMax = Math.max(...xs, 1e-9) * 1.05;
  const xMin = Math.min(...xs, xMax) * 0.95;
  const sx = (x: number) => m.l + ((x - xMin) / (xMax - xMin || 1)) * (W - m.l - m.r);
  const sy = (y: number) => H - m.b - y * (H - m.t - m.b);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="22" font-size="14">${escapeXml(title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="black"/>`,
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 14}" text-anchor="middle">GFLOPs per item</text>`,
    `<text x="16" y="${(m.t + H - m.b) / 2}" transform="rotate(-90 16 ${(m.t + H - m.b) / 2})" text-anchor="middle">accuracy</text>`,
  ];
  for (let k = 0; k <= 5; k++) {
    const y = k / 5;
    parts.push(`<line x1="${m.l - 4}" y1="${sy(y)}" x2="${W - m.r}" y2="${sy(y)}" stroke="#ddd"/><text x="${m.l - 8}" y="${sy(y) + 4}" text-anchor="end">${y.toFixed(1)}</text>`);
    const x = xMin + (k / 5) * (xMax - xMin);
    parts.push(`<text x="${sx(x)}" y="${H - m.b + 16}" text-anchor="middle">${x.toPrecision(3)}</text>`);
  }
  const groups = new Map<string, Row[]>();
  for (const r of ok) groups.set(label(r), [...(groups.get(label(r)) ?? []), r]);
  let i = 0;
  for (const [name, rs] of groups) {
    const color = name === 'none' ? 'black' : COLORS[i++ % COLORS.length]!;
    const pts = rs.map((r) => [sx(r.flops! / 1e9), sy(r.accuracy!)] as const).sort((a, b) => a[0] - b[0]);
    if (name === 'none') {
      const [x, y] = pts[0]!;
      parts.push(`<text x="${x}" y="${y + 5}" text-anchor="middle" font-size="18">★</text>`);
    } else {
      parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')}"/>`);
      for (const [x, y] of pts) parts.push(`<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3.5" fill="${color}"/>`);
    }
    const ly = m.t + 18 * (groups.size > 0 ? [...groups.keys()].indexOf(name) : 0);
    parts.push(`<text x="${W - m.r + 14}" y="${ly + 4}" fill="${color}">${name === 'none' ? '★ unreduced' : `● ${escapeXml(name)}`}</text>`);
  }
  parts.push('</svg>');
  return parts.join('\n');
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'accuracy') throw VlmError.invalid('bench', `unknown benchmark "${sub ?? ''}"; available: accuracy, load, latency`);
  const parsed = parseCommandLine(rest, FLAGS, process.env, IN_PROCESS_CONFIG);
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const config = evalRuntime(parsed.config, values);
  // Judged before any cell runs: a --max-new-tokens the engine refuses would mark every cell infeasible.
  const { mode, seed, items, maxNewTokens: maxNewTokensFlag, logLevel } = await evalRunFlags(values, config);
  setLogLevel(logLevel);
  if (typeof values.docs === 'string') writableDir('docs', values.docs);
  const images = await Promise.all(items.map((it) => readItemImage(config.model.dir, it)));
  const progress = (s: string) => process.stderr.write(`[bench accuracy] ${s}\n`);
  const started = performance.now();
  const pool = await InferencePool.start({ model: config.model, runtime: config.runtime, limits: config.limits, logLevel });
  const maxNewTokens = maxNewTokensFlag ?? Math.min(pool.manifest.generation.max_new_tokens, config.limits.maxNewTokens);
  const cells = benchCells();
  progress(`${items.length} items x ${cells.length} cells, mode ${mode}, ${config.runtime.workers} workers x ${config.runtime.intraOpThreads} threads`);

  const rows: Row[] = [];
  let fullTokens = 0;
  let baseline: number | null = null;
  try {
    for (const cell of cells) {
      const policy: ReductionPolicy = {
        vision: cell.vision, language: cell.language, budget: cell.percent === null ? null : { percent: cell.percent }, mode, params: {}, seed,
      };
      const result = await runCell(pool, items, images, policy, maxNewTokens);
      if (cell.percent === null) {
        fullTokens = result.visionTokensOut;
        baseline = result.accuracy;
      }
      const budget = cell.percent === null ? null : (cell.percent / 100) * fullTokens;
      const row: Row = {
        vision_method: cell.vision,
        language_method: cell.language,
        preset: cell.preset ?? null,
        budget_percent: cell.percent,
        budget,
        feasible: result.error === null,
        error: result.error,
        items: result.items,
        correct: result.correct,
        accuracy: result.error === null ? result.accuracy : null,
        ci95: result.error === null ? wilson(result.correct, result.items) : null,
        retention: result.error === null && baseline ? result.accuracy / baseline : null,
        visual_tokens_avg: result.error === null ? result.visualTokens : null,
        flops: result.error === null ? result.flops : null,
      };
      rows.push(row);
      progress(`${label(row)} ${cell.percent ?? 'unreduced'}${cell.percent === null ? '' : ' %'}: ${row.feasible ? `accuracy ${row.accuracy!.toFixed(4)}, ${row.visual_tokens_avg!.toFixed(1)} tokens, ${(row.flops! / 1e9).toFixed(3)} GFLOPs` : `infeasible (${row.error})`} [${((performance.now() - started) / 1000).toFixed(0)} s]`);
    }
  } finally {
    await pool.close();
  }

  const title = `${pool.manifest.model_id}: accuracy vs FLOPs, ${items.length} items, ${mode} mode`;
  if (typeof values.docs === 'string') {
    await mkdir(values.docs, { recursive: true });
    await writeFile(path.join(values.docs, 'bench-accuracy.svg'), svgPlot(rows, title));
    await writeFile(
      path.join(values.docs, 'bench-accuracy.md'),
      `# Accuracy vs budget (${pool.manifest.model_id})\n\nGenerated by \`vlm bench accuracy --limit ${items.length} --mode ${mode} --docs ${values.docs}\`. Budget: average visual tokens per decoder layer (percent of the unreduced ${fullTokens}); FLOPs per item include every stage and the methods' scores graphs (not their host-side scoring); the interval is Wilson's 95 %.\n\n${markdownTable(rows)}\n\n![accuracy vs FLOPs](bench-accuracy.svg)\n`,
    );
  }
  const summary = {
    model_id: pool.manifest.model_id,
    content_hash: pool.manifest.content_hash,
    mode,
    items: items.length,
    full_visual_tokens: fullTokens,
    rows,
    wall_s: (performance.now() - started) / 1000,
    workers: config.runtime.workers,
  };
  if (values.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else process.stdout.write(`${markdownTable(rows)}\n`);
  return 0;
}

interface CellResult {
  items: number;
  correct: number;
  accuracy: number;
  visualTokens: number;
  visionTokensOut: number;
  flops: number;
  error: string | null;
}

async function runCell(pool: InferencePool, items: readonly EvalItem[], images: readonly Uint8Array[], policy: ReductionPolicy, maxNewTokens: number): Promise<CellResult> {
  let correct = 0;
  let visualTokens = 0;
  let visionTokensOut = 0;
  let flops: StageFlops = emptyFlops();
  let next = 0;
  let error: string | null = null;
  const controller = new AbortController();
  const lanes = Array.from({ length: pool.stats.workers }, async () => {
    while (next < items.length && error === null) {
      const k = next++;
      try {
        const r = await pool.ask(images[k]!, items[k]!.question, { ...GREEDY, maxNewTokens }, policy, { signal: controller.signal });
        if (isCorrect(r.generate.text, items[k]!.answer)) correct++;
        visualTokens += r.generate.achievedBudget;
        visionTokensOut += r.encode.embeds.dims[0]!;
        flops = addFlops(flops, addFlops(r.encode.flops, r.generate.flops));
      } catch (err) {
        const e = VlmError.from(err);
        // Either way the other lanes stop sending this cell's items.
        controller.abort(e);
        // An unreachable budget is a property of the cell, not a failure of the benchmark; any other
        // refusal is a fault of this run and ends it.
        if (!isInfeasibleBudget(e)) throw err;
        error ??= e.message;
      }
    }
  });
  await Promise.all(lanes);
  const n = items.length;
  return { items: n, correct, accuracy: n ? correct / n : 0, visualTokens: n ? visualTokens / n : 0, visionTokensOut: n ? visionTokensOut / n : 0, flops: n ? totalFlops(flops) / n : 0, error };
}
