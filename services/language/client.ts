/**
 * A caller's view of LanguageService.Generate, for the CLI (`vlm ask`, `vlm demo`) and tools: one
 * call, deltas to a callback, the final message or the status as a VlmError.
 */
import { readFileSync } from 'node:fs';
import { credentials, Metadata, status as GrpcCode, type ChannelOptions, type ServiceError } from '@grpc/grpc-js';
import { VlmError } from '../../shared/errors';
import { LanguageServiceClient, type GenerateFinal, type GenerateRequest, type GenerateResponse } from '../../gen/vlm/v1/language_service';
import { callMetadata } from '../common/call-metadata';
import { fromServiceError, grpcCodeName } from '../common/status';
import { receiveLimit } from '../common/message-limits';
import { CONFIG_OPTIONS } from '../../shared/config';

export interface GenerateCallOptions {
  readonly deadline: number;
  readonly authToken?: string | null;
  readonly requestId?: string;
  readonly onDelta?: (text: string) => void;
}

export interface GenerateOutcome {
  readonly answer: string;
  readonly final: GenerateFinal;
  /** Wall time seen by the caller, in milliseconds. */
  readonly latencyMs: number;
}

export interface ClientTlsOptions {
  /** CA file the service's certificate is verified with; null with `tls`: Node's public roots. */
  readonly caFile: string | null;
  /** Client certificate and key, where the service asks for one. */
  readonly certFile: string | null;
  readonly keyFile: string | null;
  /** The name the certificate must carry when it differs from the target's host (an IP, a tunnel). */
  readonly serverName: string | null;
}

/**
 * The services' receive limit at the default settings: a larger request is refused by the transport
 * (RESOURCE_EXHAUSTED, which the retry policy would otherwise send to two more pods) and is not
 * held for a retry. Pass the deployment's own receiveLimit where its limits differ.
 */
const DEFAULT_RECEIVE_LIMIT = receiveLimit({ maxImageBytes: CONFIG_OPTIONS['max-image-bytes'].default, maxPromptChars: CONFIG_OPTIONS['max-prompt-chars'].default });

/**
 * The channel docs/deploy.md gives backend apps calling a pool of language pods through a headless
 * Service: round-robin over every address the target resolves to (a ClusterIP would pin each
 * connection, and so every call on it, to one pod), and a retry on the next pod of a call refused
 * before anything was answered (UNAVAILABLE: a pod draining or gone; RESOURCE_EXHAUSTED: its queue or
 * in-flight cap full). grpc-js retries only before the first response message, so an answer is never
 * spliced from two pods, and only a request it still holds: hence the retry buffers, sized for an image.
 */
export function backendChannelOptions(maxRequestBytes = DEFAULT_RECEIVE_LIMIT): ChannelOptions {
  return {
    'grpc.service_config': JSON.stringify({
      loadBalancingConfig: [{ round_robin: {} }],
      methodConfig: [
        {
          name: [{ service: 'vlm.v1.LanguageService' }],
          retryPolicy: { maxAttempts: 3, initialBackoff: '0.2s', maxBackoff: '2s', backoffMultiplier: 2, retryableStatusCodes: ['UNAVAILABLE', 'RESOURCE_EXHAUSTED'] },
        },
      ],
      // A fleet that refuses everything (every queue full, vision down) gets no more than the calls
      // themselves: a success adds a token, a failure takes one, and retries stop at half of 10.
      retryThrottling: { maxTokens: 10, tokenRatio: 1 },
    }),
    'grpc.per_rpc_retry_buffer_size': maxRequestBytes,
    'grpc.retry_buffer_size': 4 * maxRequestBytes,
  };
}

/**
 * Plaintext without `tls`; TLS (optionally with a client certificate) with it. `channel` adds channel
 * options (backendChannelOptions for a pool of pods); without them a call that is refused is not
 * retried, so the CLI's benches see every refusal.
 */
export function languageClient(target: string, tls: ClientTlsOptions | null = null, channel: ChannelOptions = {}): LanguageServiceClient {
  const options = { ...channel, 'grpc.max_send_message_length': -1, ...(tls?.serverName ? { 'grpc.ssl_target_name_override': tls.serverName, 'grpc.default_authority': tls.serverName } : {}) };
  const creds =
    tls === null
      ? credentials.createInsecure()
      : credentials.createSsl(tls.caFile ? readFileSync(tls.caFile) : null, tls.keyFile ? readFileSync(tls.keyFile) : null, tls.certFile ? readFileSync(tls.certFile) : null);
  return new LanguageServiceClient(target, creds, options);
}

export function generateOnce(client: LanguageServiceClient, request: GenerateRequest, options: GenerateCallOptions): Promise<GenerateOutcome> {
  const md = callMetadata(options);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const call = client.generate(request, md, { deadline: options.deadline });
    let answer = '';
    let final: GenerateFinal | undefined;
    let error: ServiceError | undefined;
    call.on('data', (m: GenerateResponse) => {
      if (m.part?.$case === 'delta') {
        answer += m.part.delta.text;
        options.onDelta?.(m.part.delta.text);
      } else if (m.part?.$case === 'final') final = m.part.final;
    });
    call.on('error', (e: ServiceError) => (error = e));
    call.on('status', (s: { code: GrpcCode }) => {
      if (s.code !== GrpcCode.OK) return reject(fromServiceError(error ?? { code: s.code, details: grpcCodeName(s.code), metadata: new Metadata() } as ServiceError));
      if (final === undefined) return reject(new VlmError('DATA_LOSS', 'the stream ended without a final message'));
      resolve({ answer, final, latencyMs: performance.now() - started });
    });
  });
}
