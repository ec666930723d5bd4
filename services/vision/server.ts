/**
 * The vision service: an InferencePool behind VisionService, health, reflection and limits.
 */
import sharp from 'sharp';
import type { Config } from '../../shared/config';
import { createLogger, type Logger } from '../../shared/log';
import { VisionServiceService } from '../../gen/vlm/v1/vision_service';
import { startEngine, type ServiceEngine } from '../common/engine';
import { GrpcServer, transportOptions } from '../common/grpc-server';
import { serve, type RunningService } from '../common/lifecycle';
import { visionHandlers } from './handlers';
import { noReduction } from '../common/validate';
import { serviceTls } from '../common/tls';

export interface VisionServiceOptions {
  /** Defaults to config.services.visionPort. */
  readonly port?: number;
  readonly log?: Logger;
}

/**
 * The warm-up's worst case: an image larger than the model input (the resize path runs) with no
 * reduction (the most tokens through every layer).
 */
export async function warmUpImage(imageSize: number): Promise<Buffer> {
  const side = imageSize * 2;
  const raw = Buffer.alloc(side * side * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 2654435761) >>> 24;
  return sharp(raw, { raw: { width: side, height: side, channels: 3 } }).png().toBuffer();
}

export async function startVisionService(config: Config, options: VisionServiceOptions = {}): Promise<RunningService> {
  const log = options.log ?? createLogger('vision');
  // TLS files are checked before the model loads: a bad path fails the start at once.
  const tls = serviceTls(config.tls, log, false);
  const engine: ServiceEngine = await startEngine(config, log).catch((err: unknown) => {
    tls.close();
    throw err;
  });
  const implementation = visionHandlers({
    engine,
    limits: config.limits,
    rowsPerChunk: config.rpc.rowsPerChunk,
    adapter: { log, defaultDeadlineMs: config.limits.deadlineMs },
  });
  const server = new GrpcServer({
    serviceName: 'vlm.v1.VisionService',
    definition: VisionServiceService,
    implementation,
    protoFiles: ['vlm/v1/vision_service.proto'],
    log,
    ...transportOptions(config, tls.server),
    // Language pods hold long-lived channels; aged-out connections make them re-resolve and find new replicas.
    maxConnectionAgeMs: config.rpc.maxConnectionAgeMs,
    maxConnectionAgeGraceMs: config.limits.deadlineMs,
  });
  const warmUp = async (): Promise<void> => {
    const image = await warmUpImage(engine.model.manifest.preprocess.size);
    await engine.pool.encode(image, noReduction(), { deadline: Date.now() + config.limits.deadlineMs });
  };
  const running = await serve(server, engine, config, options.port ?? config.services.visionPort, warmUp, log).catch((err: unknown) => {
    tls.close();
    throw err;
  });
  return { ...running, stop: () => running.stop().finally(() => tls.close()) };
}
