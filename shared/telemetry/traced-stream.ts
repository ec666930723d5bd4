import { context, type Attributes, type Span } from '@opentelemetry/api';
import { VlmError } from '../errors';
import { trackInFlight } from './metrics';
import { ATTR_ERROR_TYPE, ATTR_VLM_BYTES, ATTR_VLM_CHUNKS, ATTR_VLM_REQUEST_ID, SpanName } from './names';
import { openSpan } from './with-span';

/** What tracedStream reads of a call: its request id, and the signal that says why it ended early. */
export interface TracedCall {
  readonly requestId: string;
  readonly signal: AbortSignal;
}

/**
 * Wraps a streaming handler body in the `vlm.request` span, the in-flight metric and a duration
 * metric (`recordDuration`, given the attributes plus `error.type` on failure). The body runs with the
 * span active across every resumption (the adapter calls `next()` from its own context), so the pool's
 * jobs, the vision hop's client span and the stream spans all become its children. The span ends
 * once: at the end, on error (marked failed), or when the consumer stops early (a cancelled call).
 */
export function tracedStream<Req, Ctx extends TracedCall, Res>(
  attributes: Attributes,
  recordDuration: (seconds: number, attributes: Attributes) => void,
  fn: (req: Req, ctx: Ctx, span: Span) => AsyncIterable<Res>,
): (req: Req, ctx: Ctx) => AsyncGenerator<Res> {
  return async function* traced(req: Req, ctx: Ctx): AsyncGenerator<Res> {
    const request = openSpan(SpanName.Request, ctx.requestId ? { ...attributes, [ATTR_VLM_REQUEST_ID]: ctx.requestId } : attributes);
    const done = trackInFlight();
    const started = performance.now();
    const inSpan = <T>(f: () => T): T => context.with(request.context, f);
    const iterator = inSpan(() => fn(req, ctx, request.span)[Symbol.asyncIterator]());
    let failure: unknown;
    let finished = false;
    try {
      for (;;) {
        const next = await inSpan(() => iterator.next());
        if (next.done) {
          finished = true;
          return;
        }
        yield next.value;
      }
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      if (failure === undefined) await inSpan(async () => iterator.return?.(undefined)).catch(() => undefined);
      // The adapter stops a stream early only once the call has ended (a cancel, a deadline): a
      // failure like a thrown one, which the duration metric and the span must not count as a success.
      if (failure === undefined && !finished && ctx.signal.aborted) failure = ctx.signal.reason;
      done();
      recordDuration((performance.now() - started) / 1000, failure === undefined ? attributes : { ...attributes, [ATTR_ERROR_TYPE]: VlmError.from(failure).code });
      request.end(failure);
    }
  };
}

/**
 * Yields the messages `build` returns inside a `vlm.stream.send` span: from building them (the
 * conversion to wire form counts as sending) until the last one is written (backpressure included),
 * with the chunks and their bytes counted. `chunkBytes` gives a message's payload bytes, or undefined
 * for one that is not a chunk (header, summary). The span ends once, with the counts of what was
 * written: at the end, on error (marked failed), or when the consumer stops early (marked CANCELLED:
 * a stream cut short must not read as a complete send).
 */
export async function* tracedSend<T>(build: () => Iterable<T>, attributes: Attributes, chunkBytes: (message: T) => number | undefined): AsyncGenerator<T> {
  const send = openSpan(SpanName.StreamSend, attributes);
  let chunks = 0;
  let bytes = 0;
  let complete = false;
  let failure: unknown;
  try {
    for (const message of build()) {
      const n = chunkBytes(message);
      if (n !== undefined) {
        chunks++;
        bytes += n;
      }
      yield message;
    }
    complete = true;
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    // One place sets the counts and ends the span: an attribute set on an ended span is a warning in the log.
    send.span.setAttributes({ [ATTR_VLM_CHUNKS]: chunks, [ATTR_VLM_BYTES]: bytes });
    send.end(complete ? undefined : (failure ?? new VlmError('CANCELLED', 'the stream ended before every message was written')));
  }
}
