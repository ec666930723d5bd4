/**
 * The Encode stream contract, both ends: the vision service cuts a [rows, width] tensor into chunks
 * of whole rows; the language service reassembles them and checks every promise the header made.
 *
 * Order: exactly one header, then chunk 0..chunk_count-1 (row_offset = index * rows_per_chunk), then
 * exactly one summary. Data is little-endian. Violations are DATA_LOSS (the stream is not the tensor
 * it claims to be); a well-formed tensor from a different model (content hash, dtype, width) or of
 * a different schedule than the receiver resolved for the request (method, row count, budget split)
 * is UNAVAILABLE with reason MODEL_MISMATCH: a rollout in progress, where another replica (of vision,
 * for the hop's retry, or of language, for the caller's) may run the matching version.
 */
import { endianness } from 'node:os';
import { VlmError } from '../../shared/errors';
import type { EncodeResponse, EncodeSummary, TensorChunk, TensorHeader } from '../../gen/vlm/v1/vision_service';
import { ByteOrder, ElementType, type VisionSchedule } from '../../gen/vlm/v1/common';
import { paramsFromWire } from './wire';
import type { FloatDType } from '../../shared/tensor/dtype';
import { SPLIT_REPORT } from '../../shared/methods/policy';

/** Visual tokens as the services hold them: row-major [rows, width]; float16 as raw Uint16 bits. */
export type WireTokens = {
  readonly rows: number;
  readonly width: number;
  /** Per row: original patch index, -1 CLS, -2 synthesised. */
  readonly origin: Int32Array;
  /** Per row: original patches it stands for. */
  readonly size: Float32Array;
} & ({ readonly dtype: 'float32'; readonly data: Float32Array } | { readonly dtype: 'float16'; readonly data: Uint16Array });

/** Chunks stay far below gRPC's 4 MiB default message limit. */
export const TARGET_CHUNK_BYTES = 1 << 20;
export const MAX_CHUNK_BYTES = 3 << 20;

const HOST_IS_LE = endianness() === 'LE';

export function bytesPerElement(dtype: FloatDType): number {
  return dtype === 'float32' ? 4 : 2;
}

export function elementTypeOf(dtype: FloatDType): ElementType {
  return dtype === 'float32' ? ElementType.ELEMENT_TYPE_FLOAT32 : ElementType.ELEMENT_TYPE_FLOAT16;
}

export function wireDTypeOf(t: ElementType): FloatDType | null {
  if (t === ElementType.ELEMENT_TYPE_FLOAT32) return 'float32';
  if (t === ElementType.ELEMENT_TYPE_FLOAT16) return 'float16';
  return null;
}

/**
 * Rows per chunk: the requested (or configured) count, capped so a chunk stays under MAX_CHUNK_BYTES;
 * 0 means "about TARGET_CHUNK_BYTES".
 */
export function rowsPerChunk(width: number, dtype: FloatDType, requested: number): number {
  const rowBytes = width * bytesPerElement(dtype);
  const cap = Math.max(1, Math.floor(MAX_CHUNK_BYTES / rowBytes));
  const wanted = requested > 0 ? requested : Math.floor(TARGET_CHUNK_BYTES / rowBytes);
  return Math.max(1, Math.min(cap, wanted));
}

function littleEndianBytes(data: Float32Array | Uint16Array): Buffer {
  const view = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (HOST_IS_LE) return view;
  const copy = Buffer.from(view);
  if (data.BYTES_PER_ELEMENT === 4) copy.swap32();
  else copy.swap16();
  return copy;
}

/** Payload bytes of a tensor chunk message; undefined for the header and the summary (span counters). */
export function chunkBytes(message: EncodeResponse): number | undefined {
  return message.part?.$case === 'chunk' ? message.part.chunk.data.byteLength : undefined;
}

export interface HeaderFields {
  readonly modelId: string;
  readonly contentHash: string;
  readonly fullTokenCount: number;
  readonly schedule: VisionSchedule | undefined;
}

/** The whole Encode response sequence for `tokens`: header, chunks, summary. */
export function* tensorMessages(tokens: WireTokens, fields: HeaderFields, rowsWanted: number, summary: EncodeSummary): Generator<EncodeResponse> {
  const perChunk = rowsPerChunk(tokens.width, tokens.dtype, rowsWanted);
  const chunkCount = Math.ceil(tokens.rows / perChunk);
  const header: TensorHeader = {
    modelId: fields.modelId,
    contentHash: fields.contentHash,
    dtype: elementTypeOf(tokens.dtype),
    byteOrder: ByteOrder.BYTE_ORDER_LITTLE_ENDIAN,
    shape: [tokens.rows, tokens.width],
    tokenCount: tokens.rows,
    width: tokens.width,
    origin: Array.from(tokens.origin),
    size: Array.from(tokens.size),
    fullTokenCount: fields.fullTokenCount,
    rowsPerChunk: perChunk,
    chunkCount,
    schedule: fields.schedule,
  };
  yield { part: { $case: 'header', header } };
  const bytes = littleEndianBytes(tokens.data);
  const rowBytes = tokens.width * bytesPerElement(tokens.dtype);
  for (let index = 0; index < chunkCount; index++) {
    const rowOffset = index * perChunk;
    const rowCount = Math.min(perChunk, tokens.rows - rowOffset);
    const data = bytes.subarray(rowOffset * rowBytes, (rowOffset + rowCount) * rowBytes);
    yield { part: { $case: 'chunk', chunk: { index, rowOffset, rowCount, data } } };
  }
  yield { part: { $case: 'summary', summary: { ...summary, tensorBytes: BigInt(bytes.byteLength) } } };
}

/**
 * The vision schedule the receiver resolved for this request itself (shared/methods/policy.ts
 * resolveVisionSchedule, from the same policy and bundle the vision service resolves it from).
 */
export interface ExpectedSchedule {
  readonly method: string;
  /**
   * Rows the tensor must have. Every vision method's count is fixed by its schedule (only language
   * schedules can be `dataDependent`), so this is exact: for ficoco-vl it is the split's vision share.
   */
  readonly outputTokens: number;
  /** The schedule's params; of these, the budget split (budget_total, budget_vision_tokens) is compared. */
  readonly params: Readonly<Record<string, number | string | boolean>>;
}

/** What the receiver requires of the tensor: its own model, and the schedule it resolved for the request. */
export interface Expectation {
  readonly modelId: string;
  readonly contentHash: string;
  readonly dtype: FloatDType;
  readonly width: number;
  /** Unreduced visual tokens of this model; more rows than this is not a tensor of this model. */
  readonly fullTokenCount: number;
  readonly schedule: ExpectedSchedule;
}

/**
 * The params both services derive from the policy when both sides reduce (policy.ts withSplit). The
 * language side resolves its own schedule from the same split, so a vision side that split differently
 * would leave the two halves of one budget inconsistent. The method's other params and its steps are
 * vision's own business: they are relayed to the client as vision reports them.
 */
const SPLIT_PARAMS = Object.values(SPLIT_REPORT);

export interface AssembledTensor {
  readonly tokens: WireTokens;
  readonly header: TensorHeader;
  readonly summary: EncodeSummary;
}

function loss(message: string): VlmError {
  return new VlmError('DATA_LOSS', `vision stream: ${message}`);
}

/** How long a caller waits before retrying a request that met two versions of the services. */
export const MODEL_MISMATCH_RETRY_MS = 1_000;

/**
 * The two services run different models or versions: not the caller's doing, and not permanent in a
 * rollout (a misconfiguration looks the same). `detail`: what the other side said, for the log only.
 */
export function modelMismatch(message: string, detail?: string): VlmError {
  return new VlmError('UNAVAILABLE', message, { reason: 'MODEL_MISMATCH', retryDelayMs: MODEL_MISMATCH_RETRY_MS, cause: detail === undefined ? undefined : new Error(detail) });
}

/** A self-consistent header for another resolution of the request's policy: version skew, not a broken stream. */
function skew(message: string): VlmError {
  return modelMismatch(`${message}; both services must resolve the same schedule from a request's policy (is a rollout half finished?)`);
}

function describeSchedule(method: string, tokens: number): string {
  return `${method} with ${tokens} visual tokens`;
}

/**
 * Reassembles one Encode stream. Feed every message in order with `accept`, then call `finish` when
 * the stream ended with OK. Each method throws a VlmError at the first broken promise.
 */
export class TensorAssembler {
  private header: TensorHeader | null = null;
  private dtype: FloatDType = 'float32';
  private bytes: Uint8Array | null = null;
  private nextIndex = 0;
  private rowsReceived = 0;
  private summary: EncodeSummary | null = null;

  constructor(private readonly expect: Expectation) {}

  accept(message: EncodeResponse): void {
    const part = message.part;
    if (part === undefined) throw loss('a message with no header, chunk or summary');
    if (this.summary !== null) throw loss(`a ${part.$case} after the summary`);
    switch (part.$case) {
      case 'header':
        return this.acceptHeader(part.header);
      case 'chunk':
        return this.acceptChunk(part.chunk);
      case 'summary':
        return this.acceptSummary(part.summary);
    }
  }

  private acceptHeader(h: TensorHeader): void {
    if (this.header !== null) throw loss('a second header');
    const e = this.expect;
    if (h.contentHash !== e.contentHash) {
      throw modelMismatch(
        `the vision service runs ${h.modelId} (${h.contentHash}) but this language service runs ${e.modelId} (${e.contentHash}); ` +
          'both must serve the same model bundle (is a rollout half finished?)',
      );
    }
    const dtype = wireDTypeOf(h.dtype);
    if (dtype !== e.dtype) {
      throw modelMismatch(`the vision service sends ${dtype ?? `element type ${h.dtype}`} tokens but this language service runs ${e.dtype}; run both with the same io_dtype bundle`);
    }
    if (h.width !== e.width) {
      throw modelMismatch(`the vision service sends tokens of width ${h.width} but this language model's hidden size is ${e.width}`);
    }
    if (h.byteOrder !== ByteOrder.BYTE_ORDER_LITTLE_ENDIAN) throw loss(`unsupported byte order ${h.byteOrder}; only little-endian is defined`);
    const rows = h.tokenCount;
    if (h.shape.length !== 2 || h.shape[0] !== rows || h.shape[1] !== h.width) throw loss(`header shape [${h.shape.join(', ')}] disagrees with token_count ${rows} and width ${h.width}`);
    if (rows > e.fullTokenCount) throw loss(`${rows} visual tokens, more than the model's ${e.fullTokenCount}`);
    this.checkSchedule(h);
    if (h.origin.length !== rows) throw loss(`${h.origin.length} provenance entries for ${rows} rows`);
    if (h.size.length !== rows && h.size.length !== 0) throw loss(`${h.size.length} size entries for ${rows} rows`);
    if (h.rowsPerChunk < 1 || h.chunkCount !== Math.ceil(rows / h.rowsPerChunk)) throw loss(`chunk_count ${h.chunkCount} does not cover ${rows} rows in chunks of ${h.rowsPerChunk}`);
    this.header = h;
    this.dtype = dtype;
    this.bytes = new Uint8Array(rows * h.width * bytesPerElement(dtype));
  }

  /**
   * The rows must be the ones this service planned the request around (context length, the language
   * schedule, the budget reported to the client). A header that contradicts its own schedule is not the
   * tensor it claims to be (DATA_LOSS); a consistent header for a different schedule, or one that
   * reports none (its rows cannot be vouched for), comes from a vision service that resolves policies
   * differently: MODEL_MISMATCH, as for another bundle. It must not reach the caller as their
   * INVALID_ARGUMENT.
   */
  private checkSchedule(h: TensorHeader): void {
    const want = this.expect.schedule;
    const expected = describeSchedule(want.method, want.outputTokens);
    const got = h.schedule;
    if (got === undefined) throw skew(`the vision service sent ${h.tokenCount} visual tokens without the schedule it ran; this language service resolved ${expected}`);
    if (got.outputTokens !== h.tokenCount) throw loss(`token_count ${h.tokenCount} disagrees with the header's own schedule (${describeSchedule(got.method, got.outputTokens)})`);
    if (got.method !== want.method || got.outputTokens !== want.outputTokens) {
      throw skew(`the vision service ran ${describeSchedule(got.method, got.outputTokens)} but this language service resolved ${expected} for the request`);
    }
    const params = paramsFromWire(got.params);
    for (const name of SPLIT_PARAMS) {
      if (params[name] !== want.params[name]) {
        throw skew(`the vision service split the budget with ${name} = ${String(params[name] ?? 'unset')} but this language service with ${String(want.params[name] ?? 'unset')}`);
      }
    }
  }

  private acceptChunk(c: TensorChunk): void {
    const h = this.header;
    if (h === null || this.bytes === null) throw loss('a chunk before the header');
    if (c.index >= h.chunkCount) throw loss(`chunk ${c.index} beyond the ${h.chunkCount} the header announced`);
    if (c.index !== this.nextIndex) throw loss(`chunk ${c.index} where chunk ${this.nextIndex} was due (missing or repeated chunk)`);
    const rowOffset = c.index * h.rowsPerChunk;
    const rowCount = Math.min(h.rowsPerChunk, h.tokenCount - rowOffset);
    if (c.rowOffset !== rowOffset || c.rowCount !== rowCount) throw loss(`chunk ${c.index} holds rows [${c.rowOffset}, +${c.rowCount}) instead of [${rowOffset}, +${rowCount})`);
    const rowBytes = h.width * bytesPerElement(this.dtype);
    if (c.data.length !== rowCount * rowBytes) throw loss(`chunk ${c.index} has ${c.data.length} bytes for ${rowCount} rows of ${rowBytes}`);
    this.bytes.set(c.data, rowOffset * rowBytes);
    this.nextIndex++;
    this.rowsReceived += rowCount;
  }

  private acceptSummary(s: EncodeSummary): void {
    const h = this.header;
    if (h === null) throw loss('a summary before the header');
    if (this.nextIndex !== h.chunkCount) throw loss(`summary after ${this.nextIndex} of ${h.chunkCount} chunks`);
    // These reach the caller's final message and the metrics: a NaN there is a broken vision's, not data.
    const numbers: Array<[string, number]> = [
      ...Object.entries(s.timingsMs).map(([k, v]): [string, number] => [`timings_ms[${JSON.stringify(k)}]`, v]),
      ...Object.entries(s.flops).map(([k, v]): [string, number] => [`flops[${JSON.stringify(k)}]`, v]),
      ['queue_ms', s.queueMs],
    ];
    const bad = numbers.find(([, v]) => !Number.isFinite(v) || v < 0);
    if (bad) throw loss(`the summary's ${bad[0].slice(0, 80)} is ${bad[1]}, not a finite count of at least 0`);
    this.summary = s;
  }

  /** Call when the stream ended with status OK. */
  finish(): AssembledTensor {
    const h = this.header;
    if (h === null || this.bytes === null) throw loss('the stream ended without a header');
    if (this.summary === null) throw loss(`the stream ended after ${this.nextIndex} of ${h.chunkCount} chunks, without a summary`);
    const bytes = this.bytes;
    if (!HOST_IS_LE) {
      const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      if (this.dtype === 'float32') b.swap32();
      else b.swap16();
    }
    const typed =
      this.dtype === 'float32'
        ? { dtype: 'float32' as const, data: new Float32Array(bytes.buffer, 0, bytes.byteLength / 4) }
        : { dtype: 'float16' as const, data: new Uint16Array(bytes.buffer, 0, bytes.byteLength / 2) };
    // The decoder would take a NaN or an infinity through every layer and fail only at sampling, an
    // INTERNAL after a whole prefill: vision sent a tensor no model produces, and is named for it here.
    const bad = firstNonFinite(typed);
    if (bad >= 0) throw loss(`row ${Math.floor(bad / h.width)} holds a NaN or an infinite value`);
    const size = h.size.length === h.tokenCount ? Float32Array.from(h.size) : new Float32Array(h.tokenCount).fill(1);
    return {
      header: h,
      summary: this.summary,
      tokens: { rows: h.tokenCount, width: h.width, ...typed, origin: Int32Array.from(h.origin), size },
    };
  }
}

/** Index of the first NaN or infinity (float16: exponent bits all set), or -1. */
function firstNonFinite(t: { dtype: 'float32'; data: Float32Array } | { dtype: 'float16'; data: Uint16Array }): number {
  const d = t.data;
  if (t.dtype === 'float32') {
    for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i]!)) return i;
  } else {
    for (let i = 0; i < d.length; i++) if ((d[i]! & 0x7c00) === 0x7c00) return i;
  }
  return -1;
}
