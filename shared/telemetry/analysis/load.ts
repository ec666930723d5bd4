import { VlmError } from '../../errors';
import { checkSpanTimes, isObject, objectAt, optionalArray, optionalObject, optionalString, shown, stringAt, wholeNumberAt, within, type Json } from './fields';
import { isJaegerTraces, spansFromJaeger } from './jaeger';
import { isOtlpTraces, spansFromOtlp } from './otlp-json';
import type { AttributeValue, Attributes, SpanEventRecord, SpanKindName, SpanRecord, StatusName } from './span-record';

export type TraceFileFormat = 'span-lines' | 'otlp-json' | 'otlp-json-lines' | 'jaeger';

const KINDS: readonly SpanKindName[] = ['INTERNAL', 'SERVER', 'CLIENT', 'PRODUCER', 'CONSUMER', 'UNSPECIFIED'];
const STATUSES: readonly StatusName[] = ['UNSET', 'OK', 'ERROR'];

/**
 * Reads any trace file the report accepts and says which format it was:
 * - span lines: what `vlm trace collect` writes (one SpanRecord per line);
 * - OTLP JSON: one ExportTraceServiceRequest / TracesData document (Tempo's `/api/traces/{id}`), or one
 *   per line (the OpenTelemetry Collector's file exporter);
 * - Jaeger: the query API's `{data: [...]}`.
 * Every record is checked on the way in: anything malformed is INVALID_ARGUMENT with `source` (the
 * file name), the line and the field in the message, because the analysis assumes well-formed spans.
 */
export function parseTraceText(text: string, source = 'trace data'): { format: TraceFileFormat; spans: SpanRecord[] } {
  const trimmed = text.trim();
  if (trimmed === '') return { format: 'span-lines', spans: [] };
  const whole = tryParse(trimmed);
  if (whole !== undefined && !Array.isArray(whole) && !isSpanRecordLike(whole)) {
    if (isJaegerTraces(whole)) return { format: 'jaeger', spans: within(source, () => spansFromJaeger(whole)) };
    if (isOtlpTraces(whole)) return { format: 'otlp-json', spans: within(source, () => spansFromOtlp(whole)) };
    throw new VlmError('INVALID_ARGUMENT', `${source}: unrecognised trace JSON: expected span lines, OTLP JSON (resourceSpans/batches) or Jaeger ({data: [...]})`);
  }
  const spans: SpanRecord[] = [];
  let sawOtlp = false;
  const lines = trimmed.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const where = `${source} line ${i + 1}`;
    const doc = tryParse(line);
    if (doc === undefined) throw new VlmError('INVALID_ARGUMENT', `${where} is not JSON`);
    if (isSpanRecordLike(doc)) spans.push(within(where, () => spanRecordOf(doc as Json)));
    else if (isOtlpTraces(doc)) {
      sawOtlp = true;
      spans.push(...within(where, () => spansFromOtlp(doc)));
    } else throw new VlmError('INVALID_ARGUMENT', `${where} is neither a span record (traceId, spanId, name, startTimeUnixNano) nor OTLP JSON`);
  }
  return { format: sawOtlp ? 'otlp-json-lines' : 'span-lines', spans };
}

/** A span record by its keys; its values are checked by spanRecordOf, which names the bad one. */
function isSpanRecordLike(doc: unknown): boolean {
  return isObject(doc) && 'traceId' in doc && 'spanId' in doc && 'startTimeUnixNano' in doc;
}

/**
 * Checks one span line field by field. Optional fields get their defaults so hand-written fixtures
 * may leave them out; ids are lowercased, times normalised to plain decimal.
 */
function spanRecordOf(d: Json): SpanRecord {
  const startTimeUnixNano = wholeNumberAt(d.startTimeUnixNano, 'startTimeUnixNano', 'nanoseconds');
  const endTimeUnixNano = wholeNumberAt(d.endTimeUnixNano, 'endTimeUnixNano', 'nanoseconds');
  checkSpanTimes(startTimeUnixNano, endTimeUnixNano, '');
  return {
    traceId: hexAt(d.traceId, 32, 'traceId'),
    spanId: hexAt(d.spanId, 16, 'spanId'),
    parentSpanId: d.parentSpanId === undefined || d.parentSpanId === null || d.parentSpanId === '' ? '' : parentIdAt(d.parentSpanId),
    name: stringAt(d.name, 'name'),
    service: optionalString(d.service, 'service', 'unknown'),
    kind: d.kind === undefined ? 'INTERNAL' : oneOf(d.kind, KINDS, 'kind'),
    startTimeUnixNano,
    endTimeUnixNano,
    attributes: attributesAt(d.attributes, 'attributes'),
    events: optionalArray(d.events, 'events').map((e, i) => eventAt(e, `events[${i}]`)),
    status: statusAt(d.status),
  };
}

function hexAt(v: unknown, digits: number, path: string): string {
  if (typeof v !== 'string' || v.length !== digits || !/^[0-9a-fA-F]+$/.test(v)) throw VlmError.invalid(path, `${shown(v)} is not ${digits} hex digits`);
  return v.toLowerCase();
}

function parentIdAt(v: unknown): string {
  if (typeof v !== 'string' || v.length !== 16 || !/^[0-9a-fA-F]+$/.test(v)) throw VlmError.invalid('parentSpanId', `${shown(v)} is neither empty nor 16 hex digits`);
  return v.toLowerCase();
}

function oneOf<T extends string>(v: unknown, names: readonly T[], path: string): T {
  if (typeof v === 'string' && (names as readonly string[]).includes(v)) return v as T;
  throw VlmError.invalid(path, `${shown(v)} is not one of ${names.join(', ')}`);
}

function attributesAt(v: unknown, path: string): Attributes {
  const attrs = optionalObject(v, path) ?? {};
  const out: Attributes = {};
  for (const [key, value] of Object.entries(attrs)) out[key] = attributeValueAt(value, `${path}.${key}`);
  return out;
}

function attributeValueAt(v: unknown, path: string): AttributeValue {
  const scalar = (x: unknown) => typeof x === 'string' || typeof x === 'boolean' || (typeof x === 'number' && Number.isFinite(x));
  if (scalar(v) || (Array.isArray(v) && v.every(scalar))) return v as AttributeValue;
  throw VlmError.invalid(path, `expected a string, number, boolean or a list of them, got ${shown(v)}`);
}

function eventAt(v: unknown, path: string): SpanEventRecord {
  const e = objectAt(v, path);
  return {
    name: stringAt(e.name, `${path}.name`),
    timeUnixNano: wholeNumberAt(e.timeUnixNano, `${path}.timeUnixNano`, 'nanoseconds'),
    attributes: attributesAt(e.attributes, `${path}.attributes`),
  };
}

function statusAt(v: unknown): SpanRecord['status'] {
  const s = optionalObject(v, 'status');
  if (s === undefined) return { code: 'UNSET' };
  const code = s.code === undefined ? 'UNSET' : oneOf(s.code, STATUSES, 'status.code');
  const message = optionalString(s.message, 'status.message', '');
  return message === '' ? { code } : { code, message };
}

function tryParse(s: string): unknown {
  try {
    return JSON.parse(s) as unknown;
  } catch {
    return undefined;
  }
}
