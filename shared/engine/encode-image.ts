/**
 * The vision side, pipeline-shaped: preprocess -> vision/embed -> per layer (attn half; at a
 * schedule step: scores graph on the layer input, the method's reduction applied to the
 * post-attention stream; mlp half) -> drop CLS -> projector.
 */
import { withSpan } from '../telemetry/with-span';
import { budgetAttribute } from '../telemetry/policy-attributes';
import {
  ATTR_VLM_BYTES,
  ATTR_VLM_FLOPS,
  ATTR_VLM_IMAGE_SIZE,
  ATTR_VLM_LAYER,
  ATTR_VLM_MODEL_ID,
  ATTR_VLM_REDUCTION_BUDGET,
  ATTR_VLM_REDUCTION_METHOD,
  ATTR_VLM_TOKENS_IN,
  ATTR_VLM_TOKENS_OUT,
  SpanName,
} from '../telemetry/names';
import { VlmError } from '../errors';
import { preprocessImage } from '../image/preprocess';
import { optionsOf, resolveVisionSchedule, type ReductionPolicy } from '../methods/policy';
import { getVisionReducer } from '../methods/registry';
import type { TokenMeta, VisionSchedule } from '../methods/types';
import { emptyFlops, projectorFlops, visionAttnFlops, visionEmbedFlops, visionMlpFlops, visionScoresFlops, type StageFlops } from '../flops/flops';
import type { F32Tensor } from '../tensor/host-tensor';
import type { FloatRows } from '../tensor/float-rows';
import { checkContinue, type RunContext } from './context';
import type { LoadedModel } from './model';
import { VisionStageRunner } from './vision-runner';

/** Projected visual tokens, as the language side takes them. */
export interface VisualTokens {
  /** [N, Dl] in the projector's dtype (the bundle's io_dtype; float16 as bits, never widened on the way to the decoder). */
  readonly embeds: FloatRows;
  /** Original patch index of each row's main source; -2 for a synthesised token. */
  readonly origin: Int32Array;
}

export interface EncodeResult extends VisualTokens {
  /** Original patches each row stands for, as the vision method tracked them (ToMe's merge sizes; 1 where no merge reached). */
  readonly size: Float32Array;
  readonly schedule: VisionSchedule;
  readonly flops: StageFlops;
  /** Tokens (CLS included) entering each encoder layer's attention. */
  readonly tokensPerLayer: readonly number[];
  readonly timingsMs: { readonly preprocess: number; readonly vision: number; readonly project: number };
  readonly image: { readonly width: number; readonly height: number; readonly format: string };
}

function initialTokens(P: number, cls: boolean): TokenMeta {
  const n = P + (cls ? 1 : 0);
  const origin = new Int32Array(n);
  for (let i = 0; i < n; i++) origin[i] = cls ? i - 1 : i;
  return { origin, size: new Float32Array(n).fill(1) };
}

export async function encodeImage(model: LoadedModel, imageBytes: Uint8Array, policy: ReductionPolicy, ctx: RunContext = {}): Promise<EncodeResult> {
  checkContinue(ctx);
  // Resolve before any work: an infeasible budget is the caller's error and costs nothing.
  resolveVisionSchedule(policy, model.visionGeometry);
  const t0 = performance.now();
  // The method and budget as on every vision stage span, so a report grouped by method has this stage too.
  const policyAttributes = { [ATTR_VLM_REDUCTION_METHOD]: policy.vision, [ATTR_VLM_REDUCTION_BUDGET]: budgetAttribute(policy.budget) };
  const pre = await withSpan(SpanName.Preprocess, { [ATTR_VLM_MODEL_ID]: model.manifest.model_id, ...policyAttributes, [ATTR_VLM_BYTES]: imageBytes.byteLength }, async (span) => {
    const p = await preprocessImage(imageBytes, model.manifest.preprocess, model.limits);
    span.setAttribute(ATTR_VLM_IMAGE_SIZE, `${p.width}x${p.height}`);
    return p;
  });
  const preprocessMs = performance.now() - t0;
  const encoded = await encodePixels(model, pre.pixelValues, policy, ctx);
  return { ...encoded, timingsMs: { ...encoded.timingsMs, preprocess: preprocessMs }, image: { width: pre.width, height: pre.height, format: pre.format } };
}

/** The encoder from pixel_values [1,3,S,S] on (golden tests start here). */
export async function encodePixels(model: LoadedModel, pixelValues: F32Tensor, policy: ReductionPolicy, ctx: RunContext = {}): Promise<EncodeResult> {
  const m = model.manifest;
  const attrs = { [ATTR_VLM_MODEL_ID]: m.model_id, [ATTR_VLM_REDUCTION_METHOD]: policy.vision, [ATTR_VLM_REDUCTION_BUDGET]: budgetAttribute(policy.budget) };
  checkContinue(ctx);
  const schedule = resolveVisionSchedule(policy, model.visionGeometry);
  ctx.tap?.('pixel_values', pixelValues);
  let t0 = performance.now();
  const runner = new VisionStageRunner(model.bundle.stages, ctx);
  const flops = emptyFlops();
  const tokensPerLayer: number[] = [];
  const reducer = getVisionReducer(schedule.method);
  const options = optionsOf(policy);
  const state: Record<string, unknown> = {};
  let tokens = initialTokens(m.vision.num_patches, m.vision.class_token);

  await withSpan(SpanName.VisionEmbed, { ...attrs, [ATTR_VLM_TOKENS_IN]: tokens.origin.length }, async (span) => {
    await runner.embed(pixelValues);
    flops.vision += visionEmbedFlops(m.vision);
    for (let layer = 0; layer < m.vision.num_layers; layer++) {
      checkContinue(ctx);
      const T = runner.tokens;
      tokensPerLayer.push(T);
      await withSpan(SpanName.VisionLayer, { ...attrs, [ATTR_VLM_LAYER]: layer, [ATTR_VLM_TOKENS_IN]: T }, async (layerSpan) => {
        const flopsBefore = flops.vision + flops.overhead;
        await runner.attn(layer);
        flops.vision += visionAttnFlops(m.vision, T);
        const step = schedule.steps.find((s) => s.layer === layer);
        if (step) {
          checkContinue(ctx);
          if (step.tokensIn !== T) throw new VlmError('INTERNAL', `vision schedule of ${schedule.method} expects ${step.tokensIn} tokens at layer ${layer}, the encoder has ${T}`);
          await withSpan(SpanName.Reduce, { ...attrs, [ATTR_VLM_LAYER]: layer, [ATTR_VLM_TOKENS_IN]: T }, async (reduceSpan) => {
            const scores = await runner.scores(layer, schedule.needs);
            if (schedule.needs.length) flops.overhead += visionScoresFlops(m.vision, T);
            // The hidden state is decoded to float32 only for a method that reads it (none of the vision ones do today).
            const out = reducer.reduce({ step, get hidden() { return runner.hiddenMatrix(); }, ...scores, tokens, state }, schedule, options);
            runner.combine(out.combine, `vision method ${schedule.method} at layer ${layer}`);
            tokens = out.tokens;
            if (tokens.origin.length !== runner.tokens) {
              throw new VlmError('INTERNAL', `vision method ${schedule.method} at layer ${layer}: ${runner.tokens} rows but TokenMeta for ${tokens.origin.length}`);
            }
            if (schedule.proportionalAttention) runner.setBias(tokens.size.map(Math.log));
            reduceSpan.setAttribute(ATTR_VLM_TOKENS_OUT, runner.tokens);
          });
        }
        await runner.mlp(layer);
        flops.vision += visionMlpFlops(m.vision, runner.tokens);
        layerSpan.setAttribute(ATTR_VLM_TOKENS_OUT, runner.tokens);
        layerSpan.setAttribute(ATTR_VLM_FLOPS, flops.vision + flops.overhead - flopsBefore);
      });
    }
    span.setAttribute(ATTR_VLM_TOKENS_OUT, runner.tokens);
    span.setAttribute(ATTR_VLM_FLOPS, flops.vision + flops.overhead);
  });
  const visionMs = performance.now() - t0;
  checkContinue(ctx);

  t0 = performance.now();
  // LLaVA drops sequence position 0 (select_feature='patch'), whatever token sits there.
  const drop = m.vision.class_token ? 1 : 0;
  const N = runner.tokens - drop;
  const embeds = await withSpan(SpanName.Project, { ...attrs, [ATTR_VLM_TOKENS_IN]: N }, async (span) => {
    flops.projector += projectorFlops(m, N);
    span.setAttribute(ATTR_VLM_FLOPS, flops.projector);
    return runner.project(drop);
  });
  const projectMs = performance.now() - t0;

  return {
    embeds,
    origin: tokens.origin.slice(drop),
    size: tokens.size.slice(drop),
    schedule,
    flops,
    tokensPerLayer,
    timingsMs: { preprocess: 0, vision: visionMs, project: projectMs },
    image: { width: pixelValues.dims[3]!, height: pixelValues.dims[2]!, format: 'pixels' },
  };
}
