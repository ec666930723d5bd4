export * from './names';
export { withSpan, openSpan, type OpenSpan } from './with-span';
export { SpanRecorder, replaySpans, epochMillis, type SpanTiming } from './span-recorder';
export { startTelemetry, shutdownTelemetry, tracingEnabled, telemetrySettings, type Telemetry, type TelemetryOptions, type TelemetrySettings } from './sdk';
export { recordStage, recordStageTokens, recordRequest, trackInFlight, observeQueueDepth } from './metrics';
export { injectTraceparent, extractTraceparent, type TraceCarrier } from './propagation';
