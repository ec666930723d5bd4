/**
 * The inference backend a service holds: the InferencePool (worker threads, bounded queue) plus the
 * model's facts on the service's own thread, for validation, GetModelInfo and stream checks.
 */
import { providerName, type Config } from '../../shared/config';
import { geometryOf } from '../../shared/engine/model';
import type { Logger } from '../../shared/log';
import { InferencePool, type PoolCloseReport } from '../../shared/worker';
import type { ModelSide } from '../../shared/bundle/loader';
import type { ModelFacts } from './model-info';
import { observeQueueDepth, publishInFlightAtZero } from '../../shared/telemetry/metrics';

export type Inference = Pick<InferencePool, 'encode' | 'generate' | 'reserve' | 'refusal' | 'stats' | 'close' | 'onAvailability'>;

export interface InferenceBackend {
  readonly pool: Inference;
  readonly model: ModelFacts;
  /** Provider the sessions run on ("cpu", "cuda", ...). */
  readonly provider: string;
  /** "cpu" or "cuda:<id>" as configured. */
  readonly device: string;
  /** Stops reporting this pool's queue depth, then closes the pool. */
  close(): Promise<PoolCloseReport>;
}

/** Device of the active provider: the configured spec with the same kind (cuda:1), else the kind. */
function deviceOf(config: Config, provider: string): string {
  const spec = config.runtime.providers.find((p) => p.kind === provider);
  return spec ? providerName(spec) : provider;
}

export async function startInferenceBackend(config: Config, log: Logger, side: ModelSide): Promise<InferenceBackend> {
  // With eager sessions every worker warms its side, each method included, before it reports ready
  // (replacements too); the service's own warm-up then checks the path end to end.
  const warmUp = config.model.eagerSessions && config.rpc.warmup ? side : undefined;
  const pool = await InferencePool.start({ model: config.model, runtime: config.runtime, limits: config.limits, logLevel: config.logLevel, side, warmUp, log: log.child('pool') });
  const g = geometryOf(pool.manifest);
  const provider = pool.provider ?? 'cpu';
  // Scraped by Prometheus as vlm_queue_depth: the autoscalers' signal (k8s/base/*/hpa.yaml).
  const unobserve = observeQueueDepth(() => pool.stats.queued);
  publishInFlightAtZero();
  return {
    pool,
    model: { manifest: pool.manifest, visionGeometry: g.vision, languageGeometry: g.language },
    provider,
    device: deviceOf(config, provider),
    // Unregistered first: a stopped service must not keep its pool alive through the gauge, nor
    // report a closed pool's depth next to a new one's in the same process.
    close: () => {
      unobserve();
      return pool.close();
    },
  };
}
