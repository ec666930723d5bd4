import { context, type Attributes, type Span } from '@opentelemetry/api';
import { recordRequest, trackInFlight } from './metrics';
import { SpanName } from './names';
import { openSpan } from './with-span';

/**
 * Wraps a streaming handler body in the `vlm.request` span and the in-flight and request-duration
 * metrics. The body runs with the span active across every resumption (the adapter calls `next()`
 * from its own context), so the pool's jobs, the vision hop's client span and the stream spans all
 * become its children. The span ends once: at the end, on error (marked failed), or when the
 * consumer stops early (a cancelled call).
 */
export function tracedStream<Req, Ctx, Res>(
  attributes: Attributes,
  fn: (req: Req, ctx: Ctx, span: Span) => AsyncIterable<Res>,
): (req: Req, ctx: Ctx) => AsyncGenerator<Res> {
  return async function* traced(req: Req, ctx: Ctx): AsyncGenerator<Res> {
    const request = openSpan(SpanName.Request, attributes);
    const done = trackInFlight();
    const started = performance.now();
    const inSpan = <T>(f: () => T): T => context.with(request.context, f);
    const iterator = inSpan(() => fn(req, ctx, request.span)[Symbol.asyncIterator]());
    let failure: unknown;
    try {
      for (;;) {
        const next = await inSpan(() => iterator.next());
        if (next.done) return;
        yield next.value;
      }
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      if (failure === undefined) await inSpan(async () => iterator.return?.(undefined)).catch(() => undefined);
      done();
      recordRequest((performance.now() - started) / 1000, attributes);
      request.end(failure);
    }
  };
}
