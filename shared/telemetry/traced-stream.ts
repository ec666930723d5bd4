import { context, type Attributes, type Span } from '@opentelemetry/api';
import { recordRequest, trackInFlight } from './metrics';
import { ATTR_VLM_BYTES, ATTR_VLM_CHUNKS, SpanName } from './names';
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

/**
 * Yields the messages `build` returns inside a `vlm.stream.send` span: from building them (the
 * conversion to wire form counts as sending) until the last one is written (backpressure included),
 * with the chunks and their bytes counted. `chunkBytes` gives a message's payload bytes, or undefined
 * for one that is not a chunk (header, summary). The span ends once: at the end, on error (marked
 * failed), or when the consumer stops early.
 */
export async function* tracedSend<T>(build: () => Iterable<T>, attributes: Attributes, chunkBytes: (message: T) => number | undefined): AsyncGenerator<T> {
  const send = openSpan(SpanName.StreamSend, attributes);
  let chunks = 0;
  let bytes = 0;
  try {
    for (const message of build()) {
      const n = chunkBytes(message);
      if (n !== undefined) {
        chunks++;
        bytes += n;
      }
      yield message;
    }
    send.span.setAttributes({ [ATTR_VLM_CHUNKS]: chunks, [ATTR_VLM_BYTES]: bytes });
  } catch (err) {
    send.end(err);
    throw err;
  } finally {
    send.end();
  }
}
