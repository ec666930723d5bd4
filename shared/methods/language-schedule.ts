/**
 * Schedules for the language-side methods: per-layer visual token counts whose mean is the budget.
 * A step after layer ℓ (or inside it, after its attention) changes the count seen from layer ℓ+1 on.
 */
import type { BudgetRange, LanguageStep } from './types';
import { average } from './schedule';

/** Per-layer counts from the counts after each step: layers <= step layer see the previous count. */
export function perLayerCounts(numLayers: number, initial: number, cuts: ReadonlyArray<{ layer: number; out: number }>): number[] {
  const counts: number[] = [];
  let current = initial;
  let c = 0;
  for (let layer = 0; layer < numLayers; layer++) {
    counts.push(current);
    while (c < cuts.length && cuts[c]!.layer === layer) current = cuts[c++]!.out;
  }
  return counts;
}

export function stepsFromCuts(at: LanguageStep['at'], initial: number, cuts: ReadonlyArray<{ layer: number; out: number }>): LanguageStep[] {
  const steps: LanguageStep[] = [];
  let current = initial;
  for (const { layer, out } of cuts) {
    if (out !== current) steps.push({ layer, at, tokensIn: current, tokensOut: out });
    current = out;
  }
  return steps;
}

/**
 * One cut after layer K-1 (FastV, language-side random): keep k so that (K·V + (L−K)·k)/L ≈ b.
 * K starts at the anchor and moves earlier when the first K layers alone exceed the budget.
 */
export function singleCut(numLayers: number, V: number, budget: number, anchorK: number): { K: number; keep: number } | null {
  for (let K = Math.min(anchorK, numLayers - 1); K >= 1; K--) {
    const keep = Math.round((numLayers * budget - K * V) / (numLayers - K));
    if (keep >= 1 && keep <= V) return { K, keep };
  }
  return null;
}

export function singleCutRange(numLayers: number, V: number): BudgetRange {
  return { min: Math.min(V, (V + (numLayers - 1)) / numLayers), max: V };
}

/**
 * FiCoCo-L's shape: from layer s on, about x tokens leave after every layer's attention (the code's
 * constant r), never below one token: count at layer s+j = max(1, V − round(x·j)).
 */
export function constantRateCuts(numLayers: number, V: number, start: number, x: number): Array<{ layer: number; out: number }> {
  const cuts: Array<{ layer: number; out: number }> = [];
  // The last layer's reduction would change no attention: no step there.
  for (let layer = start; layer < numLayers - 1; layer++) cuts.push({ layer, out: Math.max(1, V - Math.round(x * (layer - start + 1))) });
  return cuts;
}

export function meanOfCuts(numLayers: number, V: number, cuts: ReadonlyArray<{ layer: number; out: number }>): number {
  return average(perLayerCounts(numLayers, V, cuts));
}

/**
 * A decline over `m` layers from V to `floor`, then flat: count at layer s+j =
 * round(V − (V − floor)·min(j, m)/m). With m = 1 it is a single cut; larger m spreads the removal
 * over more layers (the constant-r spirit of FiCoCo-L) while keeping `floor` tokens to the end.
 */
export function declineCuts(numLayers: number, V: number, start: number, m: number, floor: number): Array<{ layer: number; out: number }> {
  const cuts: Array<{ layer: number; out: number }> = [];
  for (let layer = start; layer < numLayers - 1; layer++) {
    const j = layer - start + 1;
    cuts.push({ layer, out: Math.max(1, Math.round(V - ((V - floor) * Math.min(j, m)) / m)) });
  }
  return cuts;
}
