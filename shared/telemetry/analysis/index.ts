export type { SpanRecord, SpanEventRecord, Attributes as SpanAttributes, AttributeValue, SpanKindName, StatusName } from './span-record';
export { parseTraceText, type TraceFileFormat } from './load';
export { spansFromOtlp, isOtlpTraces } from './otlp-json';
export { spansFromJaeger, isJaegerTraces } from './jaeger';
export { analyseTraces, stageKey, type TraceReport, type StageReport, type GroupReport, type TraceSummary, type ClockOffsetReport } from './report';
export { buildTraces, eventMillis, type TraceTree, type TimedSpan, type ClockOffset } from './trace-tree';
export { quantile, summarise, type Summary } from './stats';
export { formatReport } from './format-text';
export { renderHtml } from './html';
