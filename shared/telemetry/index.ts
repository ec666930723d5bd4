export * from './names';
export { withSpan, openSpan, type OpenSpan } from './with-span';
export { SpanRecorder, replaySpans, epochMillis, type SpanTiming } from './span-recorder';
export { tracingEnabled } from './state';
export { tracedSend, tracedStream, type TracedCall } from './traced-stream';
export { startTelemetry, shutdownTelemetry, telemetrySettings, type Telemetry, type TelemetryOptions, type TelemetrySettings } from './sdk';
export { recordStage, recordStageTokens, recordRequest, recordEncode, recordGeneration, trackInFlight, publishInFlightAtZero, observeQueueDepth } from './metrics';
export { injectTraceparent, extractTraceparent, type TraceCarrier } from './propagation';
