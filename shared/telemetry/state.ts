/**
 * Whether this process exports spans. Kept apart from sdk.ts so the inference pool can ask without
 * loading the SDK (the CLI's eval and the tests never start one).
 */
let tracing = false;
let content = false;

/** `captureContent`: spans may carry answers' token ids (TelemetrySettings.captureContent). */
export function setTracingEnabled(on: boolean, captureContent = false): void {
  tracing = on;
  content = on && captureContent;
}

/** True when spans are exported: workers are asked to record theirs only then. */
export function tracingEnabled(): boolean {
  return tracing;
}

/** True when exported spans may carry what a request was answered (its token ids). */
export function contentCaptured(): boolean {
  return content;
}
