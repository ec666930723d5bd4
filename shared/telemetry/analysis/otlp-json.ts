import { VlmError } from '../../errors';
import type { AttributeValue, Attributes, SpanEventRecord, SpanKindName, SpanRecord, StatusName } from './span-record';

/**
 * OTLP trace data (ExportTraceServiceRequest, or the TracesData that Tempo returns) in any of its JSON
 * spellings, flattened into SpanRecords. Tolerated variants, because every producer picks its own:
 * `resourceSpans` or Tempo's `batches`, optionally under `trace`; `scopeSpans` or the older
 * `instrumentationLibrarySpans`; ids in hex (the OTLP/JSON spec) or base64 (protojson, Tempo); times as
 * strings or numbers; enums as numbers or names. The protobuf decoder hands its objects here as well.
 */

type Json = Record<string, unknown>;

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
  const root = (isObject((doc as Json).trace) ? (doc as Json).trace : doc) as Json;
  const resourceSpans = (root.resourceSpans ?? root.batches) as unknown[];
  const out: SpanRecord[] = [];
  for (const rs of resourceSpans) {
    if (!isObject(rs)) continue;
    const resource = attributesOf(isObject(rs.resource) ? rs.resource.attributes : undefined);
    const service = typeof resource['service.name'] === 'string' ? resource['service.name'] : 'unknown';
    const scopes = (rs.scopeSpans ?? rs.instrumentationLibrarySpans ?? []) as unknown[];
    for (const scope of scopes) {
      if (!isObject(scope) || !Array.isArray(scope.spans)) continue;
      for (const span of scope.spans) if (isObject(span)) out.push(spanOf(span, service));
    }
  }
  return out;
}

function spanOf(s: Json, service: string): SpanRecord {
  const status = isObject(s.status) ? s.status : {};
  const message = typeof status.message === 'string' && status.message !== '' ? status.message : undefined;
  return {
    traceId: idToHex(s.traceId, 16, 'traceId'),
    spanId: idToHex(s.spanId, 8, 'spanId'),
    parentSpanId: s.parentSpanId === undefined || s.parentSpanId === '' ? '' : idToHex(s.parentSpanId, 8, 'parentSpanId'),
    name: String(s.name ?? ''),
    service,
    kind: enumOf(s.kind, KINDS, 'SPAN_KIND_', 'UNSPECIFIED'),
    startTimeUnixNano: nanos(s.startTimeUnixNano),
    endTimeUnixNano: nanos(s.endTimeUnixNano),
    attributes: attributesOf(s.attributes),
    events: Array.isArray(s.events) ? s.events.filter(isObject).map(eventOf) : [],
    status: message === undefined ? { code: enumOf(status.code, STATUSES, 'STATUS_CODE_', 'UNSET') } : { code: enumOf(status.code, STATUSES, 'STATUS_CODE_', 'UNSET'), message },
  };
}

function eventOf(e: Json): SpanEventRecord {
  return { name: String(e.name ?? ''), timeUnixNano: nanos(e.timeUnixNano), attributes: attributesOf(e.attributes) };
}

export function attributesOf(list: unknown): Attributes {
  const out: Attributes = {};
  if (!Array.isArray(list)) return out;
  for (const kv of list) {
    if (!isObject(kv) || typeof kv.key !== 'string') continue;
    const v = anyValue(kv.value);
    if (v !== undefined) out[kv.key] = v;
  }
  return out;
}

function anyValue(v: unknown): AttributeValue | undefined {
  if (!isObject(v)) return undefined;
  if (v.stringValue !== undefined) return String(v.stringValue);
  if (v.boolValue !== undefined) return Boolean(v.boolValue);
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return Number(v.doubleValue);
  if (v.bytesValue !== undefined) return typeof v.bytesValue === 'string' ? v.bytesValue : Buffer.from(v.bytesValue as Uint8Array).toString('base64');
  if (isObject(v.arrayValue)) {
    const values = Array.isArray(v.arrayValue.values) ? v.arrayValue.values : [];
    return values.map(anyValue).filter((x): x is string | number | boolean => x !== undefined && !Array.isArray(x));
  }
  if (isObject(v.kvlistValue)) return JSON.stringify(attributesOf(v.kvlistValue.values));
  return undefined;
}

/** Hex as the OTLP/JSON spec says, base64 as protojson (Tempo) writes, or raw bytes from protobuf. */
export function idToHex(id: unknown, bytes: number, field: string): string {
  if (id instanceof Uint8Array) {
    if (id.length === 0) return '';
    if (id.length === bytes) return Buffer.from(id).toString('hex');
  } else if (typeof id === 'string') {
    if (id.length === bytes * 2 && /^[0-9a-fA-F]+$/.test(id)) return id.toLowerCase();
    const raw = Buffer.from(id, 'base64');
    if (raw.length === bytes) return raw.toString('hex');
  }
  throw new VlmError('INVALID_ARGUMENT', `${field} ${JSON.stringify(id)} is neither ${bytes * 2} hex digits nor base64 of ${bytes} bytes`);
}

function nanos(t: unknown): string {
  if (typeof t === 'string' && /^\d+$/.test(t)) return t;
  if (typeof t === 'number' && Number.isFinite(t)) return BigInt(Math.round(t)).toString();
  if (typeof t === 'bigint') return t.toString();
  if (isObject(t) && typeof t.low === 'number' && typeof t.high === 'number') {
    return ((BigInt(t.high >>> 0) << 32n) | BigInt(t.low >>> 0)).toString();
  }
  throw new VlmError('INVALID_ARGUMENT', `a span time ${JSON.stringify(t)} is not a count of nanoseconds`);
}

function enumOf<T extends string>(v: unknown, names: readonly T[], prefix: string, fallback: T): T {
  if (typeof v === 'number') return names[v] ?? fallback;
  if (typeof v === 'string') {
    const bare = v.startsWith(prefix) ? v.slice(prefix.length) : v;
    if ((names as readonly string[]).includes(bare)) return bare as T;
  }
  return fallback;
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
