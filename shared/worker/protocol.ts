/**
 * Messages between an InferencePool and its workers. Only plain data crosses: typed arrays (moved,
 * not copied, where the sender is done with them), JSON-shaped policies and results, and errors as
 * VlmError.toJSON().
 */
import type { VlmErrorJSON } from '../errors';
import type { LogLevel } from '../log';
import type { LimitsConfig, ModelConfig, RuntimeConfig } from '../config';
import type { ReductionPolicy } from '../methods/policy';
import type { EncodeResult, VisualTokens } from '../engine/encode-image';
import type { GenerateResult } from '../engine/generate';
import type { SamplingParams } from '../engine/sampling';
import type { Manifest } from '../bundle/manifest';
import type { ModelSide } from '../bundle/loader';
import type { SpanTiming } from '../telemetry/span-recorder';

export interface WorkerInit {
  readonly model: ModelConfig;
  readonly runtime: RuntimeConfig;
  readonly limits: LimitsConfig;
  readonly logLevel: LogLevel;
  readonly index: number;
  /** Runs a worst-case request through these parts before reporting ready (every worker, not just one). */
  readonly warmUp?: WarmUp;
  /** The side the pool's service runs (loader.ts ModelSide); absent: both. */
  readonly side?: ModelSide;
}

export type WarmUp = 'vision' | 'language' | 'both';

export interface AskResult {
  readonly encode: EncodeResult;
  readonly generate: GenerateResult;
}

export type Job =
  | { readonly kind: 'encode'; readonly image: Uint8Array; readonly policy: ReductionPolicy }
  | { readonly kind: 'generate'; readonly visual: VisualTokens; readonly question: string; readonly sampling: SamplingParams; readonly policy: ReductionPolicy }
  | { readonly kind: 'ask'; readonly image: Uint8Array; readonly question: string; readonly sampling: SamplingParams; readonly policy: ReductionPolicy };

export interface JobResultOf {
  encode: EncodeResult;
  generate: GenerateResult;
  ask: AskResult;
}

/** A job's answer, tagged with its kind so the pool can check it against the job it sent. */
export type JobResult = { [K in Job['kind']]: { readonly kind: K; readonly value: JobResultOf[K] } }[Job['kind']];

export type ErrorData = Readonly<VlmErrorJSON>;

export type ToWorker =
  // record: trace the job's stages as SpanTimings (only while the main thread exports spans);
  // content: those spans may carry the answer's token ids.
  | { readonly type: 'run'; readonly id: number; readonly job: Job; readonly deadline?: number; readonly requestId?: string; readonly record?: boolean; readonly content?: boolean }
  | { readonly type: 'abort'; readonly id: number; readonly reason: ErrorData };

export type FromWorker =
  | { readonly type: 'ready'; readonly manifest: Manifest; readonly provider: string | undefined }
  | { readonly type: 'init-error'; readonly error: ErrorData }
  | { readonly type: 'delta'; readonly id: number; readonly delta: string; readonly tokenId: number | undefined }
  // tokensGenerated: the tokens the job generated before it ended; for a job that was stopped, where it
  // stopped (logged as decode_steps; GenerateResult.decodeSteps counts forward passes instead).
  | { readonly type: 'result'; readonly id: number; readonly result: JobResult; readonly spans?: SpanTiming[]; readonly tokensGenerated: number }
  | { readonly type: 'error'; readonly id: number; readonly error: ErrorData; readonly spans?: SpanTiming[]; readonly tokensGenerated: number };
