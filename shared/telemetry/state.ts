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

/**
 * Whether spans may carry what a request said or was answered: the token ids of an answer decode
 * straight back to its text with the public tokenizer. Off unless asked, as the GenAI conventions
 * make content capture opt-in (read per call, so a worker thread sees the variable it inherited).
 */
export function captureContent(env: NodeJS.ProcessEnv = process.env): boolean {
  return /^(true|1)$/i.test(env.OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT?.trim() ?? '');
}
