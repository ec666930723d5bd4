/**
 * A caller's view of LanguageService.Generate, for the CLI (`vlm ask`, `vlm demo`) and tools: one
 * call, deltas to a callback, the final message or the status as a VlmError.
 */
import { credentials, Metadata, status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { VlmError } from '../../shared/errors';
import { LanguageServiceClient, type GenerateFinal, type GenerateRequest, type GenerateResponse } from '../../gen/vlm/v1/language_service';
import { REQUEST_ID_KEY } from '../common/interceptors';
import { fromServiceError, grpcCodeName } from '../common/status';

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

export function languageClient(target: string): LanguageServiceClient {
  return new LanguageServiceClient(target, credentials.createInsecure(), { 'grpc.max_send_message_length': -1 });
}

export function generateOnce(client: LanguageServiceClient, request: GenerateRequest, options: GenerateCallOptions): Promise<GenerateOutcome> {
  const md = new Metadata();
  if (options.authToken) md.set('authorization', `Bearer ${options.authToken}`);
  if (options.requestId) md.set(REQUEST_ID_KEY, options.requestId);
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
