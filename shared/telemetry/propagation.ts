import { context, propagation, type Context } from '@opentelemetry/api';

/**
 * W3C trace context as plain data (`{traceparent, tracestate}`), for crossing boundaries that are not
 * instrumented: worker messages, a job queue, a CLI calling a service. Uses the registered propagator
 * (tracecontext by default), so without an SDK the carrier stays empty and extraction is a no-op.
 */
export type TraceCarrier = Record<string, string>;

export function injectTraceparent(ctx: Context = context.active()): TraceCarrier {
  const carrier: TraceCarrier = {};
  propagation.inject(ctx, carrier);
  return carrier;
}

export function extractTraceparent(carrier: TraceCarrier | undefined, base: Context = context.active()): Context {
  return carrier ? propagation.extract(base, carrier) : base;
}
