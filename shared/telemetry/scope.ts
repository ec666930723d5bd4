/** The instrumentation scope of the project's own spans and metrics: `vlm`, at the code's version. */
import { metrics, trace, type Meter, type Tracer } from '@opentelemetry/api';
import { packageVersion } from '../package-root';

const SCOPE = 'vlm';
let version: string | undefined;

/** The API returns the provider registered at the time of the call: a no-op before the SDK starts. */
export function vlmTracer(): Tracer {
  return trace.getTracer(SCOPE, (version ??= packageVersion()));
}

export function vlmMeter(): Meter {
  return metrics.getMeter(SCOPE, (version ??= packageVersion()));
}
