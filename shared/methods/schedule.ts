/**
 * Budget-to-schedule arithmetic shared by the methods: reading anchors, distributing removals over
 * layers, and the infeasible-budget error. Budgets are average visual tokens per decoder layer.
 */
import { VlmError } from '../errors';
import type { BudgetRange, MethodOptions, VisionStep } from './types';

/** Reads `anchors.a.b` from either nested objects or flat dotted keys. */
export function anchor(anchors: Readonly<Record<string, unknown>>, path: string): unknown {
  if (path in anchors) return anchors[path];
  let node: unknown = anchors;
  for (const part of path.split('.')) {
    if (typeof node !== 'object' || node === null || !(part in node)) return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}

/** A numeric `policy.params` entry: the fallback when absent, INVALID_ARGUMENT when not a finite number. */
export function numberParam(options: MethodOptions, key: string, fallback: number): number {
  const v = options.params[key];
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw VlmError.invalid(`policy.params[${key}]`, `must be a number, got ${String(v)}`);
  return v;
}

export function anchorInt(anchors: Readonly<Record<string, unknown>>, path: string, fallback: number): number {
  const v = anchor(anchors, path);
  return typeof v === 'number' && Number.isInteger(v) ? v : fallback;
}

export function anchorIntList(anchors: Readonly<Record<string, unknown>>, path: string, fallback: number[]): number[] {
  const v = anchor(anchors, path);
  return Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isInteger(x)) ? (v as number[]) : fallback;
}

/** Maps a layer index of a reference depth (LLaVA: 32 decoder / 24 encoder layers) to this depth. */
export function scaleLayer(layer: number, referenceDepth: number, depth: number): number {
  return Math.min(depth - 1, Math.max(0, Math.round((layer * depth) / referenceDepth)));
}

export function infeasible(method: string, budget: number, range: BudgetRange, why: string): VlmError {
  return VlmError.invalid(
    'policy.budget',
    `${method} cannot reach an average of ${fmt(budget)} visual tokens per decoder layer on this model (${why}); feasible range is [${fmt(range.min)}, ${fmt(range.max)}]`,
  );
}

/** Two decimals, and four significant digits below 10 (two decimals made 1.078 and 1.083 both read 1.08). */
export function fmt(x: number): string {
  if (Number.isInteger(x)) return String(x);
  const decimals = Math.max(2, 3 - Math.floor(Math.log10(Math.abs(x))));
  return String(Number(x.toFixed(Math.min(decimals, 20))));
}

export function checkBudgetInRange(method: string, budget: number, range: BudgetRange, why: string): void {
  if (budget < range.min - 1e-9 || budget > range.max + 1e-9) throw infeasible(method, budget, range, why);
}

/**
 * Vision steps removing `remove` tokens over layers start..numLayers-1, as evenly as the per-step cap
 * allows (earlier layers take the remainder: later layers have fewer tokens to spare).
 * `cap(tokensIn)` is the most one step can remove. Returns null when the caps make it impossible.
 */
export function distributeVisionRemoval(
  tokensIn: number,
  remove: number,
  start: number,
  numLayers: number,
  cap: (tokensIn: number) => number,
): VisionStep[] | null {
  const maxAfter = (t: number, layers: number): number => {
    let total = 0;
    for (let i = 0; i < layers; i++) {
      const r = cap(t);
      total += r;
      t -= r;
    }
    return total;
  };
  const steps: VisionStep[] = [];
  let t = tokensIn;
  let left = remove;
  for (let layer = start; layer < numLayers && left > 0; layer++) {
    const layersLeft = numLayers - layer;
    let r = Math.ceil(left / layersLeft);
    // Take more now if the later, smaller layers could not absorb the rest.
    while (r < cap(t) && left - r > maxAfter(t - r, layersLeft - 1)) r++;
    r = Math.min(r, cap(t), left);
    if (r <= 0) return null;
    steps.push({ layer, tokensIn: t, tokensOut: t - r });
    t -= r;
    left -= r;
  }
  return left === 0 ? steps : null;
}

/** Mean of per-layer counts. */
export function average(counts: readonly number[]): number {
  return counts.reduce((a, b) => a + b, 0) / counts.length;
}

/**
 * Bisection on a monotone (non-increasing in x) integer-valued mean: the x in [lo, hi] whose mean is
 * closest to the target. Used to turn a budget into the shape parameter of a language schedule.
 */
export function solveMonotone(meanOf: (x: number) => number, target: number, lo: number, hi: number): number {
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (meanOf(mid) > target) lo = mid;
    else hi = mid;
  }
  return Math.abs(meanOf(lo) - target) <= Math.abs(meanOf(hi) - target) ? lo : hi;
}
