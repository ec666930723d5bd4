import { VlmError } from '../../errors';
import { checkSpanTimes, isObject, objectAt, optionalArray, optionalObject, optionalString, shown, wholeNumberAt, type Json } from './fields';
import type { AttributeValue, Attributes, SpanEventRecord, SpanKindName, SpanRecord } from './span-record';

/**
 * The JSON of Jaeger's query API (`GET /api/traces/{id}` and `/api/traces?service=...`):
 * `{data: [{traceID, spans: [...], processes: {p1: {serviceName, tags}}}]}`. Times are microseconds;
 * the parent is the CHILD_OF reference; OpenTelemetry's span kind and status travel as the tags
 * `span.kind` and `otel.status_code`. A span with a bad id or time is refused with INVALID_ARGUMENT
 * naming its path (`data[0].spans[3].startTime`); tags of types the record cannot hold are skipped.
 */

export function isJaegerTraces(doc: unknown): boolean {
  return isObject(doc) && Array.isArray(doc.data) && doc.data.every((t) => isObject(t) && Array.isArray(t.spans));
}

export function spansFromJaeger(doc: unknown): SpanRecord[] {
  if (!isJaegerTraces(doc)) throw new VlmError('INVALID_ARGUMENT', 'not Jaeger query JSON: expected {data: [{traceID, spans, processes}]}');
  const out: SpanRecord[] = [];
  (doc as { data: Json[] }).data.forEach((trace, i) => {
    const processes = optionalObject(trace.processes, `data[${i}].processes`) ?? {};
    (trace.spans as unknown[]).forEach((s, j) => out.push(spanOf(s, trace, processes, `data[${i}].spans[${j}]`)));
  });
  return out;
}

function spanOf(value: unknown, trace: Json, processes: Json, path: string): SpanRecord {
  const s = objectAt(value, path);
  const process = processes[String(s.processID)];
  const service = isObject(process) && typeof process.serviceName === 'string' ? process.serviceName : 'unknown';
  const tags = tagsOf(s.tags);
  const startUs = BigInt(wholeNumberAt(s.startTime, `${path}.startTime`, 'microseconds'));
  const endUs = startUs + BigInt(wholeNumberAt(s.duration ?? 0, `${path}.duration`, 'microseconds'));
  const start = (startUs * 1000n).toString();
  const end = (endUs * 1000n).toString();
  checkSpanTimes(start, end, path);
  const parent = parentReference(optionalArray(s.references, `${path}.references`), `${path}.references`);
  const errored = tags['otel.status_code'] === 'ERROR' || tags.error === true || tags.error === 'true';
  return {
    traceId: hexId(s.traceID ?? trace.traceID, 32, `${path}.traceID`),
    spanId: hexId(s.spanID, 16, `${path}.spanID`),
    parentSpanId: parent ? hexId(parent.ref.spanID, 16, `${parent.path}.spanID`) : '',
    name: optionalString(s.operationName, `${path}.operationName`, ''),
    service,
    kind: kindOf(tags['span.kind']),
    startTimeUnixNano: start,
    endTimeUnixNano: end,
    attributes: tags,
    events: optionalArray(s.logs, `${path}.logs`).map((log, k) => eventOf(log, `${path}.logs[${k}]`)),
    status: errored ? { code: 'ERROR', message: typeof tags['otel.status_description'] === 'string' ? tags['otel.status_description'] : undefined } : { code: tags['otel.status_code'] === 'OK' ? 'OK' : 'UNSET' },
  };
}

/** The CHILD_OF reference, else the first one (a FOLLOWS_FROM parent is still the parent on the waterfall). */
function parentReference(references: unknown[], path: string): { ref: Json; path: string } | undefined {
  let index = references.findIndex((r) => isObject(r) && r.refType === 'CHILD_OF');
  if (index === -1) index = references.findIndex(isObject);
  return index === -1 ? undefined : { ref: references[index] as Json, path: `${path}[${index}]` };
}

function eventOf(value: unknown, path: string): SpanEventRecord {
  const log = objectAt(value, path);
  const fields = tagsOf(log.fields);
  const name = typeof fields.event === 'string' ? fields.event : 'log';
  delete fields.event;
  return { name, timeUnixNano: (BigInt(wholeNumberAt(log.timestamp, `${path}.timestamp`, 'microseconds')) * 1000n).toString(), attributes: fields };
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
function hexId(id: unknown, digits: number, path: string): string {
  const s = typeof id === 'string' ? id.toLowerCase() : '';
  if (!/^[0-9a-f]+$/.test(s) || s.length > digits) throw VlmError.invalid(path, `${shown(id)} is not hex of at most ${digits} digits`);
  return s.padStart(digits, '0');
}
