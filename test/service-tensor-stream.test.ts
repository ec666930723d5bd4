/**
 * The Encode stream contract: header, whole-row chunks, summary; and what the receiver does with a
 * stream that breaks it.
 */
import { describe, expect, it } from 'vitest';
import { VlmError } from '../shared/errors';
import type { EncodeResponse } from '../gen/vlm/v1/vision_service';
import { ElementType, type VisionSchedule } from '../gen/vlm/v1/common';
import { paramsToWire } from '../services/common/wire';
import {
  MAX_CHUNK_BYTES,
  rowsPerChunk,
  TensorAssembler,
  tensorMessages,
  wireDTypeOf,
  type Expectation,
  type WireTokens,
} from '../services/common/tensor-stream';

function tokens(rows: number, width: number, dtype: 'float32' | 'float16' = 'float32'): WireTokens {
  const n = rows * width;
  const typed =
    dtype === 'float32'
      ? { dtype, data: Float32Array.from({ length: n }, (_, i) => i * 0.5 - 3) }
      : // Bit patterns of every sign and mantissa, never an all-ones exponent (NaN and infinities are refused).
        { dtype, data: Uint16Array.from({ length: n }, (_, i) => (i * 7919) & 0xbfff) };
  return {
    rows,
    width,
    ...typed,
    origin: Int32Array.from({ length: rows }, (_, i) => (i === 0 ? -2 : i * 3)),
    size: Float32Array.from({ length: rows }, (_, i) => (i === 0 ? 4 : 1)),
  };
}

const summary = { timingsMs: { encoder: 1 }, flops: { vision: 2 }, queueMs: 0, tensorBytes: 0n };

/** The schedule a vision service reports in the header: ficoco-v, half of a two-sided split. */
function wireSchedule(rows: number, over: Partial<VisionSchedule> = {}): VisionSchedule {
  return { method: 'ficoco-v', steps: [], outputTokens: rows, proportionalAttention: false, params: paramsToWire({ budget_total: 6.4, budget_vision_tokens: rows }), ...over };
}

/** The receiver's own resolution of the same request: `rows` visual tokens from ficoco-v. */
function expectation(rows: number, over: Partial<Expectation> = {}): Expectation {
  return {
    modelId: 'm',
    contentHash: 'sha256:aa',
    dtype: 'float32',
    width: 24,
    fullTokenCount: 64,
    schedule: { method: 'ficoco-v', outputTokens: rows, params: { start_layer: 2, budget_total: 6.4, budget_vision_tokens: rows } },
    ...over,
  };
}

/** `schedule` null: a header without one. */
function messages(t: WireTokens, rowsWanted = 5, schedule: VisionSchedule | null = wireSchedule(t.rows)): EncodeResponse[] {
  return [...tensorMessages(t, { modelId: 'm', contentHash: 'sha256:aa', fullTokenCount: 64, schedule: schedule ?? undefined }, rowsWanted, summary)];
}

function assemble(msgs: EncodeResponse[], expect: Expectation) {
  const a = new TensorAssembler(expect);
  for (const m of msgs) a.accept(m);
  return a.finish();
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return err instanceof VlmError ? `${err.code}: ${err.message}` : `not a VlmError: ${String(err)}`;
  }
  return 'no error';
}

describe('tensorMessages', () => {
  it('sends a header, then ceil(rows / rowsPerChunk) chunks of whole rows, then a summary', () => {
    const msgs = messages(tokens(23, 24), 5);
    expect(msgs.map((m) => m.part?.$case)).toEqual(['header', 'chunk', 'chunk', 'chunk', 'chunk', 'chunk', 'summary']);
    const header = msgs[0]!.part!.$case === 'header' ? msgs[0]!.part!.header : null;
    expect(header).toMatchObject({ tokenCount: 23, width: 24, shape: [23, 24], rowsPerChunk: 5, chunkCount: 5, dtype: ElementType.ELEMENT_TYPE_FLOAT32 });
    expect(header!.origin.slice(0, 3)).toEqual([-2, 3, 6]);
    const chunks = msgs.flatMap((m) => (m.part?.$case === 'chunk' ? [m.part.chunk] : []));
    expect(chunks.map((c) => [c.index, c.rowOffset, c.rowCount, c.data.length])).toEqual([
      [0, 0, 5, 5 * 24 * 4],
      [1, 5, 5, 5 * 24 * 4],
      [2, 10, 5, 5 * 24 * 4],
      [3, 15, 5, 5 * 24 * 4],
      [4, 20, 3, 3 * 24 * 4],
    ]);
    const last = msgs.at(-1)!;
    expect(last.part?.$case === 'summary' && last.part.summary.tensorBytes).toBe(BigInt(23 * 24 * 4));
  });

  it('keeps chunks under 3 MiB even for LLaVA-7B-sized rows and a huge requested row count', () => {
    const perChunk = rowsPerChunk(4096, 'float32', 100_000);
    expect(perChunk * 4096 * 4).toBeLessThanOrEqual(MAX_CHUNK_BYTES);
    expect(rowsPerChunk(4096, 'float16', 0) * 4096 * 2).toBe(1 << 20);
    expect(rowsPerChunk(1 << 22, 'float32', 0)).toBe(1);
  });
});

describe('TensorAssembler', () => {
  it('reassembles float32 and float16 tensors bit for bit with provenance and sizes', () => {
    for (const dtype of ['float32', 'float16'] as const) {
      const t = tokens(17, 24, dtype);
      const out = assemble(messages(t, 4), expectation(17, { dtype }));
      expect(out.tokens.dtype).toBe(dtype);
      expect(Array.from(out.tokens.data)).toEqual(Array.from(t.data));
      expect(Array.from(out.tokens.origin)).toEqual(Array.from(t.origin));
      expect(Array.from(out.tokens.size)).toEqual(Array.from(t.size));
      expect(out.summary.timingsMs).toEqual({ encoder: 1 });
    }
  });

  it('accepts a zero-row tensor (header, no chunks, summary) where zero rows were resolved', () => {
    const out = assemble(messages(tokens(0, 24)), expectation(0));
    expect(out.tokens.rows).toBe(0);
  });

  it('answers UNAVAILABLE (MODEL_MISMATCH) for a tensor of another model: content hash, dtype, width', () => {
    const msgs = messages(tokens(8, 24));
    expect(codeOf(() => assemble(msgs, expectation(8, { contentHash: 'sha256:bb' })))).toMatch(/^UNAVAILABLE: .*sha256:aa.*sha256:bb.*same model bundle/);
    expect(codeOf(() => assemble(msgs, expectation(8, { dtype: 'float16' })))).toMatch(/^UNAVAILABLE: .*float32.*float16/);
    expect(codeOf(() => assemble(msgs, expectation(8, { width: 32 })))).toMatch(/^UNAVAILABLE: .*width 24.*32/);
    // the reason the hop retries on and the caller branches on, with when to retry
    let thrown: unknown;
    try {
      assemble(msgs, expectation(8, { contentHash: 'sha256:bb' }));
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toMatchObject({ code: 'UNAVAILABLE', reason: 'MODEL_MISMATCH', retryDelayMs: 1000 });
  });

  describe('holds the rows to the vision schedule the receiver resolved for the request', () => {
    const skew = /^UNAVAILABLE: .*both services must resolve the same schedule .*rollout/;

    it('accepts exactly the resolved rows, method and split; the method\'s other params are vision\'s own', () => {
      expect(assemble(messages(tokens(12, 24), 5, wireSchedule(12, { steps: [{ layer: 1, tokensIn: 65, tokensOut: 13 }] })), expectation(12)).tokens.rows).toBe(12);
    });

    it('fewer, more or no rows than resolved: UNAVAILABLE (MODEL_MISMATCH) naming both schedules, never the caller\'s fault', () => {
      for (const rows of [8, 16, 0]) {
        const result = codeOf(() => assemble(messages(tokens(rows, 24)), expectation(12)));
        expect(result).toMatch(skew);
        expect(result).toContain(`the vision service ran ficoco-v with ${rows} visual tokens but this language service resolved ficoco-v with 12`);
      }
    });

    it('another vision method with the same count: UNAVAILABLE (MODEL_MISMATCH)', () => {
      expect(codeOf(() => assemble(messages(tokens(12, 24), 5, wireSchedule(12, { method: 'tome' })), expectation(12)))).toMatch(/^UNAVAILABLE: .*ran tome with 12 .*resolved ficoco-v with 12/);
    });

    it('another split of a two-sided budget: UNAVAILABLE (MODEL_MISMATCH) naming the parameter', () => {
      const otherTotal = wireSchedule(12, { params: paramsToWire({ budget_total: 7, budget_vision_tokens: 12 }) });
      expect(codeOf(() => assemble(messages(tokens(12, 24), 5, otherTotal), expectation(12)))).toMatch(/^UNAVAILABLE: .*budget_total = 7 .*6\.4/);
      const noSplit = wireSchedule(12, { params: {} });
      expect(codeOf(() => assemble(messages(tokens(12, 24), 5, noSplit), expectation(12)))).toMatch(/^UNAVAILABLE: .*budget_total = unset .*6\.4/);
    });

    it('a header without its schedule: UNAVAILABLE (MODEL_MISMATCH; a vision service that does not report one)', () => {
      expect(codeOf(() => assemble(messages(tokens(12, 24), 5, null), expectation(12)))).toMatch(/^UNAVAILABLE: .*without the schedule it ran.*resolved ficoco-v with 12.*rollout/);
    });

    it('a token count its own schedule contradicts: DATA_LOSS', () => {
      expect(codeOf(() => assemble(messages(tokens(8, 24), 5, wireSchedule(12)), expectation(12)))).toMatch(/^DATA_LOSS: vision stream: token_count 8 disagrees with the header's own schedule \(ficoco-v with 12/);
    });
  });

  describe('answers DATA_LOSS for a broken stream', () => {
    const good = messages(tokens(12, 24), 4); // header, 3 chunks, summary
    const cases: Array<[string, EncodeResponse[], RegExp]> = [
      ['a missing chunk', [good[0]!, good[1]!, good[3]!, good[4]!], /chunk 2 where chunk 1 was due/],
      ['a repeated chunk', [good[0]!, good[1]!, good[1]!, good[2]!, good[3]!, good[4]!], /chunk 0 where chunk 1 was due/],
      ['a chunk beyond the announced count', [...good.slice(0, 4), { part: { $case: 'chunk', chunk: { index: 3, rowOffset: 12, rowCount: 4, data: Buffer.alloc(384) } } }], /beyond the 3/],
      ['a chunk after the summary', [...good, good[1]!], /after the summary/],
      ['a summary before the last chunk', [good[0]!, good[1]!, good[4]!], /summary after 1 of 3 chunks/],
      ['no summary', good.slice(0, 4), /without a summary/],
      ['no header', good.slice(1), /before the header/],
      ['nothing at all', [], /without a header/],
      ['a second header', [good[0]!, good[0]!], /second header/],
      ['a short chunk', [good[0]!, { part: { $case: 'chunk', chunk: { index: 0, rowOffset: 0, rowCount: 4, data: Buffer.alloc(10) } } }], /10 bytes for 4 rows/],
      ['a chunk at the wrong rows', [good[0]!, { part: { $case: 'chunk', chunk: { index: 0, rowOffset: 1, rowCount: 4, data: Buffer.alloc(384) } } }], /rows \[1, \+4\)/],
      ['an empty message', [good[0]!, { part: undefined }], /no header, chunk or summary/],
    ];
    const poisoned = (dtype: 'float32' | 'float16', value: number) => {
      const t = tokens(12, 24, dtype);
      t.data[5 * 24 + 3] = value;
      return messages(t, 4);
    };
    cases.push(
      ['a NaN in float32', poisoned('float32', NaN), /row 5 holds a NaN or an infinite value/],
      ['an infinity in float32', poisoned('float32', -Infinity), /row 5 holds a NaN or an infinite value/],
      ['an infinity in float16', poisoned('float16', 0x7c00), /row 5 holds a NaN or an infinite value/],
      ['a NaN in float16', poisoned('float16', 0xfe01), /row 5 holds a NaN or an infinite value/],
    );
    for (const [name, msgs, why] of cases) {
      it(name, () => {
        const dtype = msgs[0]?.part?.$case === 'header' ? msgs[0].part.header.dtype : undefined;
        const result = codeOf(() => assemble(msgs, expectation(12, dtype === undefined ? {} : { dtype: wireDTypeOf(dtype)! })));
        expect(result).toMatch(/^DATA_LOSS: vision stream: /);
        expect(result).toMatch(why);
      });
    }

    it('a header whose shape, provenance, sizes, chunking or byte order disagree with what it carries', () => {
      const header = good[0]!.part!.$case === 'header' ? good[0]!.part!.header : null;
      const bad = (over: object): EncodeResponse[] => [{ part: { $case: 'header', header: { ...header!, ...over } } }];
      expect(codeOf(() => assemble(bad({ shape: [13, 24] }), expectation(12)))).toMatch(/^DATA_LOSS: .*shape/);
      expect(codeOf(() => assemble(bad({ origin: [1, 2] }), expectation(12)))).toMatch(/^DATA_LOSS: .*2 provenance entries/);
      // Sizes are one per row or none (every row of size 1); a partial list would be filled in silently.
      expect(codeOf(() => assemble(bad({ size: [2, 1, 1] }), expectation(12)))).toMatch(/^DATA_LOSS: .*3 size entries for 12 rows/);
      // UNSPECIFIED (0) included: a sender that never set it cannot be read as little-endian on trust.
      expect(codeOf(() => assemble(bad({ byteOrder: 0 }), expectation(12)))).toMatch(/^DATA_LOSS: .*unsupported byte order 0/);
      expect(codeOf(() => assemble(bad({ byteOrder: 2 }), expectation(12)))).toMatch(/^DATA_LOSS: .*unsupported byte order 2/);
      expect(codeOf(() => assemble(bad({ chunkCount: 2 }), expectation(12)))).toMatch(/^DATA_LOSS: .*chunk_count 2/);
      expect(codeOf(() => assemble(bad({ tokenCount: 100, shape: [100, 24] }), expectation(12)))).toMatch(/^DATA_LOSS: .*more than the model's 64/);
    });
  });
});
