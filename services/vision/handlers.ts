/**
 * VisionService handlers: validate, encode with the core, stream header -> chunks -> summary.
 */
import { rowsIn } from '../../shared/tensor/float-rows';
import type { FloatDType } from '../../shared/tensor/dtype';
import { VlmError } from '../../shared/errors';
import { EXPECTED_MODEL_KEY } from '../common/call-metadata';
import { traceOf } from '../common/call-trace';
import type { EncodeResult } from '../../shared/engine';
import type { EncodeResponse, VisionServiceServer } from '../../gen/vlm/v1/vision_service';
import { serverStream, unary, type AdapterDeps } from '../common/server-stream';
import { chunkBytes, tensorMessages, type WireTokens } from '../common/tensor-stream';
import { modelInfo, placementOf, type AdvertisedLimits } from '../common/model-info';
import { validateEncode, type RequestLimitsConfig } from '../common/validate';
import { flopsToWire, roundMs, visionScheduleToWire } from '../common/wire';
import type { InferenceBackend } from '../common/inference-backend';
import type { Span } from '@opentelemetry/api';
import { ATTR_VLM_DEVICE, ATTR_VLM_DTYPE, ATTR_VLM_MODEL_ID, ATTR_VLM_PROVIDER, ATTR_VLM_TOKENS_OUT, SpanName } from '../../shared/telemetry/names';
import { tracedSend, tracedStream } from '../../shared/telemetry/traced-stream';
import { policyAttributes } from '../../shared/telemetry/policy-attributes';
import { recordEncode, recordStage, recordStageTokens } from '../../shared/telemetry/metrics';

export interface VisionHandlerDeps {
  readonly backend: InferenceBackend;
  readonly limits: RequestLimitsConfig & AdvertisedLimits;
  /** Configured rows per chunk (0: about 1 MiB); a request may ask for fewer or more. */
  readonly rowsPerChunk: number;
  readonly adapter: AdapterDeps;
}

/** The projected rows in the bundle's io dtype (float16 halves the bytes on the hop); the projector already gives them so. */
function wireTokens(result: EncodeResult, ioDtype: FloatDType): WireTokens {
  const { dims: [rows, width], ...typed } = rowsIn(result.embeds, ioDtype);
  return { rows, width, ...typed, origin: result.origin, size: result.size };
}

/** Stage latencies and the visual tokens leaving the projector, as metrics and on the request span. */
function recordEncodeTelemetry(span: Span, result: EncodeResult): void {
  recordStage(SpanName.Preprocess, result.timingsMs.preprocess / 1000);
  recordStage(SpanName.VisionEmbed, result.timingsMs.vision / 1000);
  recordStage(SpanName.Project, result.timingsMs.project / 1000);
  recordStageTokens(SpanName.Project, result.embeds.dims[0]);
  span.setAttribute(ATTR_VLM_TOKENS_OUT, result.embeds.dims[0]);
}

export function visionHandlers(deps: VisionHandlerDeps): VisionServiceServer {
  const { backend } = deps;
  const manifest = backend.model.manifest;
  return {
    encode: serverStream(tracedStream({ [ATTR_VLM_MODEL_ID]: manifest.model_id, [ATTR_VLM_PROVIDER]: backend.provider, [ATTR_VLM_DEVICE]: backend.device }, recordEncode, async function* (req, ctx, span) {
      const valid = validateEncode(req, deps.limits);
      span.setAttributes(policyAttributes(valid.policy));
      const expected = ctx.metadata.get(EXPECTED_MODEL_KEY)[0];
      if (typeof expected === 'string' && expected !== manifest.content_hash) {
        // FAILED_PRECONDITION on this internal answer, which grpc-js does not retry; the hop reads the
        // reason and tries another replica itself.
        throw new VlmError('FAILED_PRECONDITION', `this vision service runs ${manifest.model_id} (${manifest.content_hash}), not ${expected}`, { reason: 'MODEL_MISMATCH' });
      }
      const started = performance.now();
      const result = await backend.pool.encode(valid.image, valid.policy, { signal: ctx.signal, deadline: ctx.deadline, requestId: ctx.requestId, traceIds: traceOf(ctx.metadata), caller: ctx.caller });
      const waitedMs = performance.now() - started - Object.values(result.timingsMs).reduce((a, b) => a + b, 0);
      const header = {
        modelId: manifest.model_id,
        contentHash: manifest.content_hash,
        fullTokenCount: manifest.vision.num_patches,
        schedule: visionScheduleToWire(result.schedule),
      };
      const summary = { timingsMs: roundMs(result.timingsMs), flops: flopsToWire(result.flops), queueMs: Math.max(0, Math.round(waitedMs * 1000) / 1000), tensorBytes: 0n };
      recordEncodeTelemetry(span, result);
      const messages = (): Iterable<EncodeResponse> => tensorMessages(wireTokens(result, manifest.io_dtype), header, valid.limits.rowsPerChunk || deps.rowsPerChunk, summary);
      yield* tracedSend(messages, { [ATTR_VLM_DTYPE]: manifest.io_dtype }, chunkBytes);
    }), deps.adapter, (r) => r.part?.$case === 'summary'),

    getModelInfo: unary(async () => ({ model: modelInfo(backend.model, placementOf(backend, deps.limits)) }), deps.adapter),
  };
}
