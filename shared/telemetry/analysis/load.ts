import { VlmError } from '../../errors';
import { isJaegerTraces, spansFromJaeger } from './jaeger';
import { isOtlpTraces, spansFromOtlp } from './otlp-json';
import type { SpanRecord } from './span-record';

export type TraceFileFormat = 'span-lines' | 'otlp-json' | 'otlp-json-lines' | 'jaeger';

/**
 * Reads any trace file the report accepts and says which format it was:
 * - span lines: what `vlm trace collect` writes (one SpanRecord per line);
 * - OTLP JSON: one ExportTraceServiceRequest / TracesData document (Tempo's `/api/traces/{id}`), or one
 *   per line (the OpenTelemetry Collector's file exporter);
 * - Jaeger: the query API's `{data: [...]}`.
 */
export function parseTraceText(text: string): { format: TraceFileFormat; spans: SpanRecord[] } {
  const trimmed = text.trim();
  if (trimmed === '') return { format: 'span-lines', spans: [] };
  const whole = tryParse(trimmed);
  if (whole !== undefined && !Array.isArray(whole) && !isSpanRecordLike(whole)) {
    if (isJaegerTraces(whole)) return { format: 'jaeger', spans: spansFromJaeger(whole) };
    if (isOtlpTraces(whole)) return { format: 'otlp-json', spans: spansFromOtlp(whole) };
    throw new VlmError('INVALID_ARGUMENT', 'unrecognised trace JSON: expected span lines, OTLP JSON (resourceSpans/batches) or Jaeger ({data: [...]})');
  }
  const spans: SpanRecord[] = [];
  let sawOtlp = false;
  const lines = trimmed.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const doc = tryParse(line);
    if (doc === undefined) throw new VlmError('INVALID_ARGUMENT', `line ${i + 1} is not JSON`);
    if (isSpanRecordLike(doc)) spans.push(normaliseRecord(doc as Record<string, unknown>));
    else if (isOtlpTraces(doc)) {
      sawOtlp = true;
      spans.push(...spansFromOtlp(doc));
    } else throw new VlmError('INVALID_ARGUMENT', `line ${i + 1} is neither a span record (traceId, spanId, name, startTimeUnixNano) nor OTLP JSON`);
  }
  return { format: sawOtlp ? 'otlp-json-lines' : 'span-lines', spans };
}

function isSpanRecordLike(doc: unknown): boolean {
  if (typeof doc !== 'object' || doc === null) return false;
  const d = doc as Record<string, unknown>;
  return typeof d.traceId === 'string' && typeof d.spanId === 'string' && typeof d.name === 'string' && d.startTimeUnixNano !== undefined;
}

/** Fills optional fields so hand-written fixtures may leave them out. */
function normaliseRecord(d: Record<string, unknown>): SpanRecord {
  return {
    traceId: String(d.traceId),
    spanId: String(d.spanId),
    parentSpanId: typeof d.parentSpanId === 'string' ? d.parentSpanId : '',
    name: String(d.name),
    service: typeof d.service === 'string' ? d.service : 'unknown',
    kind: (d.kind as SpanRecord['kind']) ?? 'INTERNAL',
    startTimeUnixNano: String(d.startTimeUnixNano),
    endTimeUnixNano: String(d.endTimeUnixNano),
    attributes: (d.attributes as SpanRecord['attributes']) ?? {},
    events: (d.events as SpanRecord['events']) ?? [],
    status: (d.status as SpanRecord['status']) ?? { code: 'UNSET' },
  };
}

function tryParse(s: string): unknown {
  try {
    return JSON.parse(s) as unknown;
  } catch {
    return undefined;
  }
}
