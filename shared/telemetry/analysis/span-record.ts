/**
 * The flat span record: one JSON object per line in the files `vlm trace collect` writes, and the one
 * shape the trace report reads whatever the source (OTLP JSON or protobuf, Jaeger, Tempo). Times are
 * decimal strings of Unix nanoseconds because a double cannot hold them exactly.
 */
export type AttributeValue = string | number | boolean | readonly (string | number | boolean)[];
export type Attributes = Record<string, AttributeValue>;

export type SpanKindName = 'INTERNAL' | 'SERVER' | 'CLIENT' | 'PRODUCER' | 'CONSUMER' | 'UNSPECIFIED';
export type StatusName = 'UNSET' | 'OK' | 'ERROR';

export interface SpanEventRecord {
  name: string;
  timeUnixNano: string;
  attributes: Attributes;
}

export interface SpanRecord {
  /** 32 lowercase hex digits. */
  traceId: string;
  /** 16 lowercase hex digits. */
  spanId: string;
  /** '' for a span without a parent. */
  parentSpanId: string;
  name: string;
  /** The resource's service.name. */
  service: string;
  kind: SpanKindName;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes: Attributes;
  events: SpanEventRecord[];
  status: { code: StatusName; message?: string };
}

