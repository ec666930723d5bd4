/**
 * The language service: an InferencePool behind LanguageService, a balanced client to the vision
 * replicas, health, reflection and limits.
 */
import { warmUpSampling, zeroVisualTokens } from '../../shared/engine/warm-up-inputs';
import type { Config } from '../../shared/config';
import { createLogger, type Logger } from '../../shared/log';
import { LanguageServiceService } from '../../gen/vlm/v1/language_service';
import { startInferenceBackend } from '../common/inference-backend';
import { GrpcServer, transportOptions } from '../common/grpc-server';
import { ActiveCalls } from '../common/active-calls';
import { serve, warmUpCall, type RunningService } from '../common/lifecycle';
import { noReduction } from '../../shared/methods/policy';
import { startPromptTokenCounter, type PromptTokenCounter } from './prompt-token-counter';
import { languageHandlers } from './handlers';
import { VisionClient } from './vision-client';
import { visionTargetOf } from './vision-target';
import { serviceCredentials } from '../common/credentials';
import { receiveLimit } from '../common/message-limits';

export interface LanguageServiceOptions {
  /** Defaults to config.services.languagePort. */
  readonly port?: number;
  readonly log?: Logger;
}

export async function startLanguageService(config: Config, options: LanguageServiceOptions = {}): Promise<RunningService> {
  const log = options.log ?? createLogger('language');
  const target = visionTargetOf(config);
  const creds = serviceCredentials(config, log, true);
  if (creds.visionToken !== null && creds.visionChannel === null && !target.loopback) {
    log.warn('the bearer token goes to vision in plaintext: anyone on the path can read it and call vision with it (and language too, unless --vision-token-file keeps it apart); set VLM_VISION_CA for TLS on the hop', { target: target.configured });
  }
  let vision: VisionClient;
  try {
    vision = new VisionClient({ target, authToken: creds.visionToken, credentials: creds.visionChannel ?? undefined, maxRequestBytes: receiveLimit(config.limits), log: log.child('vision-client') });
  } catch (err) {
    // A malformed --vision-target: the file polling and SIGHUP handler must not outlive the failed start.
    creds.close();
    throw err;
  }
  const backend = await startInferenceBackend(config, log, 'language').catch((err: unknown) => {
    vision.close();
    creds.close();
    throw err;
  });
  let server: GrpcServer;
  let promptTokens: PromptTokenCounter | undefined;
  const calls = new ActiveCalls();
  try {
    promptTokens = await startPromptTokenCounter(config.model.dir, backend.model.manifest, config.limits);
    const implementation = languageHandlers({
      backend,
      vision,
      limits: config.limits,
      promptTokens,
      adapter: { log, defaultDeadlineMs: config.limits.deadlineMs, maxDeadlineMs: config.limits.maxDeadlineMs, calls },
    });
    server = new GrpcServer({
      serviceName: 'vlm.v1.LanguageService',
      definition: LanguageServiceService,
      implementation,
      protoFiles: ['vlm/v1/language_service.proto'],
      log,
      ...transportOptions(config, creds),
      activeCalls: calls,
      lightMethods: [LanguageServiceService.getModelInfo.path],
      refuseAtHeaders: (path, caller) => (path === LanguageServiceService.generate.path ? backend.pool.refusal(caller) : null),
    });
  } catch (err) {
    // The pool's worker threads, the channel and the certificate polling would keep a failed start's
    // process alive.
    await promptTokens?.close();
    await backend.close();
    vision.close();
    creds.close();
    throw err;
  }
  // Local only: readiness must not hang on the vision pool (it has its own probes), so the warm-up
  // prefills a zero tensor of the full visual token count and decodes two tokens.
  const warmUp = async (): Promise<void> => {
    const visual = zeroVisualTokens(backend.model.manifest);
    await backend.pool.generate(visual, 'warm-up', warmUpSampling(config.limits.maxNewTokens), noReduction(), warmUpCall(config.limits.deadlineMs));
  };
  log.info('vision target', { target: target.configured, tls: creds.visionChannel !== null });
  const counter = promptTokens;
  const running = await serve(server, backend, config, options.port ?? config.services.languagePort, warmUp, log).catch(async (err: unknown) => {
    await counter.close();
    vision.close();
    creds.close();
    throw err;
  });
  return {
    ...running,
    stop: () =>
      running.stop().finally(async () => {
        await counter.close();
        vision.close();
        creds.close();
      }),
  };
}
