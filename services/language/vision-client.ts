/**
 * The language service's side of the vision hop: one balanced channel to every vision replica, and
 * `encode()` which carries the caller's deadline and cancellation across, reassembles the tensor with
 * TensorAssembler (checked against this service's own model) and relays vision's errors as VlmErrors
 * with their code, message and field violations intact.
 */
import { credentials as grpcCredentials, Metadata, status as GrpcCode, type ChannelCredentials, type ChannelOptions } from '@grpc/grpc-js';
import { VlmError } from '../../shared/errors';
import type { Logger } from '../../shared/log';
import { VisionServiceClient, type EncodeRequest, type EncodeResponse } from '../../gen/vlm/v1/vision_service';
import { callMetadata } from '../common/call-metadata';
import { traceOf } from '../common/call-trace';
import { decodeStatusDetails, fromServiceError } from '../common/status';
import { serverNameOptions } from '../common/tls';
import { chunkBytes, modelMismatch, TensorAssembler, type AssembledTensor, type Expectation } from '../common/tensor-stream';
import { context } from '@opentelemetry/api';
import { ATTR_VLM_BYTES, ATTR_VLM_CHUNKS, ATTR_VLM_TOKENS_IN, SpanName } from '../../shared/telemetry/names';
import { openSpan, type OpenSpan } from '../../shared/telemetry/with-span';
import type { VisionTarget } from './vision-target';

/** grpc-js's status text when a received message is over the channel's limit: "Received message larger than max (N vs M)". */
const RECEIVE_LIMIT = /^Received message larger than max/;

export interface VisionClientOptions {
  readonly target: VisionTarget;
  /** The bearer token for each call, asked per call so a re-read token file takes effect at once; null: none. */
  readonly authToken: (() => string) | null;
  /** Plaintext when absent; credentials from reloadingChannelCredentials bring their server name along. */
  readonly credentials?: ChannelCredentials;
  /**
   * The largest Encode request (image, policy, envelope): the service's receive limit
   * (message-limits.ts). The channel's per-call retry buffer is set to it, so grpc-js can retry any
   * request the service accepts (its 1 MiB default would never retry a larger image).
   */
  readonly maxRequestBytes: number;
  /** Where a failed hop's details go (the vision address and gRPC's reason), which callers are not sent. */
  readonly log?: Logger;
}

export interface HopContext {
  readonly signal: AbortSignal;
  /** Epoch ms: the caller's deadline, passed on unchanged. */
  readonly deadline: number;
  readonly requestId: string;
  /** The language service's caller ('' anonymous), passed on so vision's queue serves callers in turn too. */
  readonly caller?: string;
  /** The caller's call metadata: the hop's log lines carry the trace ids its handler recorded there. */
  readonly metadata?: Metadata;
}

/**
 * Round-robin over every resolved address, and a transparent retry of Encode on UNAVAILABLE (a
 * replica gone before it answered): Encode has no side effects, and grpc-js only retries before the
 * first response message, so a half-received tensor is never spliced from two replicas.
 */
export const VISION_SERVICE_CONFIG = JSON.stringify({
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [
    {
      name: [{ service: 'vlm.v1.VisionService' }],
      retryPolicy: {
        maxAttempts: 3,
        initialBackoff: '0.05s',
        maxBackoff: '0.5s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
});

/**
 * Whole-call repeats of an Encode that failed UNAVAILABLE after data arrived (grpc-js retries before
 * that) or met a replica of another model or version (MODEL_MISMATCH).
 */
export const HOP_RETRIES = 2;
const RETRY_BACKOFF_MS = 25;
/** The retry hint passed to the caller when no vision replica answered and vision sent none. */
const VISION_UNAVAILABLE_RETRY_MS = 1_000;

/**
 * The hop's HTTP/2 receive window, per stream and for the connection. Node's default is 64 KiB: a
 * LLaVA-1.5 tensor (576 x 4096 float16, 4.5 MiB) then crosses in about 72 window round trips, paced
 * by WINDOW_UPDATEs instead of the network: 20 ms median on loopback, against 6-13 ms with this
 * window (4.5 MiB in 1 MiB messages, one process), and each round trip costs a network RTT more when
 * vision and language run on different nodes. 8 MiB lets a whole tensor be in flight; this side holds
 * the whole tensor anyway before it decodes a token.
 */
export const HOP_RECEIVE_WINDOW_BYTES = 8 << 20;

/**
 * How long the hop channel waits, at most, between attempts to reconnect to a vision address that
 * refused it. grpc-js's default backs off to 120 s: after an outage of a minute and a half, a vision
 * restarted on the same address stayed unused for over 36 s, every request meanwhile failing
 * VISION_UNAVAILABLE. A connection attempt every 2 s to an address that is down costs nothing.
 */
export const HOP_MAX_RECONNECT_BACKOFF_MS = 2000;

/** The hop channel's options (grpc-js), from the client's options. */
export function visionChannelOptions(options: VisionClientOptions): ChannelOptions {
  return {
    'grpc.service_config': VISION_SERVICE_CONFIG,
    'grpc.initial_reconnect_backoff_ms': 500,
    'grpc.max_reconnect_backoff_ms': HOP_MAX_RECONNECT_BACKOFF_MS,
    // Chunks are at most 3 MiB (tensor-stream.ts); the default 4 MiB receive limit holds them.
    'grpc.max_receive_message_length': 4 << 20,
    'grpc-node.flow_control_window': HOP_RECEIVE_WINDOW_BYTES,
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.enable_retries': 1,
    // grpc-js keeps a request for a retry only within both limits, until its first response: the
    // call's (any request the service accepts) and the channel's total over every hop in flight,
    // 16 MiB by default, which one 17 MiB image or sixteen 1 MiB hops waiting on vision would use
    // up, so a vision drain or rollout would fail them instead of retrying another replica. The
    // requests are held in memory anyway; this only lets the retry keep them.
    'grpc.per_rpc_retry_buffer_size': options.maxRequestBytes,
    'grpc.retry_buffer_size': Math.max(256 << 20, 8 * options.maxRequestBytes),
    ...serverNameOptions(options.credentials),
  };
}

export class VisionClient {
  private readonly client: VisionServiceClient;

  constructor(private readonly options: VisionClientOptions) {
    this.client = new VisionServiceClient(options.target.channel, options.credentials ?? grpcCredentials.createInsecure(), visionChannelOptions(options));
  }

  private metadata(ctx: HopContext, expectedModel: string): Metadata {
    return callMetadata({ authToken: this.options.authToken?.() ?? null, requestId: ctx.requestId, expectedModel, onBehalfOf: ctx.caller });
  }

  /**
   * Streams one Encode and returns the checked tensor; cancelling `ctx.signal` cancels the call.
   *
   * A replica that dies after it started answering (SIGKILL, node loss) fails the call with
   * UNAVAILABLE, which grpc-js does not retry once a message has arrived. Encode has no side effects
   * and the caller has received nothing yet (text streams only after the tensor is whole), so the
   * whole call is repeated, up to HOP_RETRIES times, while the deadline allows; the channel's round robin
   * sends it to another address. The partial tensor is discarded: a stream is never spliced.
   * A call that failed before any message was already retried by grpc-js (VISION_SERVICE_CONFIG);
   * repeating it here too would multiply the attempts (3 x 3) against a replica set that is down.
   * A replica of another model or version (MODEL_MISMATCH: its header, or UNIMPLEMENTED) is repeated
   * the same way; when every try meets one, the caller gets UNAVAILABLE MODEL_MISMATCH and retries
   * later, by when the rollout has moved on.
   */
  async encode(request: EncodeRequest, expect: Expectation, ctx: HopContext): Promise<AssembledTensor> {
    for (let attempt = 0; ; attempt++) {
      const progress: { received: boolean; endedByVision?: boolean } = { received: false };
      const started = Date.now();
      try {
        return await this.encodeOnce(request, expect, ctx, progress);
      } catch (err) {
        // A replica of another version (MODEL_MISMATCH) is retried too: in a rolling update the next
        // address the round robin picks may run this service's model.
        const mismatch = err instanceof VlmError && err.reason === 'MODEL_MISMATCH';
        if (mismatch) {
          const e = err as VlmError;
          this.options.log?.warn('vision replica of another model or version', { requestId: ctx.requestId, ...traceOf(ctx.metadata), attempt, target: this.options.target.configured, error: e.message, detail: e.cause instanceof Error ? e.cause.message : undefined });
        }
        const retryable = mismatch || (err instanceof VlmError && err.code === 'UNAVAILABLE' && (progress.received || progress.endedByVision));
        // Only while another try as long as this one still fits: otherwise the caller would get
        // DEADLINE_EXCEEDED for what was a retryable failure.
        const backoff = RETRY_BACKOFF_MS * (attempt + 1);
        const retry = retryable && attempt < HOP_RETRIES && !ctx.signal.aborted && Date.now() + backoff + (Date.now() - started) < ctx.deadline;
        if (!retry) throw err;
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  private encodeOnce(request: EncodeRequest, expect: Expectation, ctx: HopContext, progress: { received: boolean; endedByVision?: boolean }): Promise<AssembledTensor> {
    return new Promise((resolve, reject) => {
      if (ctx.signal.aborted) return reject(ctx.signal.reason);
      const assembler = new TensorAssembler(expect);
      // The grpc instrumentation's client span takes the active context here; stream events fire in
      // grpc-js's own context, so the receive span's parent is captured now.
      const parent = context.active();
      let receive: OpenSpan | undefined;
      let chunks = 0;
      let bytes = 0;
      const call = this.client.encode(request, this.metadata(ctx, expect.contentHash), { deadline: ctx.deadline });
      let failure: unknown = null;
      const onAbort = (): void => {
        failure ??= ctx.signal.reason;
        call.cancel();
      };
      ctx.signal.addEventListener('abort', onAbort, { once: true });

      call.on('data', (message: EncodeResponse) => {
        progress.received = true;
        // vlm.stream.receive: from the header until the tensor is whole.
        receive ??= openSpan(SpanName.StreamReceive, {}, parent);
        const n = chunkBytes(message);
        if (n !== undefined) {
          chunks++;
          bytes += n;
        }
        if (failure !== null) return;
        try {
          assembler.accept(message);
        } catch (err) {
          failure = err;
          call.cancel();
        }
      });
      call.on('error', () => undefined); // the outcome is decided on 'status', which always comes last
      call.on('status', (status: { code: GrpcCode; details: string; metadata: Metadata }) => {
        ctx.signal.removeEventListener('abort', onAbort);
        receive?.span.setAttributes({ [ATTR_VLM_CHUNKS]: chunks, [ATTR_VLM_BYTES]: bytes });
        if (failure !== null) {
          receive?.end(failure);
          return reject(failure);
        }
        if (status.code !== GrpcCode.OK) {
          // CANCELLED that this side did not cause (it sets `failure` first) is vision's: a replica
          // whose drain grace ran out force-closes its calls. grpc-js retries only UNAVAILABLE.
          progress.endedByVision = status.code === GrpcCode.CANCELLED;
          const err = this.relay(status, { requestId: ctx.requestId, ...traceOf(ctx.metadata) });
          receive?.end(err);
          return reject(err);
        }
        try {
          const tensor = assembler.finish();
          receive?.span.setAttribute(ATTR_VLM_TOKENS_IN, tensor.tokens.rows);
          receive?.end();
          resolve(tensor);
        } catch (err) {
          receive?.end(err);
          reject(err);
        }
      });
    });
  }

  /**
   * What vision said, as this service's error: same code and violations, with the hop named. `ids`:
   * the request and trace ids this service's log lines about the call carry.
   */
  private relay(status: { code: GrpcCode; details: string; metadata: Metadata }, ids: Readonly<Record<string, string | undefined>>): VlmError {
    const sent = decodeStatusDetails(status.metadata);
    if (status.code === GrpcCode.CANCELLED) {
      // Only ever vision's doing here (see encodeOnce): the caller did not cancel, so it must not be
      // told it did; like any lost replica this is retried, then the caller backs off.
      this.options.log?.warn('vision ended the call (a replica force-closing its calls at shutdown?)', { ...ids, target: this.options.target.configured, details: status.details });
      return new VlmError('UNAVAILABLE', 'the vision service ended the call before the image was encoded; retry later', { cause: status, reason: 'VISION_UNAVAILABLE', retryDelayMs: VISION_UNAVAILABLE_RETRY_MS });
    }
    if (status.code === GrpcCode.UNAVAILABLE) {
      // The vision address and gRPC's reason (internal names and IPs) go to this service's log, not
      // to the caller, who can act only on "unavailable, retry later".
      this.options.log?.warn('no vision replica answered', { ...ids, target: this.options.target.configured, details: status.details });
      // By now grpc-js has tried other replicas: the caller backs off. A draining vision's "retry now,
      // elsewhere" (0) was meant for this service, which has done so.
      return new VlmError('UNAVAILABLE', 'the vision service is unavailable (no replica answered); retry later', { cause: status, reason: 'VISION_UNAVAILABLE', retryDelayMs: Math.max(sent.retryDelayMs ?? 0, VISION_UNAVAILABLE_RETRY_MS) });
    }
    if (status.code === GrpcCode.DEADLINE_EXCEEDED) {
      return new VlmError('DEADLINE_EXCEEDED', `the deadline passed while the vision service was encoding the image`, { cause: status });
    }
    if (status.code === GrpcCode.UNAUTHENTICATED || status.code === GrpcCode.PERMISSION_DENIED) {
      // The caller did nothing wrong: this service is misconfigured towards vision.
      return new VlmError('INTERNAL', 'the vision service refused this language service\'s credentials', { cause: status });
    }
    if (status.code === GrpcCode.UNIMPLEMENTED) {
      // Vision lacks what this service calls: a version skew between the two, not the caller's doing.
      // Vision's own text (which may name hosts) goes to the log with the other mismatches.
      return modelMismatch('the vision service does not implement this call (is a rollout half finished?)', status.details);
    }
    if (sent.reason === 'MODEL_MISMATCH') {
      // Vision refused before encoding: it runs another model than the one named in the metadata.
      // Its text is this project's own ("this vision service runs <id> (<hash>), not <hash>").
      return modelMismatch(`${status.details}; both services must serve the same model bundle (is a rollout half finished?)`);
    }
    if (sent.reason === 'DEVICE_FAULT') {
      // "This replica" in vision's text is vision's: the caller is told whose GPU failed.
      return fromServiceError(status, 'the vision service: ');
    }
    if (status.code === GrpcCode.RESOURCE_EXHAUSTED && sent.reason === undefined && RECEIVE_LIMIT.test(status.details)) {
      // grpc-js's own receive limit on this hop: vision sent a message no vision of this version
      // sends (its chunks stay within MAX_CHUNK_BYTES, 3 MiB). A broken tensor stream, not a full pool,
      // and nothing the caller sent: without this the caller would read "your request was too large".
      this.options.log?.warn('vision sent a message over the hop\'s receive limit', { ...ids, target: this.options.target.configured, details: status.details });
      return new VlmError('DATA_LOSS', `vision stream: ${status.details.replace(RECEIVE_LIMIT, 'a message larger than this hop\'s receive limit')} (a vision service of another version, or a broken one)`);
    }
    if (status.code === GrpcCode.RESOURCE_EXHAUSTED) {
      // Which pool is full tells an operator which one to scale; the caller backs off either way
      // (vision's reason and retry delay are kept).
      return fromServiceError(status, 'the vision service: ');
    }
    return fromServiceError(status);
  }

  close(): void {
    this.client.close();
  }
}
