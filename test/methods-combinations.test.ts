/**
 * What every reduction step hands the runner: a well-formed combination over the rows it replaces,
 * whose merged rows are weighted averages (weights summing to one), except FiCoCo-L exact mode,
 * which reproduces the released code's undivided sum.
 */
import { describe, expect, it } from 'vitest';
import { outputRows } from '../shared/methods/combination';
import { fastv } from '../shared/methods/fastv';
import { ficocoL } from '../shared/methods/ficoco-l';
import { ficocoV } from '../shared/methods/ficoco-v';
import { sparsevlm } from '../shared/methods/sparsevlm';
import { tome } from '../shared/methods/tome';
import type { LanguageSchedule, MethodOptions, TokenCombination, VisionSchedule } from '../shared/methods/types';
import { hashMatrix, positiveMatrix } from './methods-inputs';

function rowSums(c: TokenCombination): number[] {
  return Array.from({ length: outputRows(c) }, (_, k) => {
    let s = 0;
    for (let e = c.indptr[k]!; e < c.indptr[k + 1]!; e++) s += c.weight[e]!;
    return s;
  });
}

function expectWellFormed(c: TokenCombination, inputRows: number, outRows: number): void {
  expect(outputRows(c)).toBe(outRows);
  expect(c.indptr[0]).toBe(0);
  for (const s of c.src) expect(s >= 0 && s < inputRows).toBe(true);
}

const grid = 6;
const T = grid * grid + 1;
const tokens = { origin: Int32Array.from({ length: T }, (_, i) => i - 1), size: new Float32Array(T).fill(1) };
const vSchedule = { method: 'ficoco-v', params: { lambda: 0.35, epsilon: 0.998, window: 2, penalty: 2, grid } } as unknown as VisionSchedule;

describe.each(['clean', 'exact'] as const)('%s mode', (mode) => {
  const options: MethodOptions = { mode, params: {}, seed: 3 };

  it('ficoco-v merges into weighted averages and removes exactly r tokens', () => {
    const out = ficocoV.reduce(
      { step: { layer: 0, tokensIn: T, tokensOut: T - 9 }, hidden: hashMatrix(1, T, 4), scores: hashMatrix(2, T, T, 4), probs: positiveMatrix(3, T, T), tokens, state: {} },
      vSchedule,
      options,
    );
    expectWellFormed(out.combine, T, T - 9);
    for (const s of rowSums(out.combine)) expect(s).toBeCloseTo(1, 5);
    expect(out.tokens.size.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(T + 1e-4);
  });

  it('tome merges r pairs with size-weighted averages and carries the sizes', () => {
    const out = tome.reduce({ step: { layer: 0, tokensIn: T, tokensOut: T - 10 }, hidden: hashMatrix(1, T, 4), keys: hashMatrix(4, T, 8), tokens, state: {} }, vSchedule, options);
    expectWellFormed(out.combine, T, T - 10);
    for (const s of rowSums(out.combine)) expect(s).toBeCloseTo(1, 5);
    expect(out.tokens.size.reduce((a, b) => a + b, 0)).toBeCloseTo(T, 4);
  });

  it(`ficoco-l ${mode === 'exact' ? 'adds merged tokens undivided, like the released code' : 'uses the self-preserving average'}`, () => {
    const L = 60;
    const image = { start: 4, length: 40 };
    const out = ficocoL.reduce(
      { step: { layer: 2, at: 'after-attn', tokensIn: 40, tokensOut: 32 }, hidden: hashMatrix(1, L, 4), scores: hashMatrix(5, L, L, 2), image, state: {} },
      {} as LanguageSchedule,
      options,
    );
    expectWellFormed(out.combine, out.span.length, out.span.length - 8);
    const sums = rowSums(out.combine);
    if (mode === 'clean') for (const s of sums) expect(s).toBeCloseTo(1, 5);
    else expect(Math.max(...sums)).toBeGreaterThan(1.5);
  });

  it('sparsevlm keeps its count and appends recycled cluster means', () => {
    const L = 70;
    const image = { start: 3, length: 50 };
    const out = sparsevlm.reduce(
      { step: { layer: 2, at: 'after-layer', tokensIn: 50, tokensOut: 22 }, hidden: hashMatrix(1, L, 4), probs: positiveMatrix(6, L, L), image, state: { sparsevlmRaters: Int32Array.from([0, 3, 5]) } },
      { params: { version: 'v1.5' } } as unknown as LanguageSchedule,
      options,
    );
    expectWellFormed(out.combine, 50, 22);
    for (const s of rowSums(out.combine)) expect(s).toBeCloseTo(1, 5);
  });

  it('fastv is a pure selection', () => {
    const L = 70;
    const out = fastv.reduce(
      { step: { layer: 1, at: 'after-layer', tokensIn: 50, tokensOut: 13 }, hidden: hashMatrix(1, L, 4), probs: positiveMatrix(6, L, L), image: { start: 3, length: 50 }, state: {} },
      {} as LanguageSchedule,
      options,
    );
    expectWellFormed(out.combine, 50, 13);
    expect(Array.from(out.combine.weight).every((w) => w === 1)).toBe(true);
  });
});
