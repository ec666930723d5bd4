import { VlmError } from '../../errors';
import { arrayAt, checkSpanTimes, isObject, objectAt, optionalArray, optionalObject, optionalString, shown, stringAt, wholeNumberAt, type Json } from './fields';
import type { AttributeValue, Attributes, SpanEventRecord, SpanKindName, SpanRecord, StatusName } from './span-record';

/**
 * OTLP trace data (ExportTraceServiceRequest, or the TracesData that Tempo returns) in any of its JSON
 * spellings, flattened into SpanRecords. Tolerated variants, because every producer picks its own:
 * `resourceSpans` or Tempo's `batches`, optionally under `trace`; `scopeSpans` or the older
 * `instrumentationLibrarySpans`; ids in hex (the OTLP/JSON spec) or base64 (protojson, Tempo); times as
 * strings or numbers; enums as numbers or names. The protobuf decoder hands its objects here as well.
 *
 * What is not tolerated is a known field of the wrong type, an id of the wrong length or a time that is
 * not a non-negative whole number: the whole document is refused with INVALID_ARGUMENT naming the
 * field's path (`resourceSpans[0].scopeSpans[1].spans[4].startTimeUnixNano`), so the collector answers
 * 400 and the report names what to fix. Unknown fields are ignored, as the OTLP/JSON spec asks.
 */

const KINDS: readonly SpanKindName[] = ['UNSPECIFIED', 'INTERNAL', 'SERVER', 'CLIENT', 'PRODUCER', 'CONSUMER'];
const STATUSES: readonly StatusName[] = ['UNSET', 'OK', 'ERROR'];

export function isOtlpTraces(doc: unknown): boolean {
  if (!isObject(doc)) return false;
  const root = isObject(doc.trace) ? doc.trace : doc;
  return Array.isArray(root.resourceSpans) || Array.isArray(root.batches);
}

export function spansFromOtlp(doc: unknown): SpanRecord[] {
  if (!isOtlpTraces(doc)) {
    throw new VlmError('INVALID_ARGUMENT', 'not OTLP trace data: expected resourceSpans (or Tempo batches) at the top level');
  }
  const nested = isObject((doc as Json).trace);
  const root = (nested ? (doc as Json).trace : doc) as Json;
  const key = Array.isArray(root.resourceSpans) ? 'resourceSpans' : 'batches';
  const path = `${nested ? 'trace.' : ''}${key}`;
  const out: SpanRecord[] = [];
  arrayAt(root[key], path).forEach((rs, i) => out.push(...spansOfResource(rs, `${path}[${i}]`)));
  return out;
}

function spansOfResource(value: unknown, path: string): SpanRecord[] {
  const rs = objectAt(value, path);
  const resource = optionalObject(rs.resource, `${path}.resource`);
  const resourceAttrs = attributesOf(resource?.attributes, `${path}.resource.attributes`);
  const service = typeof resourceAttrs['service.name'] === 'string' ? resourceAttrs['service.name'] : 'unknown';
  const scopesKey = rs.scopeSpans !== undefined ? 'scopeSpans' : 'instrumentationLibrarySpans';
  const out: SpanRecord[] = [];
  optionalArray(rs[scopesKey], `${path}.${scopesKey}`).forEach((scopeValue, j) => {
    const scopePath = `${path}.${scopesKey}[${j}]`;
    const scope = objectAt(scopeValue, scopePath);
    optionalArray(scope.spans, `${scopePath}.spans`).forEach((span, k) => out.push(spanOf(span, service, `${scopePath}.spans[${k}]`)));
  });
  return out;
}

function spanOf(value: unknown, service: string, path: string): SpanRecord {
  const s = objectAt(value, path);
  const status = optionalObject(s.status, `${path}.status`) ?? {};
  const message = optionalString(status.message, `${path}.status.message`, '');
  const startTimeUnixNano = wholeNumberAt(s.startTimeUnixNano, `${path}.startTimeUnixNano`, 'nanoseconds');
  const endTimeUnixNano = wholeNumberAt(s.endTimeUnixNano, `${path}.endTimeUnixNano`, 'nanoseconds');
  checkSpanTimes(startTimeUnixNano, endTimeUnixNano, path);
  const code = enumOf(status.code, STATUSES, 'STATUS_CODE_', 'UNSET');
  return {
    traceId: idToHex(s.traceId, 16, `${path}.traceId`),
    spanId: idToHex(s.spanId, 8, `${path}.spanId`),
    parentSpanId: s.parentSpanId === undefined || s.parentSpanId === null || s.parentSpanId === '' ? '' : idToHex(s.parentSpanId, 8, `${path}.parentSpanId`, true),
    name: optionalString(s.name, `${path}.name`, ''),
    service,
    kind: enumOf(s.kind, KINDS, 'SPAN_KIND_', 'UNSPECIFIED'),
    startTimeUnixNano,
    endTimeUnixNano,
    attributes: attributesOf(s.attributes, `${path}.attributes`),
    events: optionalArray(s.events, `${path}.events`).map((e, i) => eventOf(e, `${path}.events[${i}]`)),
    status: message === '' ? { code } : { code, message },
  };
}

function eventOf(value: unknown, path: string): SpanEventRecord {
  const e = objectAt(value, path);
  return {
    name: optionalString(e.name, `${path}.name`, ''),
    timeUnixNano: wholeNumberAt(e.timeUnixNano, `${path}.timeUnixNano`, 'nanoseconds'),
    attributes: attributesOf(e.attributes, `${path}.attributes`),
  };
}

/** A KeyValue list as an attribute map; a KeyValue without a value (an empty AnyValue) is left out. */
export function attributesOf(list: unknown, path: string): Attributes {
  const out: Attributes = {};
  optionalArray(list, path).forEach((item, i) => {
    const kv = objectAt(item, `${path}[${i}]`);
    const key = stringAt(kv.key, `${path}[${i}].key`);
    const v = anyValue(kv.value, `${path}[${i}].value`);
    if (v !== undefined) out[key] = v;
  });
  return out;
}

function anyValue(value: unknown, path: string): AttributeValue | undefined {
  const v = optionalObject(value, path);
  if (v === undefined) return undefined;
  if (v.stringValue !== undefined) return stringAt(v.stringValue, `${path}.stringValue`);
  if (v.boolValue !== undefined) return boolAt(v.boolValue, `${path}.boolValue`);
  if (v.intValue !== undefined) return intAt(v.intValue, `${path}.intValue`);
  if (v.doubleValue !== undefined) return doubleAt(v.doubleValue, `${path}.doubleValue`);
  if (v.bytesValue !== undefined) return bytesAt(v.bytesValue, `${path}.bytesValue`);
  if (v.arrayValue !== undefined) {
    const values = optionalArray(objectAt(v.arrayValue, `${path}.arrayValue`).values, `${path}.arrayValue.values`);
    // Attribute arrays are flat in the record: nested arrays and maps inside one are dropped.
    return values.map((x, i) => anyValue(x, `${path}.arrayValue.values[${i}]`)).filter((x): x is string | number | boolean => x !== undefined && !Array.isArray(x));
  }
  if (v.kvlistValue !== undefined) {
    const kvlist = objectAt(v.kvlistValue, `${path}.kvlistValue`);
    return JSON.stringify(attributesOf(kvlist.values, `${path}.kvlistValue.values`));
  }
  return undefined;
}

function boolAt(v: unknown, path: string): boolean {
  if (typeof v !== 'boolean') throw VlmError.invalid(path, `expected true or false, got ${shown(v)}`);
  return v;
}

/** int64: a JSON number or, as protojson writes it, decimal text; a number past 2^53 loses digits. */
function intAt(v: unknown, path: string): number {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'string' && /^-?\d{1,20}$/.test(v)) return Number(v);
  throw VlmError.invalid(path, `expected an integer, got ${shown(v)}`);
}

/** double: a JSON number, or text for the values JSON lacks ("NaN", "Infinity", "-Infinity"). */
function doubleAt(v: unknown, path: string): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && v.trim() !== '' && (Number.isFinite(Number(v)) || ['NaN', 'Infinity', '-Infinity'].includes(v))) return Number(v);
  throw VlmError.invalid(path, `expected a number, got ${shown(v)}`);
}

/** bytes stay base64 text in the record: protojson's spelling, or the protobuf decoder's raw bytes. */
function bytesAt(v: unknown, path: string): string {
  if (typeof v === 'string') return v;
  if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
  throw VlmError.invalid(path, `expected base64 text or bytes, got ${shown(v)}`);
}

/** Hex as the OTLP/JSON spec says, base64 as protojson (Tempo) writes, or raw bytes from protobuf. */
export function idToHex(id: unknown, bytes: number, path: string, emptyAllowed = false): string {
  if (id === undefined || id === null) throw VlmError.invalid(path, 'missing');
  if (id instanceof Uint8Array) {
    if (id.length === 0 && emptyAllowed) return '';
    if (id.length === bytes) return Buffer.from(id).toString('hex');
  } else if (typeof id === 'string') {
    if (id.length === bytes * 2 && /^[0-9a-fA-F]+$/.test(id)) return id.toLowerCase();
    // Strict base64 only: Buffer.from would skip junk characters and accept nearly anything.
    if (/^[A-Za-z0-9+/]*={0,2}$/.test(id)) {
      const raw = Buffer.from(id, 'base64');
      if (raw.length === bytes) return raw.toString('hex');
    }
  }
  throw VlmError.invalid(path, `${shown(id)} is neither ${bytes * 2} hex digits nor base64 of ${bytes} bytes`);
}

function enumOf<T extends string>(v: unknown, names: readonly T[], prefix: string, fallback: T): T {
  if (typeof v === 'number') return names[v] ?? fallback;
  if (typeof v === 'string') {
    const bare = v.startsWith(prefix) ? v.slice(prefix.length) : v;
    if ((names as readonly string[]).includes(bare)) return bare as T;
  }
  return fallback;
}
