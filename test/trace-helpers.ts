/**
 * The service pair in this process, with the telemetry a service process registers, but in memory:
 * a tracer provider that hands every ended span to an array at once, and a meter provider read on
 * demand. No grpc instrumentation, so the two services' spans are two traces per request; everything
 * inside a service (request, queue, worker spans replayed) is as in production.
 */
import { credentials } from '@grpc/grpc-js';
import { context, metrics, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { MeterProvider, MetricReader, type DataPoint, type Histogram } from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { LanguageServiceClient } from '../gen/vlm/v1/language_service';
import type { RunningService } from '../services/common/lifecycle';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import { setTracingEnabled } from '../shared/telemetry/state';
import { pairConfig, recordingLogger, type LogLine } from './reliability-helpers';

class OnDemandReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

export interface TracedPair {
  readonly vision: RunningService;
  readonly language: RunningService;
  readonly client: LanguageServiceClient;
  readonly logs: LogLine[];
  /** Every span ended so far, both services. */
  spans(): ReadableSpan[];
  /** The data points of one histogram as collected now, with their attributes. */
  histogram(name: string): Promise<DataPoint<Histogram>[]>;
  stop(): Promise<void>;
}

export async function startTracedPair(): Promise<TracedPair> {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  const exporter = new InMemorySpanExporter();
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
  const reader = new OnDemandReader();
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
  setTracingEnabled(true);

  const logs: LogLine[] = [];
  const vision = await startVisionService(pairConfig(), { port: 0, log: recordingLogger(logs, 'vision') });
  const language = await startLanguageService(pairConfig({ visionTarget: vision.address }), { port: 0, log: recordingLogger(logs, 'language') });
  const client = new LanguageServiceClient(language.address, credentials.createInsecure());
  return {
    vision,
    language,
    client,
    logs,
    spans: () => exporter.getFinishedSpans(),
    histogram: async (name) => {
      const { resourceMetrics } = await reader.collect();
      return resourceMetrics.scopeMetrics.flatMap((s) => s.metrics.filter((m) => m.descriptor.name === name).flatMap((m) => m.dataPoints as DataPoint<Histogram>[]));
    },
    stop: async () => {
      client.close();
      await language.stop();
      await vision.stop();
      setTracingEnabled(false);
    },
  };
}
