import { VlmError } from '../../errors';
import type { AttributeValue, Attributes, SpanKindName, SpanRecord } from './span-record';

/**
 * The JSON of Jaeger's query API (`GET /api/traces/{id}` and `/api/traces?service=...`):
 * `{data: [{traceID, spans: [...], processes: {p1: {serviceName, tags}}}]}`. Times are microseconds;
 * the parent is the CHILD_OF reference; OpenTelemetry's span kind and status travel as the tags
 * `span.kind` and `otel.status_code`.
 */

type Json = Record<string, unknown>;

export function isJaegerTraces(doc: unknown): boolean {
  return isObject(doc) && Array.isArray(doc.data) && doc.data.every((t) => isObject(t) && Array.isArray(t.spans));
}

export function spansFromJaeger(doc: unknown): SpanRecord[] {
  if (!isJaegerTraces(doc)) throw new VlmError('INVALID_ARGUMENT', 'not Jaeger query JSON: expected {data: [{traceID, spans, processes}]}');
  const out: SpanRecord[] = [];
  for (const trace of (doc as { data: Json[] }).data) {
    const processes = isObject(trace.processes) ? trace.processes : {};
    for (const s of trace.spans as unknown[]) {
      if (!isObject(s)) continue;
      const process = processes[String(s.processID)];
      const service = isObject(process) && typeof process.serviceName === 'string' ? process.serviceName : 'unknown';
      const tags = tagsOf(s.tags);
      const startUs = BigInt(Math.round(Number(s.startTime)));
      const endUs = startUs + BigInt(Math.round(Number(s.duration ?? 0)));
      const parent = Array.isArray(s.references)
        ? s.references.find((r): r is Json => isObject(r) && r.refType === 'CHILD_OF') ?? s.references.find(isObject)
        : undefined;
      const errored = tags['otel.status_code'] === 'ERROR' || tags.error === true || tags.error === 'true';
      out.push({
        traceId: hexId(s.traceID ?? trace.traceID, 32),
        spanId: hexId(s.spanID, 16),
        parentSpanId: parent ? hexId(parent.spanID, 16) : '',
        name: String(s.operationName ?? ''),
        service,
        kind: kindOf(tags['span.kind']),
        startTimeUnixNano: (startUs * 1000n).toString(),
        endTimeUnixNano: (endUs * 1000n).toString(),
        attributes: tags,
        events: Array.isArray(s.logs)
          ? s.logs.filter(isObject).map((log) => {
              const fields = tagsOf(log.fields);
              const name = typeof fields.event === 'string' ? fields.event : 'log';
              delete fields.event;
              return { name, timeUnixNano: (BigInt(Math.round(Number(log.timestamp))) * 1000n).toString(), attributes: fields };
            })
          : [],
        status: errored ? { code: 'ERROR', message: typeof tags['otel.status_description'] === 'string' ? tags['otel.status_description'] : undefined } : { code: tags['otel.status_code'] === 'OK' ? 'OK' : 'UNSET' },
      });
    }
  }
  return out;
}

function tagsOf(list: unknown): Attributes {
  const out: Attributes = {};
  if (!Array.isArray(list)) return out;
  for (const t of list) {
    if (!isObject(t) || typeof t.key !== 'string') continue;
    const v = t.value;
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[t.key] = v as AttributeValue;
  }
  return out;
}

function kindOf(tag: AttributeValue | undefined): SpanKindName {
  const k = typeof tag === 'string' ? tag.toUpperCase() : '';
  return k === 'SERVER' || k === 'CLIENT' || k === 'PRODUCER' || k === 'CONSUMER' || k === 'INTERNAL' ? k : 'INTERNAL';
}

/** Jaeger drops leading zeros and may carry 64-bit trace ids: pad to the OTLP width. */
function hexId(id: unknown, digits: number): string {
  const s = String(id ?? '').toLowerCase();
  if (!/^[0-9a-f]+$/.test(s) || s.length > digits) throw new VlmError('INVALID_ARGUMENT', `Jaeger id ${JSON.stringify(id)} is not hex of at most ${digits} digits`);
  return s.padStart(digits, '0');
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
