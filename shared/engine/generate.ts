/**
 * The language side: prompt assembly around the visual rows, prefill layer by layer with the
 * language method's steps, then decode.
 *
 * Positions (docs/architecture table, shared/methods/types.ts PositionRule):
 * - 'renumber' (and none / vision-side methods, where it is the same thing): prefill positions are
 *   0..L-1 of the current sequence at every layer; a decoded token's position at layer l is that
 *   layer's cache length.
 * - 'keep': kept tokens carry their original positions (a merged row takes its first source's);
 *   a decoded token's position is the original prompt length + step at every layer.
 * A step 'after-attn' reduces the post-attention stream before the MLP (the layer's cache keeps the
 * pre-reduction length); 'after-layer' reduces after the MLP. Either reads the scores graph of the
 * same layer, run on that layer's attention inputs.
 */
import type { Attributes } from '@opentelemetry/api';
import { withSpan } from '../telemetry/with-span';
import {
  ATTR_VLM_FINISH_REASON,
  ATTR_VLM_TOKEN_ID,
  ATTR_VLM_TOKEN_INDEX,
  EVENT_TOKEN,
  ATTR_VLM_FLOPS,
  ATTR_VLM_LAYER,
  ATTR_VLM_MODEL_ID,
  ATTR_VLM_REDUCTION_ACHIEVED,
  ATTR_VLM_REDUCTION_METHOD,
  ATTR_VLM_TOKENS_IN,
  ATTR_VLM_TOKENS_OUT,
  SpanName,
} from '../telemetry/names';
import { VlmError } from '../errors';
import { optionsOf, resolveLanguageSchedule, type ReductionPolicy } from '../methods/policy';
import { getLanguageReducer } from '../methods/registry';
import type { LanguageReducer, LanguageSchedule, LanguageStep, Matrix, MethodOptions, Span } from '../methods/types';
import { emptyFlops, headFlops, languageAttnFlops, languageMlpFlops, languageScoresFlops, type StageFlops } from '../flops/flops';
import { batched } from '../tensor/host-tensor';
import { firstSourceValues } from '../tensor/rows';
import { concatRows, rowsIn, rowsMatrix, sliceRows } from '../tensor/float-rows';
import { assemblePrompt, DeltaDecoder } from '../tokenizer/tokenizer';
import { checkContinue, type RunContext } from './context';
import type { VisualTokens } from './encode-image';
import { LanguageStageRunner } from './language-runner';
import type { LoadedModel } from './model';
import { checkSampling, Sampler, type SamplingParams } from './sampling';
import { fitMaxTokens } from './context-fit';

export type FinishReason = 'stop' | 'length';

export interface GenerateResult {
  readonly text: string;
  readonly tokenIds: readonly number[];
  readonly finishReason: FinishReason;
  /** Prompt length with the visual rows as they arrived (before language-side reduction). */
  readonly promptTokens: number;
  readonly visualTokensIn: number;
  readonly schedule: LanguageSchedule;
  /** Visual tokens entering each decoder layer's attention during prefill, as run. */
  readonly perLayerVisualTokens: readonly number[];
  /** Their mean: the budget achieved. */
  readonly achievedBudget: number;
  readonly flops: StageFlops;
  readonly timingsMs: { readonly prefill: number; readonly firstToken: number; readonly decode: number };
  /**
   * Forward passes `timingsMs.decode` spent: one per token after the first (whose logits prefill
   * made), and one more for the stop token when the answer stopped. Decode rates divide by this.
   */
  readonly decodeSteps: number;
}

/**
 * Called for every generated token (not stop tokens) with the text it completes (may be ''), and
 * once more without an id when the end of the answer flushes text still held back (a token that
 * stopped inside a multi-byte character): every id is reported exactly once.
 */
export type OnDelta = (delta: string, tokenId: number | undefined) => void;

function checkVisual(model: LoadedModel, visual: VisualTokens): void {
  const [N, D] = visual.embeds.dims;
  const want = model.manifest.language.hidden_size;
  if (D !== want) throw new VlmError('FAILED_PRECONDITION', `visual tokens have width ${D}, this language model takes ${want}: the vision service runs a different model`);
  if (N < 1 || visual.embeds.data.length !== N * D) throw VlmError.invalid('visual.embeds', `dims [${N}, ${D}] do not match ${visual.embeds.data.length} values`);
  if (visual.origin.length !== N) throw VlmError.invalid('visual.origin', `has ${visual.origin.length} entries for ${N} rows`);
}

function range(n: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  return out;
}

/** One request's language-side run: what prefill and decode share. */
interface LanguageRun {
  readonly model: LoadedModel;
  readonly schedule: LanguageSchedule;
  readonly reducer: LanguageReducer;
  readonly options: MethodOptions;
  readonly attrs: Attributes;
  readonly ctx: RunContext;
  readonly flops: StageFlops;
  /** Visual tokens entering each decoder layer's attention, pushed as prefill runs them. */
  readonly perLayerVisualTokens: number[];
}

export async function generate(
  model: LoadedModel,
  visual: VisualTokens,
  question: string,
  sampling: SamplingParams,
  policy: ReductionPolicy,
  ctx: RunContext = {},
  onDelta?: OnDelta,
): Promise<GenerateResult> {
  checkVisual(model, visual);
  checkSampling(sampling, model.limits.maxNewTokens);
  const N = visual.embeds.dims[0];
  const schedule = resolveLanguageSchedule(policy, { ...model.languageGeometry, visualTokens: N });
  const run: LanguageRun = {
    model,
    schedule,
    reducer: getLanguageReducer(schedule.method),
    options: optionsOf(policy),
    attrs: { [ATTR_VLM_MODEL_ID]: model.manifest.model_id, [ATTR_VLM_REDUCTION_METHOD]: policy.language },
    ctx,
    flops: emptyFlops(),
    perLayerVisualTokens: [],
  };
  checkContinue(ctx);

  let t0 = performance.now();
  const { runner, promptTokens, firstLogits } = await prefill(run, visual, question, sampling);
  const prefillMs = performance.now() - t0;
  t0 = performance.now();
  const decoded = await decode(run, runner, firstLogits, promptTokens, sampling, onDelta);
  return {
    text: decoded.text,
    tokenIds: decoded.ids,
    finishReason: decoded.finishReason,
    promptTokens,
    visualTokensIn: N,
    schedule,
    perLayerVisualTokens: run.perLayerVisualTokens,
    achievedBudget: mean(run.perLayerVisualTokens),
    flops: run.flops,
    timingsMs: { prefill: prefillMs, firstToken: prefillMs + decoded.firstSampledMs, decode: performance.now() - t0 },
    decodeSteps: decoded.steps,
  };
}

/** Prefill: the prompt's assembly to the first token's logits, as its span and metric say. */
async function prefill(run: LanguageRun, visual: VisualTokens, question: string, sampling: SamplingParams): Promise<{ runner: LanguageStageRunner; promptTokens: number; firstLogits: Float32Array }> {
  const { model, schedule, reducer, options, attrs, ctx, flops, perLayerVisualTokens } = run;
  const m = model.manifest;
  const arch = m.language;
  const N = visual.embeds.dims[0];
  return withSpan(SpanName.Prefill, attrs, async (span) => {
    const prompt = assemblePrompt(model.tokenizer, m.prompt, m.tokens, question, model.limits);
    const promptTokens = prompt.prefix.length + N + prompt.suffix.length;
    span.setAttribute(ATTR_VLM_TOKENS_IN, promptTokens);
    fitMaxTokens(arch.max_positions, { value: sampling.maxNewTokens, set: true }, prompt.prefix.length + prompt.suffix.length, N);
    // The last token is sampled, never fed back: decode appends at most maxNewTokens - 1 rows.
    const runner = new LanguageStageRunner(model.bundle.stages, m, ctx, Math.max(0, sampling.maxNewTokens - 1));
    const text = await runner.embed([...prompt.prefix, ...prompt.suffix]);
    const P = prompt.prefix.length;
    // In the embedding graph's dtype: visual rows from the hop already are (a caller's float32 rows on a float16 bundle are converted once here).
    const embeds = concatRows([sliceRows(text, 0, P), rowsIn(visual.embeds, text.dtype), sliceRows(text, P, text.dims[0] - P)]);
    const seq: Sequence = { image: { start: prompt.imageStart, length: N }, positions: range(embeds.dims[0]), state: {} };
    if (ctx.tap) ctx.tap('language/input:embeds', batched(rowsMatrix(embeds)));
    if (reducer.prepare) {
      let values: Matrix | undefined;
      // Decoded to float32 only for a method that reads the embeddings (SparseVLM's raters).
      reducer.prepare({ get embeds() { return (values ??= rowsMatrix(embeds)); }, image: seq.image }, schedule, options, seq.state);
    }
    runner.setHidden(embeds);

    for (let layer = 0; layer < arch.num_layers; layer++) {
      checkContinue(ctx);
      const T = seq.positions.length;
      perLayerVisualTokens.push(seq.image.length);
      await withSpan(SpanName.PrefillLayer, { ...attrs, [ATTR_VLM_LAYER]: layer, [ATTR_VLM_TOKENS_IN]: T }, async (layerSpan) => {
        await runner.attn(layer, seq.positions);
        flops.prefill += languageAttnFlops(arch, T, T);
        for (const step of schedule.steps) if (step.layer === layer && step.at === 'after-attn') await applyStep(run, runner, seq, step, layer);
        await runner.mlp(layer);
        flops.prefill += languageMlpFlops(arch, seq.positions.length);
        for (const step of schedule.steps) if (step.layer === layer && step.at === 'after-layer') await applyStep(run, runner, seq, step, layer);
        layerSpan.setAttribute(ATTR_VLM_TOKENS_OUT, seq.positions.length);
      });
    }
    flops.prefill += headFlops(arch, 1);
    span.setAttribute(ATTR_VLM_TOKENS_OUT, seq.positions.length);
    span.setAttribute(ATTR_VLM_FLOPS, flops.prefill + flops.overhead);
    span.setAttribute(ATTR_VLM_REDUCTION_ACHIEVED, mean(perLayerVisualTokens));
    return { runner, promptTokens, firstLogits: await runner.headLast() };
  });
}

/** The prefill sequence as the language method's steps leave it. */
interface Sequence {
  /** Where the visual rows are in the current sequence. */
  image: Span;
  /** Each row's position (PositionRule: renumbered, or kept from the prompt). */
  positions: Int32Array;
  /** The method's per-request state (prepare, then each step). */
  readonly state: Record<string, unknown>;
}

/** One step of the language method at `layer`: scores, the method's combination, the rows and positions after it. */
async function applyStep(run: LanguageRun, runner: LanguageStageRunner, seq: Sequence, step: LanguageStep, layer: number): Promise<void> {
  const { schedule, reducer, options, attrs, ctx, flops } = run;
  checkContinue(ctx);
  await withSpan(SpanName.Reduce, { ...attrs, [ATTR_VLM_LAYER]: layer, [ATTR_VLM_TOKENS_IN]: seq.image.length }, async (reduceSpan) => {
    const positions = seq.positions;
    const scores = await runner.scores(layer, schedule.needs);
    if (schedule.needs.length) flops.overhead += languageScoresFlops(run.model.manifest.language, positions.length, positions.length);
    // The hidden state is decoded to float32 only for a method that reads it (SparseVLM's clustering).
    const out = reducer.reduce({ step, get hidden() { return runner.hiddenMatrix(); }, ...scores, image: seq.image, state: seq.state }, schedule, options);
    runner.combineSpan(out.span, out.combine, `language method ${schedule.method} at layer ${layer}`);
    // A schedule's counts are what its budget and FLOPs promise; only a data-dependent one measures instead.
    if (!schedule.dataDependent && out.image.length !== step.tokensOut) {
      throw new VlmError('INTERNAL', `language method ${schedule.method} left ${out.image.length} visual tokens at layer ${layer}; its schedule says ${step.tokensOut}`);
    }
    const kept = schedule.positions === 'keep' ? firstSourceValues(positions.subarray(out.span.start, out.span.start + out.span.length), out.combine, (n) => new Int32Array(n)) : undefined;
    const rows = runner.tokens;
    if (kept) {
      const next = new Int32Array(rows);
      next.set(positions.subarray(0, out.span.start), 0);
      next.set(kept, out.span.start);
      next.set(positions.subarray(out.span.start + out.span.length), out.span.start + kept.length);
      seq.positions = next;
    } else seq.positions = range(rows);
    seq.image = out.image;
    reduceSpan.setAttribute(ATTR_VLM_TOKENS_OUT, seq.image.length);
  });
}

/** Decode: sample, stream the text, feed the token back through every layer, until a stop or max_tokens. */
async function decode(
  run: LanguageRun,
  runner: LanguageStageRunner,
  firstLogits: Float32Array,
  promptTokens: number,
  sampling: SamplingParams,
  onDelta: OnDelta | undefined,
): Promise<{ text: string; ids: number[]; finishReason: FinishReason; steps: number; firstSampledMs: number }> {
  const { model, schedule, attrs, ctx, flops } = run;
  const arch = model.manifest.language;
  const t0 = performance.now();
  const sampler = new Sampler(sampling);
  const stop = new Set(model.manifest.tokens.stop_ids);
  const decoder = new DeltaDecoder(model.tokenizer);
  const ids: number[] = [];
  let logits = firstLogits;
  let firstSampledMs = 0;
  let steps = 0;
  let finishReason: FinishReason = 'length';
  const withContent = ctx.captureContent === true;
  await withSpan(SpanName.Decode, attrs, async (span) => {
    for (let step = 0; ; step++) {
      checkContinue(ctx);
      const id = sampler.next(logits);
      if (step === 0) firstSampledMs = performance.now() - t0;
      if (stop.has(id)) {
        finishReason = 'stop';
        break;
      }
      ids.push(id);
      span.addEvent(EVENT_TOKEN, { [ATTR_VLM_TOKEN_INDEX]: ids.length - 1, ...(withContent ? { [ATTR_VLM_TOKEN_ID]: id } : {}) });
      // Pushed unconditionally: `onDelta?.(decoder.push(id))` would skip the push without a listener.
      const delta = decoder.push(id);
      onDelta?.(delta, id);
      if (ids.length >= sampling.maxNewTokens) break;
      runner.setHidden(await runner.embed([id]));
      for (let layer = 0; layer < arch.num_layers; layer++) {
        checkContinue(ctx);
        const cacheLen = runner.cacheLength(layer);
        const position = schedule.positions === 'keep' ? promptTokens + step : cacheLen;
        await runner.attn(layer, [position]);
        await runner.mlp(layer);
        flops.decode += languageAttnFlops(arch, 1, cacheLen + 1) + languageMlpFlops(arch, 1);
      }
      logits = await runner.headLast();
      flops.decode += headFlops(arch, 1);
      steps++;
    }
    const rest = decoder.flush();
    if (rest) onDelta?.(rest, undefined);
    span.setAttribute(ATTR_VLM_TOKENS_OUT, ids.length);
    span.setAttribute(ATTR_VLM_FINISH_REASON, finishReason);
    span.setAttribute(ATTR_VLM_FLOPS, flops.decode);
  });
  return { text: decoder.text, ids, finishReason, steps, firstSampledMs };
}

function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}
