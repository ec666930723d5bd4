/**
 * Clean mode: hand-worked small cases, and agreement with the numpy reference written from the spec
 * (tools/reference/clean_reference.py -> test/fixtures/methods/clean-*.json).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { applyCombination } from '../shared/methods/combination';
import { fastv } from '../shared/methods/fastv';
import { ficocoL } from '../shared/methods/ficoco-l';
import { ficocoV } from '../shared/methods/ficoco-v';
import { randomLanguage } from '../shared/methods/random-language';
import { randomVision } from '../shared/methods/random-vision';
import { recycledClusters, selectRaters } from '../shared/methods/sparsevlm';
import { tome } from '../shared/methods/tome';
import type { LanguageSchedule, Matrix, MethodOptions, TokenMeta, VisionSchedule } from '../shared/methods/types';
import { load, type StoredMatrix } from './methods-inputs';

const CLEAN: MethodOptions = { mode: 'clean', params: {}, seed: 7 };
const mat = (rows: number[][]): Matrix => ({ rows: rows.length, cols: rows[0]!.length, data: Float32Array.from(rows.flat()) });
const ficocoVSchedule = (grid: number): VisionSchedule => ({
  method: 'ficoco-v', steps: [], outputTokens: 0, proportionalAttention: false, needs: ['probs'],
  params: { lambda: 0.35, epsilon: 0.998, window: 2, penalty: 2, grid },
});
const patches = (n: number): TokenMeta => ({ origin: Int32Array.from([-1, ...Array.from({ length: n }, (_, i) => i)]), size: new Float32Array(n + 1).fill(1) });

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-5): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) expect(Math.abs(actual[i]! - expected[i]!)).toBeLessThan(tol);
}

describe('ficoco-v clean', () => {
  // CLS + a 2x2 grid (one window). Redundancy s_i = 0.35·mean(A[i,1:]) − 0.65·A[0,i]:
  // s1 = 0.07−0.26 = −0.19, s2 = 0.07875−0.065 = 0.01375, s3 = 0.07−0.13 = −0.06, s4 = 0.07875−0.0325 = 0.04625,
  // the window's most redundant (patch 4) doubles to 0.0925 and is discarded. Its correlations with the
  // preserved patches 1..3 are [0.1, 0.5, 0.2]; quantile_0.998 = 0.4988, so its only target is patch 2
  // with α = 1: row 2 becomes (X2 + X4) / 2. CLS stays first, order is kept.
  const A = mat([
    [0.2, 0.4, 0.1, 0.2, 0.05],
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.1, 0.1, 0.6, 0.1, 0.1],
    [0.2, 0.1, 0.1, 0.5, 0.1],
    [0.1, 0.1, 0.5, 0.2, 0.1],
  ]);
  const X = mat([[1, 0], [2, 0], [3, 0], [4, 0], [5, 10]]);

  it('discards the most redundant patch and merges it into its intended target, CLS first and order kept', () => {
    const out = ficocoV.reduce({ step: { layer: 0, tokensIn: 5, tokensOut: 4 }, hidden: X, probs: A, tokens: patches(4), state: {} }, ficocoVSchedule(2), CLEAN);
    expect(Array.from(out.tokens.origin)).toEqual([-1, 0, 1, 2]);
    expectClose(applyCombination(out.combine, X).data, [1, 0, 2, 0, 4, 5, 4, 0]);
    expectClose(out.tokens.size, [1, 1, 2, 1]);
  });

  const f = JSON.parse(readFileSync(join(__dirname, 'fixtures/methods/clean-ficoco-v.json'), 'utf8')) as {
    cases: Array<{ probs: StoredMatrix; hidden: StoredMatrix; grid: number; r: number; remain: number[]; output: number[] }>;
    chain: { hidden: StoredMatrix; grid: number; layers: Array<{ probs: StoredMatrix; r: number; origin: number[]; output: number[] }> };
  };
  it('keeps the local-penalty windows on the original grid across layers (discarded cells are padding)', () => {
    let hidden = load(f.chain.hidden);
    let tokens = patches(f.chain.grid * f.chain.grid);
    for (const layer of f.chain.layers) {
      const out = ficocoV.reduce(
        { step: { layer: 1, tokensIn: hidden.rows, tokensOut: hidden.rows - layer.r }, hidden, probs: load(layer.probs), tokens, state: {} },
        ficocoVSchedule(f.chain.grid),
        CLEAN,
      );
      expect(Array.from(out.tokens.origin)).toEqual(layer.origin);
      expectClose(applyCombination(out.combine, hidden).data, layer.output);
      hidden = { rows: hidden.rows - layer.r, cols: hidden.cols, data: Float32Array.from(layer.output) };
      tokens = out.tokens;
    }
  });
  it.each(f.cases)('matches the numpy reference written from the spec (r = $r on an 8x8 grid)', (c) => {
    const hidden = load(c.hidden);
    const out = ficocoV.reduce(
      { step: { layer: 0, tokensIn: hidden.rows, tokensOut: hidden.rows - c.r }, hidden, probs: load(c.probs), tokens: patches(c.grid * c.grid), state: {} },
      ficocoVSchedule(c.grid),
      CLEAN,
    );
    expect(Array.from(out.tokens.origin)).toEqual(c.remain.map((i) => i - 1));
    expectClose(applyCombination(out.combine, hidden).data, c.output);
  });
});

describe('ficoco-l clean', () => {
  const f = JSON.parse(readFileSync(join(__dirname, 'fixtures/methods/clean-ficoco-l.json'), 'utf8')) as {
    cases: Array<{ scores: StoredMatrix; hidden: StoredMatrix; image: { start: number; length: number }; r: number; remain: number[]; output: number[] }>;
  };
  it.each(f.cases)('matches the numpy reference on the true image span (image at $image.start, r = $r)', (c) => {
    const hidden = load(c.hidden);
    const out = ficocoL.reduce(
      { step: { layer: 3, at: 'after-attn', tokensIn: c.image.length, tokensOut: c.image.length - c.r }, hidden, scores: load(c.scores), image: c.image, state: {} },
      {} as LanguageSchedule,
      CLEAN,
    );
    expect(out.span).toEqual(c.image);
    expect(out.image).toEqual({ start: c.image.start, length: c.image.length - c.r });
    const span: Matrix = { rows: c.image.length, cols: hidden.cols, data: hidden.data.slice(c.image.start * hidden.cols, (c.image.start + c.image.length) * hidden.cols) };
    expectClose(applyCombination(out.combine, span).data, c.output);
  });
});

describe('tome clean', () => {
  it('merges the A token with the most similar B token, size-weighted, and keeps original order', () => {
    // A = rows 0 (CLS, never a source), 2, 4; B = rows 1, 3. Row 2's key equals row 1's (cosine 1),
    // row 4's best match is 0.77: with r = 1, row 2 merges into row 1.
    const keys = mat([[1, 0], [0, 1], [0, 1], [1, 0.1], [1, 1]]);
    const X = mat([[9, 9], [1, 0], [3, 2], [5, 5], [7, 7]]);
    const sizes = Float32Array.from([1, 1, 3, 1, 1]);
    const out = tome.reduce(
      { step: { layer: 0, tokensIn: 5, tokensOut: 4 }, hidden: X, keys, tokens: { origin: Int32Array.from([-1, 0, 1, 2, 3]), size: sizes }, state: {} },
      { method: 'tome', steps: [], outputTokens: 3, proportionalAttention: true, needs: ['keys'], params: {} },
      CLEAN,
    );
    expect(Array.from(out.tokens.origin)).toEqual([-1, 0, 2, 3]);
    expectClose(out.tokens.size, [1, 4, 1, 1]);
    // (1·[1,0] + 3·[3,2]) / 4
    expectClose(applyCombination(out.combine, X).data, [9, 9, 2.5, 1.5, 5, 5, 7, 7]);
  });
});

describe('fastv', () => {
  it("keeps the image tokens the last token attends to most, in original order", () => {
    const probs = mat([
      [1, 0, 0, 0, 0, 0],
      [0.5, 0.5, 0, 0, 0, 0],
      [0.3, 0.3, 0.4, 0, 0, 0],
      [0.1, 0.2, 0.3, 0.4, 0, 0],
      [0.1, 0.1, 0.1, 0.1, 0.6, 0],
      [0.1, 0.4, 0.05, 0.3, 0.1, 0.05],
    ]);
    const X = mat([[0], [1], [2], [3], [4], [5]]);
    const out = fastv.reduce(
      { step: { layer: 0, at: 'after-layer', tokensIn: 4, tokensOut: 2 }, hidden: X, probs, image: { start: 1, length: 4 }, state: {} },
      {} as LanguageSchedule,
      CLEAN,
    );
    expect(Array.from(out.combine.src)).toEqual([0, 2]);
    expect(out.image).toEqual({ start: 1, length: 2 });
  });
});

describe('sparsevlm pieces', () => {
  it("recycles 30 % (+1) of the pruned tokens into one cluster per ten (+1): 300 of 576 kept gives 309 (the spec's table)", () => {
    expect(300 + recycledClusters(276)).toBe(309);
    expect(66 + recycledClusters(510)).toBe(82);
  });

  it('chooses as raters the text tokens whose mean relevance to the image is above average', () => {
    // Two image rows point along x; text token 1 is along x (relevant), tokens 0 and 2 are not.
    const embeds = mat([[0, 0], [3, 0], [3, 0.1], [0, 3], [3, 0], [0, -3]]);
    expect(Array.from(selectRaters({ embeds, image: { start: 1, length: 2 } }))).toEqual([1]);
  });
});

describe('random baselines', () => {
  const X = { rows: 11, cols: 1, data: Float32Array.from({ length: 11 }, (_, i) => i) };
  it('vision random keeps CLS and the scheduled number of patches, reproducibly for a seed', () => {
    const input = { step: { layer: 0, tokensIn: 11, tokensOut: 4 }, hidden: X, tokens: patches(10), state: {} };
    const schedule = { method: 'random', steps: [], outputTokens: 3, proportionalAttention: false, needs: [], params: {} } as VisionSchedule;
    const a = randomVision.reduce(input, schedule, CLEAN);
    const b = randomVision.reduce(input, schedule, CLEAN);
    const c = randomVision.reduce(input, schedule, { ...CLEAN, seed: 8 });
    expect(a.tokens.origin[0]).toBe(-1);
    expect(a.tokens.origin.length).toBe(4);
    expect(Array.from(a.tokens.origin)).toEqual(Array.from(b.tokens.origin));
    expect(Array.from(a.tokens.origin)).not.toEqual(Array.from(c.tokens.origin));
  });
  it('language random keeps the scheduled count in original order', () => {
    const out = randomLanguage.reduce({ step: { layer: 0, at: 'after-layer', tokensIn: 8, tokensOut: 3 }, hidden: X, image: { start: 2, length: 8 }, state: {} }, {} as LanguageSchedule, CLEAN);
    const src = Array.from(out.combine.src);
    expect(src.length).toBe(3);
    expect([...src].sort((a, b) => a - b)).toEqual(src);
  });
});
