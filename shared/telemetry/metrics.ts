/**
 * The services' metrics, for operators and autoscalers (Prometheus names in brackets; this exporter
 * version does not append unit suffixes, the unit is in the `# UNIT` line):
 * - queue depth [vlm_queue_depth] and in-flight requests [vlm_inflight_requests]: the HPAs scale on these;
 * - stage latency in seconds [vlm_stage_duration{vlm_stage}] and tokens per stage [vlm_stage_tokens];
 * - decode throughput [vlm_decode_tokens_per_second], and the gen_ai server conventions for Generate,
 *   seconds [gen_ai_server_request_duration, gen_ai_server_time_to_first_token,
 *   gen_ai_server_time_per_output_token]; Encode's duration in seconds [vlm_encode_duration].
 *   Request durations carry `error.type` (the gRPC code name) on failures.
 * - seconds until the TLS certificates in use expire [vlm_tls_expiry{vlm_tls_set}], for alerts;
 * - every gRPC call's duration by method and status code, refused calls included [rpc_server_call_duration];
 * - calls the bearer-token check decided [vlm_auth_calls_total{vlm_auth_outcome, vlm_auth_credential}]:
 *   a token being rotated out can be removed once its count stops growing.
 * Histograms declare their unit and explicit buckets. Instruments bind to the meter provider that is
 * registered when first used, so call startTelemetry before recording; without it all calls are no-ops.
 */
import { metrics, type Attributes, type Counter, type Histogram, type ObservableGauge, type UpDownCounter } from '@opentelemetry/api';
import { vlmMeter } from './scope';
import {
  ATTR_ERROR_TYPE,
  ATTR_RPC_METHOD,
  ATTR_RPC_RESPONSE_STATUS_CODE,
  ATTR_RPC_SYSTEM_NAME,
  ATTR_VLM_AUTH_CREDENTIAL,
  ATTR_VLM_AUTH_OUTCOME,
  ATTR_VLM_STAGE,
  ATTR_VLM_TLS_SET,
  FIRST_TOKEN_SECONDS_BUCKETS,
  MetricName,
  OUTPUT_TOKEN_SECONDS_BUCKETS,
  RATE_BUCKETS,
  REQUEST_SECONDS_BUCKETS,
  SECONDS_BUCKETS,
  TOKEN_BUCKETS,
} from './names';

interface Instruments {
  queueDepth: ObservableGauge;
  tlsExpiry: ObservableGauge;
  inFlight: UpDownCounter;
  authCalls: Counter;
  stageDuration: Histogram;
  stageTokens: Histogram;
  tokensPerSecond: Histogram;
  requestDuration: Histogram;
  timeToFirstToken: Histogram;
  timePerOutputToken: Histogram;
  encodeDuration: Histogram;
  callDuration: Histogram;
}

let bound: { provider: unknown; instruments: Instruments } | undefined;

function instruments(): Instruments {
  const provider = metrics.getMeterProvider();
  if (bound?.provider === provider) return bound.instruments;
  const meter = vlmMeter();
  const seconds = (name: string, description: string, buckets: readonly number[] = SECONDS_BUCKETS) =>
    meter.createHistogram(name, { unit: 's', description, advice: { explicitBucketBoundaries: [...buckets] } });
  const created: Instruments = {
    queueDepth: meter.createObservableGauge(MetricName.QueueDepth, { unit: '{request}', description: 'Requests admitted and waiting for a worker' }),
    tlsExpiry: meter.createObservableGauge(MetricName.TlsExpiry, { unit: 's', description: 'Seconds until the TLS certificates in use stop verifying (negative once they have)' }),
    inFlight: meter.createUpDownCounter(MetricName.InFlight, { unit: '{request}', description: 'Requests being served (queued or running)' }),
    authCalls: meter.createCounter(MetricName.AuthCalls, { unit: '{call}', description: 'Calls the bearer-token check accepted (by token name) or refused' }),
    stageDuration: seconds(MetricName.StageDuration, 'Duration of one pipeline stage of a request'),
    stageTokens: meter.createHistogram(MetricName.StageTokens, { unit: '{token}', description: 'Tokens leaving a stage (visual tokens after reduction, generated tokens)', advice: { explicitBucketBoundaries: [...TOKEN_BUCKETS] } }),
    tokensPerSecond: meter.createHistogram(MetricName.TokensPerSecond, { unit: '{token}/s', description: 'Decode throughput of one request', advice: { explicitBucketBoundaries: [...RATE_BUCKETS] } }),
    requestDuration: seconds(MetricName.RequestDuration, 'End-to-end duration of a request inside the service', REQUEST_SECONDS_BUCKETS),
    timeToFirstToken: seconds(MetricName.TimeToFirstToken, 'From request start to the first generated token', FIRST_TOKEN_SECONDS_BUCKETS),
    timePerOutputToken: seconds(MetricName.TimePerOutputToken, 'Decode time per generated token after the first', OUTPUT_TOKEN_SECONDS_BUCKETS),
    encodeDuration: seconds(MetricName.EncodeDuration, 'End-to-end duration of an Encode inside the vision service', REQUEST_SECONDS_BUCKETS),
    callDuration: seconds(MetricName.CallDuration, 'Duration of a gRPC call from its headers to its status, refused calls included', REQUEST_SECONDS_BUCKETS),
  };
  bound = { provider, instruments: created };
  return created;
}

/** One stage's wall time; `stage` is its span name (`vlm.prefill`). */
export function recordStage(stage: string, seconds: number, attributes: Attributes = {}): void {
  instruments().stageDuration.record(seconds, { ...attributes, [ATTR_VLM_STAGE]: stage });
}

/** Tokens a stage produced (visual tokens after reduction, prompt tokens at prefill, generated tokens). */
export function recordStageTokens(stage: string, tokens: number, attributes: Attributes = {}): void {
  instruments().stageTokens.record(tokens, { ...attributes, [ATTR_VLM_STAGE]: stage });
}

/** A finished Generate's duration inside the language service. */
export function recordRequest(seconds: number, attributes: Attributes = {}): void {
  instruments().requestDuration.record(seconds, attributes);
}

/** A finished Encode's duration inside the vision service. */
export function recordEncode(seconds: number, attributes: Attributes = {}): void {
  instruments().encodeDuration.record(seconds, attributes);
}

/** A finished generation: time to first token, decode rate and time per output token. */
/**
 * `decodeSteps`: the forward passes `decodeSeconds` covers (the first token comes from prefill's
 * logits, so its time is in time to first token, not here). Both rates divide by it, so throughput is
 * the inverse of time per token; an answer of one token (or none) had no decode step and records neither.
 */
export function recordGeneration(g: { timeToFirstTokenSeconds: number; decodeSteps: number; decodeSeconds: number }, attributes: Attributes = {}): void {
  const i = instruments();
  i.timeToFirstToken.record(g.timeToFirstTokenSeconds, attributes);
  if (g.decodeSteps > 0 && g.decodeSeconds > 0) {
    i.tokensPerSecond.record(g.decodeSteps / g.decodeSeconds, attributes);
    i.timePerOutputToken.record(g.decodeSeconds / g.decodeSteps, attributes);
  }
}

/**
 * A finished gRPC call: `method` its full name (`vlm.v1.LanguageService/Generate`), `code` its status
 * code's name (`OK`, `RESOURCE_EXHAUSTED`), as the RPC conventions' `rpc.method` and `rpc.response.status_code`
 * (and `error.type` when not OK).
 */
export function recordCall(seconds: number, method: string, code: string): void {
  // The RPC conventions ask for error.type on a failed call; for gRPC it is the status code's name.
  const failed = code === 'OK' ? {} : { [ATTR_ERROR_TYPE]: code };
  instruments().callDuration.record(seconds, { [ATTR_RPC_SYSTEM_NAME]: 'grpc', [ATTR_RPC_METHOD]: method, [ATTR_RPC_RESPONSE_STATUS_CODE]: code, ...failed });
}

/** One bearer-token decision; `credential` is the accepted token's name (shared/auth-tokens.ts), never a token. */
export function recordAuth(outcome: 'accepted' | 'missing' | 'invalid', credential?: string): void {
  instruments().authCalls.add(1, { [ATTR_VLM_AUTH_OUTCOME]: outcome, ...(credential === undefined ? {} : { [ATTR_VLM_AUTH_CREDENTIAL]: credential }) });
}

/** Counts a request as in flight until the returned function is called (once; later calls do nothing). */
export function trackInFlight(attributes: Attributes = {}): () => void {
  const counter = instruments().inFlight;
  counter.add(1, attributes);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    counter.add(-1, attributes);
  };
}

/**
 * Starts the in-flight series at 0: an autoscaler reading vlm_inflight_requests must find it on a pod
 * that has served nothing yet (a new replica, or all of them after a rollout), or it refuses to scale.
 */
export function publishInFlightAtZero(): void {
  instruments().inFlight.add(0);
}

/** Reports `depth()` as the queue depth at every collection; returns the unregister function. */
export function observeQueueDepth(depth: () => number, attributes: Attributes = {}): () => void {
  const gauge = instruments().queueDepth;
  const callback = (result: { observe(value: number, attributes?: Attributes): void }) => result.observe(depth(), attributes);
  gauge.addCallback(callback);
  return () => gauge.removeCallback(callback);
}

/**
 * Reports the seconds left until `expiresAt()` (ms since the epoch; null reports nothing) at every
 * collection; returns the unregister function.
 */
export function observeTlsExpiry(expiresAt: () => number | null, set: string): () => void {
  const gauge = instruments().tlsExpiry;
  const callback = (result: { observe(value: number, attributes?: Attributes): void }) => {
    const at = expiresAt();
    if (at !== null) result.observe(Math.round((at - Date.now()) / 1000), { [ATTR_VLM_TLS_SET]: set });
  };
  gauge.addCallback(callback);
  return () => gauge.removeCallback(callback);
}
