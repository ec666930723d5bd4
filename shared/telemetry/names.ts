/**
 * The names of our spans, attributes and metrics: one place, so the services, the trace report and
 * docs/telemetry.md's span table agree. Span names are low-cardinality (no ids, budgets or layer numbers in them);
 * what varies goes into attributes. Where an OpenTelemetry semantic convention fits (`rpc.*`,
 * `gen_ai.*`, `error.type`) we use its key; the rest lives under `vlm.*`.
 */

/** Span names, in pipeline order. docs/telemetry.md's span table is checked against SPAN_DOCS below (test/trace-docs.test.ts). */
export const SpanName = {
  /** The whole request inside one service (Generate on language, Encode on vision). */
  Request: 'vlm.request',
  /** Image bytes decoded, resized/cropped and normalised into pixel_values. */
  Preprocess: 'vlm.preprocess',
  /** The vision tower: embed graph, encoder layers with their reductions, up to the feature layer. */
  VisionEmbed: 'vlm.vision.embed',
  /** One encoder layer (attn half, optional scores graph, reduction, mlp half). */
  VisionLayer: 'vlm.vision.layer',
  /** One reduction step, vision side (inside a layer) or language side (inside prefill). */
  Reduce: 'vlm.reduce',
  /** The projector: vision features into the language model's embedding space. */
  Project: 'vlm.project',
  /** Vision side: writing the header, tensor chunks and summary of the Encode stream. */
  StreamSend: 'vlm.stream.send',
  /** Language side: reading the Encode stream until the whole visual tensor is assembled. */
  StreamReceive: 'vlm.stream.receive',
  /** Prompt assembly and embedding, then one pass over all decoder layers, with reductions. */
  Prefill: 'vlm.prefill',
  /** One decoder layer during prefill. */
  PrefillLayer: 'vlm.prefill.layer',
  /** All decode steps of a request; one event per generated token. */
  Decode: 'vlm.decode',
  /** Time a request waits for a worker (admission to start of work). */
  Queue: 'vlm.queue',
} as const;
export type SpanName = (typeof SpanName)[keyof typeof SpanName];

/** The per-token event on the decode span. */
export const EVENT_TOKEN = 'vlm.token';

// --- attributes: our own -------------------------------------------------------------------------

export const ATTR_VLM_MODEL_ID = 'vlm.model.id';
/** The call's `x-request-id` (the caller's, or one the service assigned): the same id the logs carry. */
export const ATTR_VLM_REQUEST_ID = 'vlm.request_id';
/** The request's policy name as the client gave it (e.g. `ficoco-vl`, `fastv`, `none`). */
export const ATTR_VLM_REDUCTION_METHOD = 'vlm.reduction.method';
export const ATTR_VLM_REDUCTION_VISION_METHOD = 'vlm.reduction.vision_method';
export const ATTR_VLM_REDUCTION_LANGUAGE_METHOD = 'vlm.reduction.language_method';
/** Average visual tokens per decoder layer requested (the one budget unit of every method). */
export const ATTR_VLM_REDUCTION_BUDGET = 'vlm.reduction.budget';
/** The average the resolved schedule actually achieves. */
export const ATTR_VLM_REDUCTION_ACHIEVED = 'vlm.reduction.achieved';
export const ATTR_VLM_LAYER = 'vlm.layer';
/** Tokens entering and leaving a stage (visual tokens for vision stages, sequence tokens for prefill). */
export const ATTR_VLM_TOKENS_IN = 'vlm.tokens.in';
export const ATTR_VLM_TOKENS_OUT = 'vlm.tokens.out';
/** Analytic FLOPs of the stage (2 x multiply-accumulates, method overhead included). */
export const ATTR_VLM_FLOPS = 'vlm.flops';
/** ONNX Runtime execution provider actually used (`cpu`, `cuda`, `webgpu`) and the device (`cuda:0`). */
export const ATTR_VLM_PROVIDER = 'vlm.provider';
export const ATTR_VLM_DEVICE = 'vlm.device';
/** Payload bytes of a transfer (tensor bytes of the Encode stream) or of the encoded image (preprocess). */
export const ATTR_VLM_BYTES = 'vlm.bytes';
export const ATTR_VLM_CHUNKS = 'vlm.chunks';
export const ATTR_VLM_DTYPE = 'vlm.dtype';
/** Image size before preprocessing, `WxH`. */
export const ATTR_VLM_IMAGE_SIZE = 'vlm.image.size';
export const ATTR_VLM_TOKEN_INDEX = 'vlm.token.index';
export const ATTR_VLM_TOKEN_ID = 'vlm.token.id';
export const ATTR_VLM_STAGE = 'vlm.stage';
export const ATTR_VLM_FINISH_REASON = 'vlm.finish_reason';
/** Which TLS file set: `server` (the service's own) or `vision-client` (language's hop to vision). */
export const ATTR_VLM_TLS_SET = 'vlm.tls.set';
/** The name of the bearer token a call was accepted with (never the token; shared/auth-tokens.ts). */
export const ATTR_VLM_AUTH_CREDENTIAL = 'vlm.auth.credential';
/** accepted, missing (no bearer token sent) or invalid (not one the service accepts). */
export const ATTR_VLM_AUTH_OUTCOME = 'vlm.auth.outcome';

// --- attributes: semantic conventions (kept as literals; the incubating package is unstable) -----

export const ATTR_ERROR_TYPE = 'error.type';
export const ATTR_RPC_METHOD = 'rpc.method';
export const ATTR_RPC_GRPC_STATUS_CODE = 'rpc.grpc.status_code';
/** What instrumentation-grpc records on a failed server span: the error's name (our status errors carry the code's name) and message. */
export const ATTR_GRPC_ERROR_NAME = 'grpc.error_name';
export const ATTR_GRPC_ERROR_MESSAGE = 'grpc.error_message';
/** The RPC metrics' newer names (rpc.server.call.duration): the system and the status code by name. */
export const ATTR_RPC_SYSTEM_NAME = 'rpc.system.name';
export const ATTR_RPC_RESPONSE_STATUS_CODE = 'rpc.response.status_code';
export const ATTR_GEN_AI_PROVIDER_NAME = 'gen_ai.provider.name';
export const ATTR_GEN_AI_OPERATION_NAME = 'gen_ai.operation.name';
export const ATTR_GEN_AI_REQUEST_TEMPERATURE = 'gen_ai.request.temperature';
export const ATTR_GEN_AI_REQUEST_TOP_P = 'gen_ai.request.top_p';
export const ATTR_GEN_AI_REQUEST_TOP_K = 'gen_ai.request.top_k';
export const ATTR_GEN_AI_REQUEST_SEED = 'gen_ai.request.seed';
export const ATTR_GEN_AI_REQUEST_MODEL = 'gen_ai.request.model';
export const ATTR_GEN_AI_REQUEST_MAX_TOKENS = 'gen_ai.request.max_tokens';
export const ATTR_GEN_AI_USAGE_INPUT_TOKENS = 'gen_ai.usage.input_tokens';
export const ATTR_GEN_AI_USAGE_OUTPUT_TOKENS = 'gen_ai.usage.output_tokens';
export const ATTR_GEN_AI_RESPONSE_FINISH_REASONS = 'gen_ai.response.finish_reasons';
/** gen_ai.operation.name values we emit. */
export const GEN_AI_OPERATION_CHAT = 'chat';
/**
 * gen_ai.provider.name: the conventions' well-known values name hosted APIs; a self-hosted model is
 * served by this system, so it names itself, as other self-hosted servers do.
 */
export const GEN_AI_PROVIDER = 'vlm-token-reduction';

// --- service names and metrics -------------------------------------------------------------------

export const SERVICE_VISION = 'vlm-vision';
export const SERVICE_LANGUAGE = 'vlm-language';

export const MetricName = {
  QueueDepth: 'vlm.queue.depth',
  /** Prometheus: vlm_inflight_requests (the name the HPAs and prometheus-adapter rules in k8s/ use). */
  InFlight: 'vlm.inflight_requests',
  StageDuration: 'vlm.stage.duration',
  StageTokens: 'vlm.stage.tokens',
  TokensPerSecond: 'vlm.decode.tokens_per_second',
  /** gen_ai server conventions (Generate only): end-to-end, time to first token, time per output token. */
  RequestDuration: 'gen_ai.server.request.duration',
  TimeToFirstToken: 'gen_ai.server.time_to_first_token',
  TimePerOutputToken: 'gen_ai.server.time_per_output_token',
  /** The vision service's Encode end to end: not a GenAI operation, so not under gen_ai.*. */
  EncodeDuration: 'vlm.encode.duration',
  /** Seconds until a TLS file set in use stops verifying (negative once it has): for expiry alerts. */
  TlsExpiry: 'vlm.tls.expiry',
  /** Calls the bearer-token check decided, by outcome and accepted token name: shows when a rotated-out token is no longer used. */
  AuthCalls: 'vlm.auth.calls',
  /**
   * Every call on the main port, refused ones included (the in-flight cap, a drain, a missing token),
   * which no request duration sees; a message past the receive limit, refused by grpc-js beneath the
   * interceptors, shows as CANCELLED. RPC conventions' name and attributes.
   */
  CallDuration: 'rpc.server.call.duration',
} as const;

/** Stage seconds: from half a millisecond (one small layer on a GPU) to five minutes (a long CPU generation). */
export const SECONDS_BUCKETS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
];
/**
 * Request seconds (gen_ai.server.request.duration, Encode): the GenAI conventions' advice, doubling
 * from 10 ms, with 5 ms below it and doubled on to 5.5 minutes, past the longest default deadline.
 */
export const REQUEST_SECONDS_BUCKETS: readonly number[] = [
  0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84, 327.68,
];
/** Time to first token: the conventions' advice, on to a minute. */
export const FIRST_TOKEN_SECONDS_BUCKETS: readonly number[] = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60,
];
/** Time per output token: the conventions' advice (10 ms to 2.5 s), with small models' milliseconds below it. */
export const OUTPUT_TOKEN_SECONDS_BUCKETS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5,
];
/** Token counts: powers of two up to a 7B model's context, plus 576 (LLaVA-1.5's 24x24 patches). */
export const TOKEN_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 576, 1024, 2048, 4096, 8192];
/** Decode throughput per request, tokens per second. */
export const RATE_BUCKETS: readonly number[] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/** What each span stands for and which attributes it carries: docs/telemetry.md's span table must say the same (test/trace-docs.test.ts). */
export const SPAN_DOCS: readonly { name: SpanName; service: string; what: string; attributes: readonly string[] }[] = [
  { name: SpanName.Request, service: 'both', what: 'one Generate (language) or Encode (vision) inside the service', attributes: [ATTR_VLM_MODEL_ID, ATTR_VLM_REQUEST_ID, ATTR_VLM_REDUCTION_METHOD, ATTR_VLM_REDUCTION_BUDGET, ATTR_GEN_AI_PROVIDER_NAME, ATTR_GEN_AI_OPERATION_NAME, ATTR_GEN_AI_REQUEST_MODEL, ATTR_GEN_AI_REQUEST_MAX_TOKENS, ATTR_GEN_AI_REQUEST_TEMPERATURE, ATTR_GEN_AI_REQUEST_TOP_P, ATTR_GEN_AI_REQUEST_SEED, ATTR_GEN_AI_USAGE_INPUT_TOKENS, ATTR_GEN_AI_USAGE_OUTPUT_TOKENS, ATTR_VLM_PROVIDER, ATTR_VLM_DEVICE] },
  { name: SpanName.Queue, service: 'both', what: 'waiting for a free worker (a job that leaves the queue unserved ends it with error.type)', attributes: [] },
  { name: SpanName.Preprocess, service: 'vlm-vision', what: 'image decode, resize/crop, normalise', attributes: [ATTR_VLM_MODEL_ID, ATTR_VLM_IMAGE_SIZE, ATTR_VLM_BYTES] },
  { name: SpanName.VisionEmbed, service: 'vlm-vision', what: 'patch embedding and every encoder layer up to the feature layer', attributes: [ATTR_VLM_TOKENS_IN, ATTR_VLM_TOKENS_OUT, ATTR_VLM_FLOPS] },
  { name: SpanName.VisionLayer, service: 'vlm-vision', what: 'one encoder layer (attn, scores if a method reads them, mlp)', attributes: [ATTR_VLM_LAYER, ATTR_VLM_TOKENS_IN, ATTR_VLM_TOKENS_OUT, ATTR_VLM_FLOPS] },
  { name: SpanName.Reduce, service: 'both', what: 'one token-reduction step (inside an encoder layer or a prefill layer)', attributes: [ATTR_VLM_REDUCTION_METHOD, ATTR_VLM_LAYER, ATTR_VLM_TOKENS_IN, ATTR_VLM_TOKENS_OUT] },
  { name: SpanName.Project, service: 'vlm-vision', what: 'projector into the language embedding space', attributes: [ATTR_VLM_TOKENS_IN, ATTR_VLM_FLOPS] },
  { name: SpanName.StreamSend, service: 'vlm-vision', what: 'writing header, tensor chunks and summary', attributes: [ATTR_VLM_BYTES, ATTR_VLM_CHUNKS, ATTR_VLM_DTYPE] },
  { name: SpanName.StreamReceive, service: 'vlm-language', what: 'reading the Encode stream until the tensor is whole', attributes: [ATTR_VLM_BYTES, ATTR_VLM_CHUNKS, ATTR_VLM_TOKENS_IN] },
  { name: SpanName.Prefill, service: 'vlm-language', what: 'prompt embedding and all decoder layers with reductions', attributes: [ATTR_VLM_TOKENS_IN, ATTR_VLM_TOKENS_OUT, ATTR_VLM_FLOPS, ATTR_VLM_REDUCTION_ACHIEVED] },
  { name: SpanName.PrefillLayer, service: 'vlm-language', what: 'one decoder layer during prefill', attributes: [ATTR_VLM_LAYER, ATTR_VLM_TOKENS_IN, ATTR_VLM_TOKENS_OUT] },
  { name: SpanName.Decode, service: 'vlm-language', what: `every decode step; one \`${EVENT_TOKEN}\` event per token`, attributes: [ATTR_VLM_TOKENS_OUT, ATTR_VLM_FLOPS, ATTR_VLM_FINISH_REASON] },
];
