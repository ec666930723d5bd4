/**
 * The OpenTelemetry SDK of one service process. Start it first thing in a service's entry, before
 * anything requires `@grpc/grpc-js`: the grpc instrumentation patches that module when it is loaded
 * (our build is CommonJS, so a `require` after startTelemetry is enough; under vitest, load grpc-js
 * with createRequire after starting).
 *
 * Configuration is the standard OTEL_* environment, read here once:
 * - Traces are on only when an exporter is configured: OTEL_TRACES_EXPORTER (otlp, console, zipkin),
 *   or an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Protocol,
 *   sampler, resource attributes and propagators (W3C tracecontext and baggage by default) are the
 *   SDK's usual variables. OTEL_SDK_DISABLED=true turns everything off.
 * - Metrics: a Prometheus endpoint on `metricsPort` (VLM_METRICS_PORT; 0 = off) and OTLP metrics when
 *   OTEL_METRICS_EXPORTER says otlp, or is unset and an OTLP endpoint is configured, over the protocol
 *   OTEL_EXPORTER_OTLP_METRICS_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL names, as traces do; `console`
 *   prints them. OTEL_METRIC_EXPORT_INTERVAL and OTEL_METRIC_EXPORT_TIMEOUT pace the pushes.
 * With nothing configured no SDK is started and the API stays no-op: zero cost in the hot path.
 */
import { randomUUID } from 'node:crypto';
import { DiagLogLevel, diag } from '@opentelemetry/api';
import { OTLPMetricExporter as OtlpGrpcMetricExporter } from '@opentelemetry/exporter-metrics-otlp-grpc';
import { OTLPMetricExporter as OtlpJsonMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { OTLPMetricExporter as OtlpProtoMetricExporter } from '@opentelemetry/exporter-metrics-otlp-proto';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { GrpcInstrumentation } from '@opentelemetry/instrumentation-grpc';
import { defaultResource, detectResources, envDetector, hostDetector, processDetector, resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import { ConsoleMetricExporter, PeriodicExportingMetricReader, type IMetricReader, type PushMetricExporter } from '@opentelemetry/sdk-metrics';
import { NodeSDK } from '@opentelemetry/sdk-node';
import type { SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { packageVersion } from '../package-root';
import { createLogger } from '../log';
import { VlmError } from '../errors';
import { GrpcSpanOutcome } from './grpc-span-outcome';
import { PerformanceClockStart } from './span-clock';
import { setTracingEnabled } from './state';
import { MAX_TIMER_MS } from '../timer-limit';

/**
 * The exporters' processors NodeSDK builds from OTEL_TRACES_EXPORTER and the OTLP variables when given
 * none. Its own function, not exported from the package index: passing any processor of ours makes
 * NodeSDK skip the environment, so ours go first and these after (the version is pinned).
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { getSpanProcessorsFromEnv } = require('@opentelemetry/sdk-node/build/src/utils') as { getSpanProcessorsFromEnv(meterProvider: undefined): SpanProcessor[] };
const spanProcessorsFromEnv = (): SpanProcessor[] => getSpanProcessorsFromEnv(undefined);

type Env = Readonly<Record<string, string | undefined>>;

export interface TelemetryOptions {
  /** `vlm-vision` or `vlm-language` (wins over OTEL_SERVICE_NAME: the two must stay apart). */
  serviceName: string;
  /** Prometheus scrape port; 0 or undefined = no Prometheus endpoint. */
  metricsPort?: number;
  /** Interface of the Prometheus endpoint (default all). */
  metricsHost?: string;
}

export interface TelemetrySettings {
  tracing: boolean;
  otlpMetrics: boolean;
  /** The OTLP metrics transport; the SDK's own default (http/protobuf) for an unknown value. */
  metricsProtocol: OtlpProtocol;
  prometheusPort: number;
  /** OTEL_METRICS_EXPORTER includes `console`: each export printed to stdout (for debugging). */
  consoleMetrics: boolean;
  /** OTEL_METRIC_EXPORT_INTERVAL, ms. */
  metricIntervalMs: number;
  /** OTEL_METRIC_EXPORT_TIMEOUT, ms, at most the interval (the SDK refuses a longer one). */
  metricTimeoutMs: number;
  /**
   * OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT (`true` or `1`): spans may carry what a
   * request was answered. The token ids of an answer decode straight back to its text with the public
   * tokenizer, so this is off unless asked, as the GenAI conventions make content capture opt-in.
   */
  captureContent: boolean;
}

export type OtlpProtocol = 'grpc' | 'http/protobuf' | 'http/json';
const OTLP_PROTOCOLS: readonly string[] = ['grpc', 'http/protobuf', 'http/json'] satisfies OtlpProtocol[];

export interface Telemetry {
  readonly serviceName: string;
  readonly settings: TelemetrySettings;
  /**
   * Resolves when the resource is complete and the Prometheus endpoint listens. Rejects (FAILED_PRECONDITION)
   * when the endpoint --metrics-port names cannot listen: the autoscalers read the queue depth there,
   * so a service without it must not start. Left unawaited, the rejection is not an unhandled one.
   */
  readonly ready: Promise<void>;
}

const log = createLogger('telemetry');

/** Events kept per span unless OTEL_SPAN_EVENT_COUNT_LIMIT says otherwise: a long answer's tokens. */
export const DECODE_EVENT_LIMIT = 4096;

const list = (v: string | undefined) => (v ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
const set = (v: string | undefined) => v !== undefined && v.trim() !== '';


/**
 * An integer OTEL_* setting in [min, max], or `fallback` when unset. An invalid one is ignored with a
 * warning, as the OpenTelemetry specification asks of SDKs (a typo must not stop a pod, nor pass silently).
 */
function intSetting(env: Env, name: string, min: number, max: number, fallback: number, warn: (msg: string) => void): number {
  const raw = env[name];
  if (!set(raw)) return fallback;
  const v = Number(raw);
  if (Number.isInteger(v) && v >= min && v <= max) return v;
  warn(`${name}=${JSON.stringify(raw)} is not an integer in [${min}, ${max}]; using ${fallback}`);
  return fallback;
}

/**
 * What the environment asks for; pure but for `warn` (invalid values), so the rules are testable
 * without starting anything.
 */
export function telemetrySettings(env: Env, metricsPort = 0, warn: (msg: string) => void = (m) => log.warn(m)): TelemetrySettings {
  const off = (env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true';
  const otlpEndpoint = set(env.OTEL_EXPORTER_OTLP_ENDPOINT);
  const traces = list(env.OTEL_TRACES_EXPORTER);
  const tracing = !off && (traces.length ? !traces.includes('none') : otlpEndpoint || set(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT));
  const metrics = list(env.OTEL_METRICS_EXPORTER);
  const otlpMetrics = !off && (metrics.length ? metrics.includes('otlp') && !metrics.includes('none') : otlpEndpoint || set(env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT));
  let prometheusPort = metricsPort > 0 ? metricsPort : 0;
  // 9464: the OpenTelemetry default, which --metrics-port shares.
  if (!prometheusPort && metrics.includes('prometheus')) prometheusPort = intSetting(env, 'OTEL_EXPORTER_PROMETHEUS_PORT', 1, 65_535, 9464, warn);
  const interval = intSetting(env, 'OTEL_METRIC_EXPORT_INTERVAL', 1, MAX_TIMER_MS, 60_000, warn);
  const timeout = Math.min(interval, intSetting(env, 'OTEL_METRIC_EXPORT_TIMEOUT', 1, MAX_TIMER_MS, 30_000, warn));
  const protocol = (env.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? '').trim().toLowerCase();
  return {
    tracing,
    otlpMetrics,
    metricsProtocol: OTLP_PROTOCOLS.includes(protocol) ? (protocol as OtlpProtocol) : 'http/protobuf',
    prometheusPort: off ? 0 : prometheusPort,
    consoleMetrics: !off && metrics.includes('console') && !metrics.includes('none'),
    metricIntervalMs: interval,
    metricTimeoutMs: timeout,
    captureContent: tracing && /^(true|1)$/i.test(env.OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT?.trim() ?? ''),
  };
}

/** One exporter per protocol; each reads its endpoint, headers and timeout from the OTEL_* env itself. */
export function otlpMetricExporter(protocol: OtlpProtocol): OtlpGrpcMetricExporter | OtlpJsonMetricExporter | OtlpProtoMetricExporter {
  switch (protocol) {
    case 'grpc':
      return new OtlpGrpcMetricExporter();
    case 'http/json':
      return new OtlpJsonMetricExporter();
    case 'http/protobuf':
      return new OtlpProtoMetricExporter();
  }
}

/**
 * The process's resource. OTEL_RESOURCE_ATTRIBUTES (k8s pod, node; the manifests set
 * service.instance.id to the pod's uid) comes in through envDetector; without a service.instance.id
 * there, each process gets a random one, so replicas of one service stay apart in the backend.
 * Our service name wins over OTEL_SERVICE_NAME. service.version is the code's (package.json); the
 * model's version is `vlm.model.version` (the manifests set it from VLM_MODEL_VERSION).
 */
export function telemetryResource(serviceName: string): Resource {
  return defaultResource()
    .merge(resourceFromAttributes({ 'service.instance.id': randomUUID(), 'service.version': packageVersion() }))
    .merge(detectResources({ detectors: [envDetector, processDetector, hostDetector] }))
    .merge(resourceFromAttributes({ 'service.name': serviceName }));
}

/**
 * How long shutdown waits for the last spans and metrics. The OTLP exporter would wait its own
 * timeout (10 s by default) on a collector that is down, and the pods' grace periods budget 3 s for
 * the flush after the drain (the two Deployments in `k8s/base`).
 */
export const SHUTDOWN_FLUSH_MS = 3000;

let current: { telemetry: Telemetry; sdk: NodeSDK | undefined } | undefined;

/** Starts the SDK once per process; a second call returns the first one's handle. */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  if (current) return current.telemetry;
  // process.env, not a parameter: the SDK's exporters, sampler and propagators read it themselves.
  const env = process.env;
  const settings = telemetrySettings(env, options.metricsPort);
  if (!set(env.OTEL_LOG_LEVEL)) {
    // Export failures (collector down) should be visible in our logs, not swallowed or printed raw.
    diag.setLogger({ error: (m) => log.error(m), warn: (m) => log.warn(m), info: () => {}, debug: () => {}, verbose: () => {} }, DiagLogLevel.WARN);
  }

  const readers: IMetricReader[] = [];
  let ready: Promise<void> = Promise.resolve();
  if (settings.prometheusPort) {
    const prometheus = new PrometheusExporter({ port: settings.prometheusPort, host: options.metricsHost, preventServerStart: true });
    ready = prometheus.startServer().then(
      () => log.info('prometheus metrics endpoint up', { port: settings.prometheusPort, path: '/metrics' }),
      (err: unknown) => {
        // The endpoint --metrics-port asked for is the autoscalers' (the deployments set it): without it
        // the service does not start. One the OTEL_* variables asked for stays best effort, as the SDK
        // has it: several services of one command may share that variable's port.
        if (!(options.metricsPort && options.metricsPort > 0)) {
          log.error('prometheus metrics endpoint failed to start; metrics are not scrapeable', { port: settings.prometheusPort, err: err as Error });
          return;
        }
        throw new VlmError('FAILED_PRECONDITION', `--metrics-port ${settings.prometheusPort}: /metrics cannot listen (${(err as Error).message}); the autoscalers read the queue depth there: pick a free port, or 0 for no endpoint`, { cause: err });
      },
    );
    readers.push(prometheus);
  }
  const periodic = (exporter: PushMetricExporter) => new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: settings.metricIntervalMs, exportTimeoutMillis: settings.metricTimeoutMs });
  if (settings.otlpMetrics) readers.push(periodic(otlpMetricExporter(settings.metricsProtocol)));
  if (settings.consoleMetrics) readers.push(periodic(new ConsoleMetricExporter()));

  // An exporter name the SDK does not know leaves it none: then no tracer provider either (ours alone
  // would record every span, a decode event per token, for nothing).
  const exporting = settings.tracing ? spanProcessorsFromEnv() : [];
  let sdk: NodeSDK | undefined;
  if (settings.tracing || readers.length) {
    // The resource is built here rather than by NodeSDK so that `ready` can wait for its asynchronous
    // attributes: a scrape before they settle logs an error.
    const resource = telemetryResource(options.serviceName);
    ready = Promise.all([ready, resource.waitForAsyncAttributes?.()]).then(() => undefined);
    sdk = new NodeSDK({
      resource,
      autoDetectResources: false,
      metricReaders: readers,
      // No span processors means no tracer provider: the API stays no-op when tracing is off.
      spanProcessors: exporting.length > 0 ? [new PerformanceClockStart(), new GrpcSpanOutcome(), ...exporting] : [],
      // Health checks and reflection would drown the spans that matter.
      instrumentations: exporting.length > 0 ? [new GrpcInstrumentation({ ignoreGrpcMethods: ['Check', 'Watch', 'ServerReflectionInfo'] })] : [],
      // The decode span carries one event per generated token; the SDK's default keeps 128.
      ...(set(env.OTEL_SPAN_EVENT_COUNT_LIMIT) ? {} : { spanLimits: { eventCountLimit: DECODE_EVENT_LIMIT } }),
      logRecordProcessors: [],
    });
    sdk.start();
  }
  const tracing = exporting.length > 0;
  ready.catch(() => undefined);
  const telemetry: Telemetry = { serviceName: options.serviceName, settings: { ...settings, tracing, captureContent: settings.captureContent && tracing }, ready };
  current = { telemetry, sdk };
  setTracingEnabled(tracing, settings.captureContent && tracing);
  log.info('telemetry started', { service: options.serviceName, tracing, otlpMetrics: settings.otlpMetrics, prometheusPort: settings.prometheusPort });
  return telemetry;
}

/**
 * Flushes pending spans and metrics and stops the exporters; call on shutdown after the server stops.
 * Gives up after `flushMs`, so a collector that is down cannot hold the process past its grace period.
 */
export async function shutdownTelemetry(flushMs = SHUTDOWN_FLUSH_MS): Promise<void> {
  const c = current;
  current = undefined;
  setTracingEnabled(false);
  if (!c?.sdk) return;
  let timer: NodeJS.Timeout | undefined;
  const gaveUp = new Promise<'gave up'>((resolve) => (timer = setTimeout(() => resolve('gave up'), flushMs)));
  try {
    if ((await Promise.race([c.sdk.shutdown(), gaveUp])) === 'gave up') {
      log.warn('telemetry shutdown gave up waiting for the exporters; spans and metrics not yet exported may be lost', { waited_ms: flushMs });
    }
  } catch (err) {
    log.warn('telemetry shutdown did not flush cleanly', { err: err as Error });
  } finally {
    clearTimeout(timer);
  }
}
