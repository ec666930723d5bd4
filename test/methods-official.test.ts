/**
 * Exact mode reproduces the OFFICIAL functions. The vectors in test/fixtures/methods/official-*.json
 * were produced by running the authors' own code (FiCoCo, SparseVLM, ToMe, FastV; CPU PyTorch) on
 * deterministic, tie-free inputs: tools/reference/official_vectors.py. Inputs are rebuilt here from
 * their seeds, bit-identical to the Python side (methods-inputs.ts).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { applyCombination, outputRows } from '../shared/methods/combination';
import { dpcKnn } from '../shared/methods/dpc-knn';
import { fastv } from '../shared/methods/fastv';
import { ficocoL } from '../shared/methods/ficoco-l';
import { ficocoV } from '../shared/methods/ficoco-v';
import { matrixRank, recycledClusters, sparsevlm } from '../shared/methods/sparsevlm';
import { tome } from '../shared/methods/tome';
import type { LanguageSchedule, Matrix, MethodOptions, TokenMeta, VisionSchedule } from '../shared/methods/types';
import { hashMatrix, load, type StoredMatrix } from './methods-inputs';

const EXACT: MethodOptions = { mode: 'exact', params: {}, seed: 0 };
const fixture = <T>(name: string): T => JSON.parse(readFileSync(join(__dirname, 'fixtures', 'methods', `official-${name}.json`), 'utf8')) as T;

function rows(m: Matrix, from: number, to: number): Matrix {
  return { rows: to - from, cols: m.cols, data: m.data.slice(from * m.cols, to * m.cols) };
}

function concat(a: Matrix, b: Matrix): Matrix {
  const data = new Float32Array((a.rows + b.rows) * a.cols);
  data.set(a.data);
  data.set(b.data, a.data.length);
  return { rows: a.rows + b.rows, cols: a.cols, data };
}

function expectClose(actual: ArrayLike<number>, expected: readonly number[], tol = 2e-5): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
  expect(worst).toBeLessThan(tol);
}

function patchTokens(n: number, cls: boolean): TokenMeta {
  return {
    origin: Int32Array.from([...(cls ? [-1] : []), ...Array.from({ length: n }, (_, i) => i)]),
    size: new Float32Array(n + (cls ? 1 : 0)).fill(1),
  };
}

const visionSchedule = (method: VisionSchedule['method'], params: VisionSchedule['params'] = {}): VisionSchedule => ({
  method,
  steps: [],
  outputTokens: 0,
  proportionalAttention: false,
  needs: [],
  params,
});

describe('ficoco-v exact mode = official FiCoCo_V Filter/Correlate/Compress', () => {
  interface Layer { scores: StoredMatrix; discard: number[]; remain: number[]; output: number[] }
  const f = fixture<{ grid: number; r: number; hidden: StoredMatrix; layers: Layer[] }>('ficoco-v');
  const schedule = visionSchedule('ficoco-v', { lambda: 0.35, epsilon: 0.998, window: 2, penalty: 2, grid: f.grid });

  it('reproduces two chained layers (keep-score order, CLS last, mis-addressed merges, per-request penalty grid)', () => {
    const state: Record<string, unknown> = {};
    let hidden = load(f.hidden);
    let tokens = patchTokens(f.grid * f.grid, true);
    for (const layer of f.layers) {
      const T = hidden.rows;
      const out = ficocoV.reduce(
        { step: { layer: 12, tokensIn: T, tokensOut: T - f.r }, hidden, scores: load(layer.scores), tokens, state },
        schedule,
        EXACT,
      );
      // Rows come out in the official order: row k is the token at official position remain[k].
      expect(Array.from(out.tokens.origin)).toEqual(layer.remain.map((i) => tokens.origin[i]!));
      expectClose(applyCombination(out.combine, hidden).data, layer.output);
      hidden = { rows: T - f.r, cols: hidden.cols, data: Float32Array.from(layer.output) };
      tokens = out.tokens;
    }
    // After the first layer the class token is no longer at index 0 (the released code's reordering).
    expect(tokens.origin[0]).not.toBe(-1);
  });
});

describe('ficoco-l exact mode = official FiCoCo_L (checkpoint) Filter/Correlate/Compress', () => {
  interface Layer { scores: StoredMatrix; discard: number[]; remain: number[]; output: number[] }
  const f = fixture<{ image: { start: number; length: number }; r: number; hidden: StoredMatrix; layers: Layer[] }>('ficoco-l');

  it("reproduces two chained layers over the code's [0, V) span, without normalisation", () => {
    const state: Record<string, unknown> = {};
    let hidden = load(f.hidden);
    let image = f.image;
    let V = f.image.length;
    for (const layer of f.layers) {
      const out = ficocoL.reduce(
        { step: { layer: 5, at: 'after-attn', tokensIn: V, tokensOut: V - f.r }, hidden, scores: load(layer.scores), image, state },
        {} as LanguageSchedule,
        EXACT,
      );
      expect(out.span).toEqual({ start: 0, length: V });
      const merged = applyCombination(out.combine, rows(hidden, 0, V));
      expectClose(concat(merged, rows(hidden, V, hidden.rows)).data, layer.output);
      hidden = { rows: hidden.rows - f.r, cols: hidden.cols, data: Float32Array.from(layer.output) };
      image = out.image;
      V -= f.r;
    }
    // The prefix (protected row 0 and the system prompt) is inside the code's visual span.
    expect(image.start).toBeLessThanOrEqual(f.image.start);
  });

  it('moves an image that starts past the visual slots up by the rows removed before it (late in an exact schedule, the slots hold only prefix tokens)', () => {
    // 20 rows: a 10-token prefix, a 6-token image, 4 text tokens; 6 slots left, 2 removed from them.
    const state: Record<string, unknown> = { ficocoLSlots: 6 };
    const out = ficocoL.reduce(
      { step: { layer: 5, at: 'after-attn', tokensIn: 6, tokensOut: 4 }, hidden: hashMatrix(1, 20, 4), scores: hashMatrix(2, 20, 20), image: { start: 10, length: 6 }, state },
      {} as LanguageSchedule,
      EXACT,
    );
    expect(out.span).toEqual({ start: 0, length: 6 });
    expect(outputRows(out.combine)).toBe(4);
    expect(out.image).toEqual({ start: 8, length: 6 });
    expect(state['ficocoLSlots']).toBe(4);
  });
});

describe('tome exact mode = official bipartite_soft_matching + merge_wavg', () => {
  interface Layer { keys: StoredMatrix; r: number; output: number[]; size: number[] }
  interface Case { hidden: StoredMatrix; layers: Layer[] }
  const f = fixture<Case & { without_class_token: Case }>('tome');

  function chained(c: Case, cls: boolean): void {
    let hidden = load(c.hidden);
    let tokens = patchTokens(hidden.rows - (cls ? 1 : 0), cls);
    for (const layer of c.layers) {
      const T = hidden.rows;
      const out = tome.reduce({ step: { layer: 0, tokensIn: T, tokensOut: T - layer.r }, hidden, keys: load(layer.keys), tokens, state: {} }, visionSchedule('tome'), EXACT);
      expectClose(applyCombination(out.combine, hidden).data, layer.output);
      expectClose(out.tokens.size, layer.size);
      if (cls) expect(out.tokens.origin[0]).toBe(-1);
      hidden = { rows: T - layer.r, cols: hidden.cols, data: Float32Array.from(layer.output) };
      tokens = out.tokens;
    }
  }

  it('reproduces two chained layers with sizes carried ([unmerged A by index, B] order, CLS protected)', () => chained(f, true));

  it('reproduces two chained layers of a tower without a class token ([unmerged A strongest match first, B] order)', () => chained(f.without_class_token, false));
});

describe('sparsevlm = official attn_postprocess_topk / attn_postprocess_rank / cluster_and_merge', () => {
  interface TopkCase {
    probs: StoredMatrix; hidden: StoredMatrix; image: { start: number; length: number }; raters: number[]; keep: number;
    kept: number[]; recycled: number[]; merged: number[]; clusters: number;
  }
  interface RankCase {
    case: string; probs: StoredMatrix; dependent: number[][]; image: { start: number; length: number }; raters: number[];
    scale: number; bias: number; rank: number; pruned: boolean; kept: number[];
  }
  const f = fixture<{ topk: TopkCase[]; rank: RankCase[]; cluster: Array<{ features: StoredMatrix; clusters: number; merged: number[] }> }>('sparsevlm');
  const v15 = { params: { version: 'v1.5' } } as unknown as LanguageSchedule;

  it.each(f.topk)('v1.5 keeps the top $keep image tokens and recycles the best 30 % of the rest into $clusters clusters', (c) => {
    const hidden = load(c.hidden);
    const Lv = c.image.length;
    const out = sparsevlm.reduce(
      {
        step: { layer: 2, at: 'after-layer', tokensIn: Lv, tokensOut: c.keep + recycledClusters(Lv - c.keep) },
        hidden,
        probs: load(c.probs),
        image: c.image,
        state: { sparsevlmRaters: Int32Array.from(c.raters) },
      },
      v15,
      EXACT,
    );
    const kept = Array.from({ length: c.keep }, (_, k) => out.combine.src[out.combine.indptr[k]!]!);
    expect(kept).toEqual(c.kept);
    expect(outputRows(out.combine)).toBe(c.keep + c.clusters);
    const merged = applyCombination(out.combine, rows(hidden, c.image.start, c.image.start + Lv));
    expectClose(merged.data.subarray(c.keep * hidden.cols), c.merged);
    expect(out.image).toEqual({ start: c.image.start, length: c.keep + c.clusters });
  });

  it.each(f.rank)('v1 counts the rank of the raters attention like torch.linalg.matrix_rank ($case)', (c) => {
    const probs = load(c.probs);
    for (const [dst, a, b, from, to] of c.dependent) {
      for (let j = from!; j < to!; j++) probs.data[dst! * probs.cols + j] = Math.fround((probs.data[a! * probs.cols + j]! + probs.data[b! * probs.cols + j]!) / 2);
    }
    const textStart = c.image.start + c.image.length;
    expect(matrixRank(probs, Int32Array.from(c.raters), c.image.start, c.image.length, textStart)).toBe(c.rank);
    const hidden = load({ seed: 1, rows: probs.rows, cols: 4 });
    const out = sparsevlm.reduce(
      { step: { layer: 2, at: 'after-layer', tokensIn: c.image.length, tokensOut: c.image.length }, hidden, probs, image: c.image, state: { sparsevlmRaters: Int32Array.from(c.raters) } },
      { params: { version: 'v1', scale: c.scale, bias: c.bias } } as unknown as LanguageSchedule,
      EXACT,
    );
    const kept = Array.from({ length: c.kept.length }, (_, k) => out.combine.src[out.combine.indptr[k]!]!);
    expect(kept).toEqual(c.kept);
    if (!c.pruned) expect(out.image.length).toBe(c.image.length);
  });

  it.each(f.cluster)('DPC-kNN clustering merges like cluster_and_merge', (c) => {
    const Z = load(c.features);
    const zRows = Array.from({ length: Z.rows }, (_, i) => Z.data.subarray(i * Z.cols, (i + 1) * Z.cols));
    const { assign } = dpcKnn(zRows, c.clusters);
    const merged = new Float64Array(c.clusters * Z.cols);
    const count = new Array<number>(c.clusters).fill(0);
    assign.forEach((k) => count[k]!++);
    assign.forEach((k, i) => {
      for (let d = 0; d < Z.cols; d++) merged[k * Z.cols + d]! += zRows[i]![d]! / (count[k]! + 1e-6);
    });
    expectClose(merged, c.merged);
  });
});

describe('fastv = official FastV selection (LlamaModel.forward, inplace branch)', () => {
  const f = fixture<{ probs: StoredMatrix; hidden: StoredMatrix; image: { start: number; length: number }; keep: number; keep_index: number[]; output: number[] }>('fastv');

  it("keeps the image tokens the last prompt token attends to most, in original order", () => {
    const hidden = load(f.hidden);
    const out = fastv.reduce(
      { step: { layer: 1, at: 'after-layer', tokensIn: f.image.length, tokensOut: f.keep }, hidden, probs: load(f.probs), image: f.image, state: {} },
      {} as LanguageSchedule,
      EXACT,
    );
    const { start, length } = f.image;
    const keptImage = Array.from(out.combine.src, (s) => start + s);
    const all = [...Array.from({ length: start }, (_, i) => i), ...keptImage, ...Array.from({ length: hidden.rows - start - length }, (_, i) => start + length + i)];
    expect(all).toEqual(f.keep_index);
    const seq = concat(concat(rows(hidden, 0, start), applyCombination(out.combine, rows(hidden, start, start + length))), rows(hidden, start + length, hidden.rows));
    expectClose(seq.data, f.output, 1e-7);
  });
});
