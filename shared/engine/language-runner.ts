/**
 * Owns one request's decoder state: the residual stream of the current sequence and one KV cache
 * per layer (kv-cache.ts: independent lengths, in the bundle's io_dtype and layout, fed back
 * without conversion).
 */
import { VlmError } from '../errors';
import type { StageSet } from '../bundle/loader';
import { layerStage, type Manifest } from '../bundle/manifest';
import type { Matrix, Span, TokenCombination } from '../methods/types';
import { residentRows, residentToHost, runStage, type Feed, type Resident } from '../onnx/run-stage';
import type { FloatRows } from '../tensor/float-rows';
import { asMatrix, i64, type I64Tensor } from '../tensor/host-tensor';
import { HiddenState } from './hidden-state';
import { createKvCaches, type KvCaches } from './kv-cache';
import { checkCombination } from '../tensor/rows';
import type { RunContext } from './context';

export class LanguageStageRunner {
  private hidden: HiddenState | undefined;
  private readonly caches: KvCaches;
  /** Feeds of the last attention call: the scores graph of the same layer reads exactly these. */
  private attnFeeds: { layer: number; feeds: Record<string, Feed>; rows: number } | undefined;

  constructor(
    private readonly stages: StageSet,
    manifest: Manifest,
    private readonly ctx: RunContext,
    decodeRows: number,
  ) {
    this.caches = createKvCaches(manifest, decodeRows);
  }

  /** Embeddings of token ids: [n, Dl] in the graph's dtype (float16 as bits). */
  async embed(ids: readonly number[]): Promise<FloatRows> {
    const name = 'language/embed';
    const out = await runStage(await this.stages.get(name), { input_ids: i64([1, ids.length], ids) }, { keep: ['embeds'] });
    const t = out.kept.embeds!;
    if (this.ctx.tap) this.ctx.tap(`${name}:embeds`, residentToHost(`${name}:embeds`, t));
    return residentRows(`${name}:embeds`, t);
  }

  /** The sequence's layer-0 input, held in its own dtype (a float16 block is fed to the first layer as it is). */
  setHidden(rows: FloatRows): void {
    this.hidden = HiddenState.fromRows(rows);
  }

  hiddenMatrix(): Matrix {
    return asMatrix(this.current().host());
  }

  /** Tokens in the current sequence. */
  get tokens(): number {
    return this.current().dims[1]!;
  }

  private current(): HiddenState {
    if (!this.hidden) throw new VlmError('INTERNAL', 'language runner used before setHidden()');
    return this.hidden;
  }

  cacheLength(layer: number): number {
    return this.caches.length(layer);
  }

  /** Runs layer `layer`'s attention over the current hidden at `positions`, appending to its cache. */
  async attn(layer: number, positions: ArrayLike<number>): Promise<void> {
    const T = this.tokens;
    if (positions.length !== T) throw new VlmError('INTERNAL', `${positions.length} positions for ${T} tokens`);
    const past = this.caches.length(layer);
    // Before past(): making room for the new rows may move the cache's buffer.
    const into = this.caches.outputsInto(layer, T);
    const feeds: Record<string, Feed> = {
      hidden_in: this.current().feed(),
      position_ids: i64([1, T], positions),
      ...this.caches.past(layer),
      attention_mask: ones(past + T),
    };
    this.attnFeeds = { layer, feeds, rows: T };
    const name = layerStage('language', layer, 'attn');
    const out = await runStage(await this.stages.get(name), feeds, { keep: ['hidden_out', ...this.caches.outputs], into });
    this.setResident(`${name}:hidden_out`, out.kept.hidden_out!);
    this.caches.take(layer, out.kept, T);
    if (this.ctx.tap) for (const o of this.caches.outputs) this.ctx.tap(`${name}:${o}`, residentToHost(`${name}:${o}`, out.kept[o]!));
  }

  /** The scores graph of the layer whose attention ran last, on the same inputs. */
  async scores(layer: number, needs: ReadonlyArray<'scores' | 'probs'>): Promise<{ scores?: Matrix; probs?: Matrix }> {
    if (this.attnFeeds?.layer !== layer) throw new VlmError('INTERNAL', `scores(${layer}) without that layer's attention inputs`);
    // A second step in one layer would score the rows before the first step's removal against its image span.
    if (this.attnFeeds.rows !== this.tokens) throw new VlmError('INTERNAL', `scores(${layer}) on ${this.attnFeeds.rows} rows of attention inputs, but the hidden state has ${this.tokens}`);
    if (needs.length === 0) return {};
    const name = layerStage('language', layer, 'scores');
    const out = await runStage(await this.stages.get(name), this.attnFeeds.feeds, { outputs: needs });
    const result: { scores?: Matrix; probs?: Matrix } = {};
    for (const n of needs) {
      this.ctx.tap?.(`${name}:${n}`, out.host[n]!);
      result[n] = asMatrix(out.host[n]!);
    }
    return result;
  }

  /** Replaces the span's rows by the combination of them (rows outside the span unchanged). */
  combineSpan(span: Span, c: TokenCombination, who: string): void {
    checkCombination(c, span.length, who);
    this.hidden = this.current().combine(c, span);
  }

  async mlp(layer: number): Promise<void> {
    const name = layerStage('language', layer, 'mlp');
    const out = await runStage(await this.stages.get(name), { hidden_in: this.current().feed() }, { keep: ['hidden_out'] });
    this.setResident(`${name}:hidden_out`, out.kept.hidden_out!);
  }

  private setResident(key: string, t: Resident): void {
    this.hidden = HiddenState.fromResident(t);
    if (this.ctx.tap) this.ctx.tap(key, this.hidden.host());
  }

  /** Logits of the last position only: Float32Array of the vocabulary size. */
  async headLast(): Promise<Float32Array> {
    const last = this.current().rows(this.tokens - 1, 1);
    const out = await runStage(await this.stages.get('language/head'), { hidden_in: last });
    const t = out.host.logits!;
    this.ctx.tap?.('language/head:logits', t);
    return t.data;
  }
}

function ones(n: number): I64Tensor {
  return i64([1, n], new BigInt64Array(n).fill(1n));
}
