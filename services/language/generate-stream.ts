/**
 * One Generate: validate -> resolve both schedules (an infeasible budget fails before any work) ->
 * check that prompt and answer fit the model's positions (likewise) -> encode on the vision service
 * (caller's deadline and cancellation carried over) -> check the tensor against this model ->
 * prefill and decode in the pool, streaming deltas -> the final message.
 */
import { floatRows } from '../../shared/tensor/float-rows';
import type { VisualTokens, GenerateResult } from '../../shared/engine';
import { resolveLanguageSchedule, resolveVisionSchedule } from '../../shared/methods/policy';
import type { VisionSchedule } from '../../shared/methods/types';
import type { GenerateFinal, GenerateRequest, GenerateResponse } from '../../gen/vlm/v1/language_service';
import { FinishReason } from '../../gen/vlm/v1/language_service';
import { VlmError } from '../../shared/errors';
import type { CallContext } from '../common/call-context';
import { traceOf } from '../common/call-trace';
import { Channel } from '../common/channel';
import type { InferenceBackend } from '../common/inference-backend';
import type { AdvertisedLimits } from '../common/model-info';
import type { AssembledTensor, Expectation, WireTokens } from '../common/tensor-stream';
import { validateGenerate, wirePolicy, type RequestLimitsConfig, type ValidGenerate } from '../common/validate';
import { flopsToWire, resolvedPolicy, roundMs } from '../common/wire';
import type { HopContext } from './vision-client';
import type { EncodeRequest } from '../../gen/vlm/v1/vision_service';
import type { Attributes, Span } from '@opentelemetry/api';
import {
  ATTR_GEN_AI_OPERATION_NAME,
  ATTR_GEN_AI_PROVIDER_NAME,
  ATTR_GEN_AI_REQUEST_MAX_TOKENS,
  ATTR_GEN_AI_REQUEST_MODEL,
  ATTR_GEN_AI_REQUEST_SEED,
  ATTR_GEN_AI_REQUEST_TEMPERATURE,
  ATTR_GEN_AI_REQUEST_TOP_K,
  ATTR_GEN_AI_REQUEST_TOP_P,
  ATTR_GEN_AI_RESPONSE_FINISH_REASONS,
  ATTR_GEN_AI_USAGE_INPUT_TOKENS,
  ATTR_GEN_AI_USAGE_OUTPUT_TOKENS,
  ATTR_VLM_DEVICE,
  ATTR_VLM_FLOPS,
  ATTR_VLM_MODEL_ID,
  ATTR_VLM_PROVIDER,
  GEN_AI_OPERATION_CHAT,
  GEN_AI_PROVIDER,
  SpanName,
} from '../../shared/telemetry/names';
import { policyAttributes } from '../../shared/telemetry/policy-attributes';
import { recordGeneration, recordStage, recordStageTokens } from '../../shared/telemetry/metrics';
import { fitMaxTokens } from '../../shared/engine/context-fit';
import type { PromptTokenCounter } from './prompt-token-counter';
import type { PoolPlace } from '../../shared/worker';

export interface GenerateDeps {
  readonly backend: InferenceBackend;
  readonly vision: { encode(request: EncodeRequest, expect: Expectation, ctx: HopContext): Promise<AssembledTensor> };
  readonly limits: RequestLimitsConfig & AdvertisedLimits;
  /** Lets a prompt too long for the model fail before the hop rather than after a whole vision encode. */
  readonly promptTokens: PromptTokenCounter;
}

/**
 * What the hop must bring back: this model's tensor, of the vision schedule this service resolved for
 * the request (checkPolicy), so the rows are the ones the context check and the language schedule were
 * planned for.
 */
export function expectationOf(backend: InferenceBackend, vision: VisionSchedule): Expectation {
  const m = backend.model.manifest;
  return {
    modelId: m.model_id,
    contentHash: m.content_hash,
    dtype: m.io_dtype,
    width: m.language.hidden_size,
    fullTokenCount: m.vision.num_patches,
    schedule: { method: vision.method, outputTokens: vision.outputTokens, params: vision.params },
  };
}

/** The engine takes the rows in the hop's dtype: a float16 hop goes to the decoder's first layer as bits. */
function coreTokens(t: WireTokens): VisualTokens {
  return { embeds: floatRows([t.rows, t.width], t.dtype, t.data), origin: t.origin };
}

/** Judged here, before the hop: a bad policy must not cost an encode. Returns the vision schedule the hop must bring. */
function checkPolicy(backend: InferenceBackend, valid: ValidGenerate): VisionSchedule {
  const vision = resolveVisionSchedule(valid.policy, backend.model.visionGeometry);
  resolveLanguageSchedule(valid.policy, { ...backend.model.languageGeometry, visualTokens: vision.outputTokens });
  return vision;
}

/** The Generate span's fixed attributes, and those of its gen_ai metrics: one set, so the metrics join. */
export function generateAttributes(backend: InferenceBackend): Attributes {
  const modelId = backend.model.manifest.model_id;
  return { [ATTR_GEN_AI_PROVIDER_NAME]: GEN_AI_PROVIDER, [ATTR_GEN_AI_OPERATION_NAME]: GEN_AI_OPERATION_CHAT, [ATTR_GEN_AI_REQUEST_MODEL]: modelId, [ATTR_VLM_MODEL_ID]: modelId, [ATTR_VLM_PROVIDER]: backend.provider, [ATTR_VLM_DEVICE]: backend.device };
}

/** `span`: the request's span (tracedStream), for the policy and usage attributes. */
export async function* generateStream(deps: GenerateDeps, req: GenerateRequest, ctx: CallContext, span?: Span): AsyncGenerator<GenerateResponse> {
  const { backend } = deps;
  const m = backend.model.manifest;
  const started = performance.now();
  const valid = validateGenerate(req, deps.limits, m.generation.max_new_tokens, m.prompt.image_token, deps.promptTokens.specialTokens);
  span?.setAttributes(policyAttributes(valid.policy));
  const visionSchedule = checkPolicy(backend, valid);
  // A prompt that fits even at its upper bound needs no count; past the bound it is counted exactly,
  // on the counting thread (its cost depends on the text: tens of milliseconds for some 4096-character prompts).
  const visual = visionSchedule.outputTokens;
  let sampling = valid.sampling;
  if (deps.promptTokens.atMost(valid.question) + visual + sampling.maxNewTokens > m.language.max_positions) {
    const counted = await deps.promptTokens.count(valid.question, ctx.signal);
    const maxNewTokens = fitMaxTokens(m.language.max_positions, { value: sampling.maxNewTokens, set: req.sampling?.maxTokens !== undefined }, counted, visual);
    sampling = { ...sampling, maxNewTokens };
  }
  // What the answer may use: an unset max_tokens cut to the room the prompt leaves.
  span?.setAttributes({
    [ATTR_GEN_AI_REQUEST_MAX_TOKENS]: sampling.maxNewTokens,
    [ATTR_GEN_AI_REQUEST_TEMPERATURE]: sampling.temperature,
    [ATTR_GEN_AI_REQUEST_TOP_P]: sampling.topP,
    // top_k 0 is "off", which the conventions have no value for: recorded only when set.
    ...(sampling.topK > 0 ? { [ATTR_GEN_AI_REQUEST_TOP_K]: sampling.topK } : {}),
    [ATTR_GEN_AI_REQUEST_SEED]: sampling.seed,
  });

  // Shed now, not after a whole vision encode, and hold the place through the hop: under a burst,
  // requests this service would refuse anyway once their images came back would otherwise each have
  // taken a vision encode (and a client's retries elsewhere, another) from the ones it serves.
  const place = backend.pool.reserve(ctx.caller);
  try {
    yield* answer({ deps, valid, visionSchedule, sampling, ctx, span, place, started });
  } finally {
    // Taken by the job once it is submitted; given back here if anything before that threw.
    place.release();
  }
}

interface Answering {
  readonly deps: GenerateDeps;
  readonly valid: ValidGenerate;
  readonly visionSchedule: VisionSchedule;
  readonly sampling: ValidGenerate['sampling'];
  readonly ctx: CallContext;
  readonly span: Span | undefined;
  /** The pool place held for this request's job through its vision hop. */
  readonly place: PoolPlace;
  /** performance.now() at the call's start. */
  readonly started: number;
}

/** The vision hop, then the generation in the pool, as the stream's messages. */
async function* answer({ deps, valid, visionSchedule, sampling, ctx, span, place, started }: Answering): AsyncGenerator<GenerateResponse> {
  const { backend } = deps;
  const hop: EncodeRequest = { image: valid.image as Buffer, policy: wirePolicy(valid.policy), limits: valid.limits.rowsPerChunk > 0 ? { rowsPerChunk: valid.limits.rowsPerChunk } : undefined };
  const tensor = await deps.vision.encode(hop, expectationOf(backend, visionSchedule), ctx);
  const encodeMs = performance.now() - started;

  // The generation gets a signal of its own: besides the call's cancellation and deadline, it is
  // aborted when this stream is abandoned early (the adapter returns the generator after a failed
  // write), so no worker keeps decoding for a call that has ended.
  const generation = new AbortController();
  const forward = (): void => generation.abort(ctx.signal.reason);
  if (ctx.signal.aborted) forward();
  else ctx.signal.addEventListener('abort', forward, { once: true });
  let settled = false;
  try {
    const deltas = new Channel<{ text: string; tokenIds: number[] }>();
    let pendingIds: number[] = [];
    // Measured here, from the call's start, not in the worker: the wait in this pool's queue and the
    // crossing between threads are part of what a caller waits for its first token.
    let firstTokenMs: number | undefined;
    const run = backend.pool.generate(coreTokens(tensor.tokens), valid.question, sampling, valid.policy, {
      signal: generation.signal,
      deadline: ctx.deadline,
      requestId: ctx.requestId,
      traceIds: traceOf(ctx.metadata),
      caller: ctx.caller,
      place,
      // The rows are this request's alone and read nowhere after this (finalOf uses the counts).
      transferVisual: true,
      // A token that ends inside a multi-byte character yields ''; its id rides with the next text.
      onDelta: (text, id) => {
        firstTokenMs ??= performance.now() - started;
        if (id !== undefined) pendingIds.push(id);
        if (text === '') return;
        deltas.push({ text, tokenIds: pendingIds });
        pendingIds = [];
      },
    });
    run.then(
      () => {
        settled = true;
        // An answer that stops at its first token (the stop token) sends no delta: that token came
        // with the result, and the wait for it still counts from the call's start.
        firstTokenMs ??= performance.now() - started;
        // Ids whose text never completed (an answer cut inside a multi-byte character) still go out,
        // so the deltas' ids are every generated token's.
        if (pendingIds.length > 0) deltas.push({ text: '', tokenIds: pendingIds });
        deltas.close();
      },
      (err: unknown) => ((settled = true), deltas.fail(err)),
    );
    for await (const delta of deltas) yield { part: { $case: 'delta', delta } };
    const result = await run;
    const times = { encode: encodeMs, firstToken: firstTokenMs ?? performance.now() - started, total: performance.now() - started };
    const final = finalOf(backend, valid, tensor, result, times);
    recordGenerateTelemetry(span, result, final, times.firstToken, generateAttributes(backend));
    yield { part: { $case: 'final', final } };
  } finally {
    ctx.signal.removeEventListener('abort', forward);
    if (!settled) generation.abort(new VlmError('CANCELLED', 'the call ended before the answer was complete'));
  }
}

function recordGenerateTelemetry(span: Span | undefined, r: GenerateResult, final: GenerateFinal, firstTokenMs: number, attributes: Attributes): void {
  span?.setAttributes({
    [ATTR_GEN_AI_USAGE_INPUT_TOKENS]: r.promptTokens,
    [ATTR_GEN_AI_USAGE_OUTPUT_TOKENS]: r.tokenIds.length,
    [ATTR_GEN_AI_RESPONSE_FINISH_REASONS]: [r.finishReason],
    [ATTR_VLM_FLOPS]: final.flops['total'] ?? 0,
  });
  recordStage(SpanName.Prefill, r.timingsMs.prefill / 1000);
  recordStage(SpanName.Decode, r.timingsMs.decode / 1000);
  recordStageTokens(SpanName.Prefill, r.promptTokens);
  recordStageTokens(SpanName.Decode, r.tokenIds.length);
  recordGeneration({ timeToFirstTokenSeconds: firstTokenMs / 1000, decodeSteps: r.decodeSteps, decodeSeconds: r.timingsMs.decode / 1000 }, attributes);
}

function finalOf(backend: InferenceBackend, valid: ValidGenerate, tensor: AssembledTensor, r: GenerateResult, hop: { encode: number; firstToken: number; total: number }): GenerateFinal {
  const m = backend.model.manifest;
  const visionFlops = tensor.summary.flops;
  const flops: Record<string, number> = {
    ...flopsToWire({ vision: visionFlops['vision'] ?? 0, projector: visionFlops['projector'] ?? 0, prefill: r.flops.prefill, decode: r.flops.decode }),
    ...flopsToWire({ vision_overhead: visionFlops['overhead'] ?? 0, language_overhead: r.flops.overhead } as Record<string, number>),
  };
  flops['total'] = Object.values(flops).reduce((a, b) => a + b, 0);
  const visionTimings = Object.fromEntries(Object.entries(tensor.summary.timingsMs).map(([k, v]) => [`vision.${k}`, v]));
  const N = tensor.tokens.rows;
  return {
    text: r.text,
    finishReason: r.finishReason === 'stop' ? FinishReason.FINISH_REASON_STOP : FinishReason.FINISH_REASON_LENGTH,
    tokens: {
      visualFull: m.vision.num_patches,
      visualReceived: N,
      text: r.promptTokens - N,
      prompt: r.promptTokens,
      generated: r.tokenIds.length,
      perLayerVisual: [...r.perLayerVisualTokens],
    },
    flops,
    timingsMs: roundMs({ ...visionTimings, encode: hop.encode, prefill: r.timingsMs.prefill, first_token: hop.firstToken, decode: r.timingsMs.decode, total: hop.total }),
    policy: resolvedPolicy(valid.policy, m.vision.num_patches, tensor.header.schedule, r.schedule, r.achievedBudget),
    modelId: m.model_id,
    contentHash: m.content_hash,
    samplingSeed: BigInt(valid.sampling.seed),
  };
}
