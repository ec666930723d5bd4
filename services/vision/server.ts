/**
 * The vision service: an InferencePool behind VisionService, health, reflection and limits.
 */
import sharp from 'sharp';
import type { Config } from '../../shared/config';
import { createLogger, type Logger } from '../../shared/log';
import { VisionServiceService } from '../../gen/vlm/v1/vision_service';
import { startInferenceBackend, type InferenceBackend } from '../common/inference-backend';
import { GrpcServer, transportOptions } from '../common/grpc-server';
import { ActiveCalls } from '../common/active-calls';
import { serve, warmUpCall, type RunningService } from '../common/lifecycle';
import { visionHandlers } from './handlers';
import { noReduction } from '../../shared/methods/policy';
import { serviceCredentials } from '../common/credentials';

export interface VisionServiceOptions {
  /** Defaults to config.services.visionPort. */
  readonly port?: number;
  readonly log?: Logger;
}

/**
 * The warm-up's worst case: an image larger than the model input (the resize path runs) with no
 * reduction (the most tokens through every layer). Coloured squares, not noise: it must pass the
 * service's own byte limit (noise at 672 x 672 for a 336-pixel model is 1.3 MB; this is a few kB),
 * and its pixel limit.
 */
export async function warmUpImage(imageSize: number, maxPixels = Infinity): Promise<Buffer> {
  const side = Math.max(1, Math.min(imageSize * 2, Math.floor(Math.sqrt(maxPixels))));
  const raw = Buffer.alloc(side * side * 3);
  for (let y = 0, i = 0; y < side; y++) {
    for (let x = 0; x < side; x++, i += 3) {
      const cell = (x >> 4) * 7 + (y >> 4) * 13;
      raw[i] = (cell * 37) & 255;
      raw[i + 1] = (cell * 91) & 255;
      raw[i + 2] = (cell * 53) & 255;
    }
  }
  return sharp(raw, { raw: { width: side, height: side, channels: 3 } }).png().toBuffer();
}

export async function startVisionService(config: Config, options: VisionServiceOptions = {}): Promise<RunningService> {
  const log = options.log ?? createLogger('vision');
  // TLS and token files are checked before the model loads: a bad path fails the start at once.
  const creds = serviceCredentials(config, log, false);
  const backend: InferenceBackend = await startInferenceBackend(config, log, 'vision').catch((err: unknown) => {
    creds.close();
    throw err;
  });
  const calls = new ActiveCalls();
  const implementation = visionHandlers({
    backend,
    limits: config.limits,
    rowsPerChunk: config.rpc.rowsPerChunk,
    adapter: { log, defaultDeadlineMs: config.limits.deadlineMs, maxDeadlineMs: config.limits.maxDeadlineMs, calls },
  });
  let server: GrpcServer;
  try {
    server = new GrpcServer({
      serviceName: 'vlm.v1.VisionService',
      definition: VisionServiceService,
      implementation,
      protoFiles: ['vlm/v1/vision_service.proto'],
      log,
      ...transportOptions(config, creds),
      activeCalls: calls,
      lightMethods: [VisionServiceService.getModelInfo.path],
      acceptOnBehalfOf: true,
      refuseAtHeaders: (path, caller) => (path === VisionServiceService.encode.path ? backend.pool.refusal(caller) : null),
    });
  } catch (err) {
    // The pool's worker threads and the file polling would keep a failed start's process alive.
    await backend.close();
    creds.close();
    throw err;
  }
  const warmUp = async (): Promise<void> => {
    const image = await warmUpImage(backend.model.manifest.preprocess.size, config.limits.maxImagePixels);
    await backend.pool.encode(image, noReduction(), warmUpCall(config.limits.deadlineMs));
  };
  const running = await serve(server, backend, config, options.port ?? config.services.visionPort, warmUp, log).catch((err: unknown) => {
    creds.close();
    throw err;
  });
  return { ...running, stop: () => running.stop().finally(() => creds.close()) };
}
