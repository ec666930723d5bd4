/**
 * Whether this process exports spans. Kept apart from sdk.ts so the inference pool can ask without
 * loading the SDK (the CLI's eval and the tests never start one).
 */
let tracing = false;

export function setTracingEnabled(on: boolean): void {
  tracing = on;
}

/** True when spans are exported: workers are asked to record theirs only then. */
export function tracingEnabled(): boolean {
  return tracing;
}
