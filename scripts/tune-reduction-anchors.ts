/**
 * Grid search of a bundle's `manifest.reduction` anchors on a VALIDATION split (never the bundle's
 * committed test items):
 *
 *   /usr/bin/python3 -c "import sys; sys.argv=['x','--out','/tmp/valsplit/eval','--images','70']; \
 *     import tools.vqa.make_eval as m; m.TEST_SEED=1; m.main()"      # validation seed 1, 350 items
 *   npx tsx scripts/tune-reduction-anchors.ts --eval /tmp/valsplit/eval [--limit 105] [--work /tmp/val-search]
 *
 * The work folder links every bundle file and the validation eval/, and gets its own manifest per
 * grid point. Each (method, anchor) is scored at 50/25/12.5 % in clean mode; a budget whose resolved
 * schedule equals one already run (the methods move anchors earlier for small budgets) reuses that
 * result. Prints one JSON line per grid point and, per anchor, the mean accuracy over the budgets.
 *
 * The `ficoco_l_params` points keep the manifest and vary FiCoCo-L's request parameters instead
 * (`--only ficoco_l_params`): evidence that its miss on this model is not a matter of the paper's
 * β and γ (shared/methods/README.md); the bundle's defaults stay the paper's.
 */
import { mkdir, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { isCorrect, readItems, selectEvenly } from '../cli/eval-items';
import { parseCommandLine } from '../shared/config';
import { geometryOf } from '../shared/engine/model';
import { setLogLevel } from '../shared/log';
import { resolveLanguageSchedule, resolveVisionSchedule, type ReductionPolicy } from '../shared/methods/policy';
import type { LanguageMethodName, VisionMethodName } from '../shared/methods/types';
import { InferencePool } from '../shared/worker';

const BUDGETS = [50, 25, 12.5] as const;

interface GridPoint {
  readonly vision: VisionMethodName;
  readonly language: LanguageMethodName;
  /** manifest.reduction key and the value to put there */
  readonly key: string;
  readonly field: string;
  readonly value: number | number[];
  /** request parameters (policy.params); set only on points that leave the manifest as it is */
  readonly params?: Readonly<Record<string, number>>;
}

/** β 0.6 and γ 0.6 are the paper's; β 1 is the visual term alone, β 0 the task term alone. */
const FICOCO_L_PARAMS: ReadonlyArray<Readonly<Record<string, number>>> = [
  { beta: 0.6 }, { beta: 0 }, { beta: 0.3 }, { beta: 1 }, { beta: 0, gamma: 0 }, { beta: 0, gamma: 1 }, { beta: 0.6, gamma: 0 },
];

function grid(): GridPoint[] {
  const v = (vision: VisionMethodName, key: string, values: number[]): GridPoint[] =>
    values.map((value) => ({ vision, language: 'none', key, field: 'start_layer', value }));
  const l = (language: LanguageMethodName, key: string, field: string, values: Array<number | number[]>): GridPoint[] =>
    values.map((value) => ({ vision: 'none', language, key, field, value }));
  return [
    ...v('ficoco-v', 'ficoco_v', [1, 2, 3, 4, 5, 6]),
    ...v('tome', 'tome', [0, 1, 2, 3, 4]),
    ...l('sparsevlm', 'sparsevlm', 'layers', [[1], [2], [3], [1, 2], [1, 3], [2, 4], [1, 2, 4], [1, 3, 6], [2, 4, 7]]),
    ...l('fastv', 'fastv', 'k', [1, 2, 3]),
    ...l('ficoco-l', 'ficoco_l', 'start_layer', [1, 2, 3, 4, 5, 6]),
    ...FICOCO_L_PARAMS.map((params): GridPoint => ({ vision: 'none', language: 'ficoco-l', key: 'ficoco_l_params', field: 'params', value: [], params })),
  ];
}

async function linkBundle(base: string, evalDir: string, work: string): Promise<void> {
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  for (const entry of await readdir(base)) {
    if (entry === 'manifest.json' || entry === 'eval') continue;
    await symlink(path.join(base, entry), path.join(work, entry));
  }
  await symlink(evalDir, path.join(work, 'eval'));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { model: { type: 'string' }, eval: { type: 'string' }, work: { type: 'string' }, limit: { type: 'string' }, only: { type: 'string' } },
  });
  const base = path.resolve(values.model ?? 'models/tiny-llava-shapes');
  if (!values.eval) throw new Error('--eval DIR (a validation split made with tools/vqa/make_eval.py and a seed other than the test seed) is required');
  const evalDir = path.resolve(values.eval);
  if (evalDir === path.join(base, 'eval')) throw new Error('refusing to tune on the bundle\'s own (test) items');
  const work = path.resolve(values.work ?? '/tmp/val-search');
  await linkBundle(base, evalDir, work);
  const baseManifest = JSON.parse(await readFile(path.join(base, 'manifest.json'), 'utf8'));
  setLogLevel('warn');

  const items = selectEvenly(await readItems(work), values.limit ? Number(values.limit) : 105);
  const images = await Promise.all(items.map((it) => readFile(path.join(work, 'eval', it.image))));
  const { config } = parseCommandLine(['--model', work], {});
  const workers = Math.max(1, availableParallelism());
  const runtime = { ...config.runtime, intraOpThreads: 1, workers };
  const limits = { ...config.limits, queueSize: Math.max(config.limits.queueSize, workers) };
  const cache = new Map<string, number>();

  const points = grid().filter((p) => !values.only || values.only.split(',').includes(p.key));
  for (const point of points) {
    const manifest = structuredClone(baseManifest);
    if (!point.params) manifest.reduction[point.key] = { ...manifest.reduction[point.key], [point.field]: point.value };
    await writeFile(path.join(work, 'manifest.json'), JSON.stringify(manifest, null, 2));
    const g = geometryOf(manifest);
    const accuracies: Record<string, number> = {};
    const schedules: Record<string, unknown> = {};
    let pool: InferencePool | null = null;
    try {
      for (const percent of BUDGETS) {
        const policy: ReductionPolicy = { vision: point.vision, language: point.language, budget: { percent }, mode: 'clean', params: { ...point.params }, seed: 0 };
        const schedule = point.vision !== 'none'
          ? resolveVisionSchedule(policy, g.vision).steps.map((s) => [s.layer, s.tokensOut])
          : resolveLanguageSchedule(policy, { ...g.language, visualTokens: g.vision.numPatches }).perLayerVisualTokens;
        schedules[percent] = schedule;
        const key = `${point.vision}/${point.language}/${JSON.stringify(point.params ?? {})}/${JSON.stringify(schedule)}`;
        let acc = cache.get(key);
        if (acc === undefined) {
          pool ??= await InferencePool.start({ model: config.model, runtime, limits, logLevel: 'warn' });
          let correct = 0;
          let next = 0;
          const p: InferencePool = pool;
          await Promise.all(Array.from({ length: workers }, async () => {
            while (next < items.length) {
              const k = next++;
              const r = await p.ask(images[k]!, items[k]!.question, { temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: manifest.generation.max_new_tokens }, policy);
              if (isCorrect(r.generate.text, items[k]!.answer)) correct++;
            }
          }));
          acc = correct / items.length;
          cache.set(key, acc);
        }
        accuracies[percent] = acc;
      }
    } finally {
      await pool?.close();
    }
    const mean = BUDGETS.reduce((s, b) => s + accuracies[b]!, 0) / BUDGETS.length;
    process.stdout.write(`${JSON.stringify({ method: point.vision !== 'none' ? point.vision : point.language, anchor: `${point.key}.${point.field}`, value: point.params ?? point.value, items: items.length, accuracy: accuracies, mean, schedules })}\n`);
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
