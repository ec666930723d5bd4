/** `vlm bench accuracy`: its grid of cells, its interval and its report. */
import { describe, expect, it } from 'vitest';
import { benchCells, markdownTable, svgPlot, wilson, type Row } from '../cli/bench-accuracy';

const row = (over: Partial<Row>): Row => ({
  vision_method: 'none', language_method: 'none', preset: null, budget_percent: null, budget: null, feasible: true, error: null,
  items: 150, correct: 120, accuracy: 0.8, ci95: [0.73, 0.85], retention: null, visual_tokens_avg: 196, flops: 2e9, ...over,
});

describe('bench accuracy', () => {
  it('covers the unreduced model and every method and ficoco-vl at 50, 25 and 12.5 %', () => {
    const cells = benchCells();
    expect(cells).toHaveLength(1 + 8 * 3);
    expect(cells[0]).toEqual({ vision: 'none', language: 'none', percent: null });
    expect(cells.filter((c) => c.preset === 'ficoco-vl').map((c) => c.percent)).toEqual([50, 25, 12.5]);
    for (const m of ['ficoco-v', 'tome', 'random']) expect(cells.filter((c) => c.vision === m && c.language === 'none')).toHaveLength(3);
    for (const m of ['sparsevlm', 'ficoco-l', 'fastv', 'random']) expect(cells.filter((c) => c.language === m && c.vision === 'none')).toHaveLength(3);
  });

  it("uses Wilson's 95 % interval (120 of 150 correct: 0.729 to 0.856)", () => {
    const [lo, hi] = wilson(120, 150);
    expect(lo).toBeCloseTo(0.7289, 3);
    expect(hi).toBeCloseTo(0.8562, 3);
    expect(wilson(0, 4)[0]).toBe(0);
  });

  it('keeps infeasible cells in the table, marked', () => {
    const md = markdownTable([row({}), row({ language_method: 'fastv', budget_percent: 12.5, budget: 24.5, feasible: false, error: 'feasible range is [32, 196]', accuracy: null, flops: null })]);
    expect(md).toContain('| none | unreduced | 196.0 | 80.0 (73.0–85.0) |');
    expect(md).toContain('| fastv (language) | 12.5 % (24.5) | infeasible |');
    expect(svgPlot([row({})], 'x')).toContain('★');
  });
});
