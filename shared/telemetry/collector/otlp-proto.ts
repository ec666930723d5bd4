import * as protobuf from 'protobufjs';

/**
 * A hand-written protobufjs descriptor of the part of opentelemetry-proto (v1.x, Apache-2.0) that an
 * ExportTraceServiceRequest uses: `opentelemetry.proto.collector.trace.v1` and the trace, resource and
 * common messages it reaches. Field numbers and types are copied from the upstream .proto files;
 * message names stay upstream's, field names are protobufjs's camelCase so decoded objects have the
 * OTLP/JSON shape that otlp-json.ts reads. Kept in code rather than vendored .proto files so that
 * `buf lint` of our API never sees it and nothing is parsed at run time.
 */
const field = (id: number, type: string, rule?: 'repeated') => (rule ? { id, type, rule } : { id, type });

const DESCRIPTOR = {
  nested: {
    otlp: {
      nested: {
        ExportTraceServiceRequest: { fields: { resourceSpans: field(1, 'ResourceSpans', 'repeated') } },
        ExportTraceServiceResponse: { fields: { partialSuccess: field(1, 'ExportTracePartialSuccess') } },
        ExportTracePartialSuccess: { fields: { rejectedSpans: field(1, 'int64'), errorMessage: field(2, 'string') } },
        ResourceSpans: { fields: { resource: field(1, 'Resource'), scopeSpans: field(2, 'ScopeSpans', 'repeated'), schemaUrl: field(3, 'string') } },
        Resource: { fields: { attributes: field(1, 'KeyValue', 'repeated'), droppedAttributesCount: field(2, 'uint32') } },
        ScopeSpans: { fields: { scope: field(1, 'InstrumentationScope'), spans: field(2, 'Span', 'repeated'), schemaUrl: field(3, 'string') } },
        InstrumentationScope: {
          fields: { name: field(1, 'string'), version: field(2, 'string'), attributes: field(3, 'KeyValue', 'repeated'), droppedAttributesCount: field(4, 'uint32') },
        },
        Span: {
          fields: {
            traceId: field(1, 'bytes'),
            spanId: field(2, 'bytes'),
            traceState: field(3, 'string'),
            parentSpanId: field(4, 'bytes'),
            flags: field(16, 'fixed32'),
            name: field(5, 'string'),
            kind: field(6, 'int32'),
            startTimeUnixNano: field(7, 'fixed64'),
            endTimeUnixNano: field(8, 'fixed64'),
            attributes: field(9, 'KeyValue', 'repeated'),
            droppedAttributesCount: field(10, 'uint32'),
            events: field(11, 'Event', 'repeated'),
            droppedEventsCount: field(12, 'uint32'),
            links: field(13, 'Link', 'repeated'),
            droppedLinksCount: field(14, 'uint32'),
            status: field(15, 'Status'),
          },
        },
        Event: {
          fields: { timeUnixNano: field(1, 'fixed64'), name: field(2, 'string'), attributes: field(3, 'KeyValue', 'repeated'), droppedAttributesCount: field(4, 'uint32') },
        },
        Link: {
          fields: {
            traceId: field(1, 'bytes'),
            spanId: field(2, 'bytes'),
            traceState: field(3, 'string'),
            attributes: field(4, 'KeyValue', 'repeated'),
            droppedAttributesCount: field(5, 'uint32'),
            flags: field(6, 'fixed32'),
          },
        },
        // SpanKind and StatusCode are enums upstream; as int32 they decode to the same numbers.
        Status: { fields: { message: field(2, 'string'), code: field(3, 'int32') } },
        KeyValue: { fields: { key: field(1, 'string'), value: field(2, 'AnyValue') } },
        AnyValue: {
          oneofs: { value: { oneof: ['stringValue', 'boolValue', 'intValue', 'doubleValue', 'arrayValue', 'kvlistValue', 'bytesValue'] } },
          fields: {
            stringValue: field(1, 'string'),
            boolValue: field(2, 'bool'),
            intValue: field(3, 'int64'),
            doubleValue: field(4, 'double'),
            arrayValue: field(5, 'ArrayValue'),
            kvlistValue: field(6, 'KeyValueList'),
            bytesValue: field(7, 'bytes'),
          },
        },
        ArrayValue: { fields: { values: field(1, 'AnyValue', 'repeated') } },
        KeyValueList: { fields: { values: field(1, 'KeyValue', 'repeated') } },
      },
    },
  },
};

const root = protobuf.Root.fromJSON(DESCRIPTOR);
const Request = root.lookupType('otlp.ExportTraceServiceRequest');
const Response = root.lookupType('otlp.ExportTraceServiceResponse');

/**
 * Decodes a protobuf ExportTraceServiceRequest into the OTLP/JSON object shape (ids stay bytes,
 * 64-bit numbers become decimal strings; fields at their default are left out, as on the wire).
 */
export function decodeTraceRequest(body: Uint8Array): unknown {
  const message = Request.decode(body);
  return Request.toObject(message, { longs: String, enums: Number, arrays: true });
}

/** An ExportTraceServiceResponse; empty means every span was accepted. */
export function encodeTraceResponse(rejectedSpans = 0, errorMessage = ''): Uint8Array {
  const payload = rejectedSpans === 0 && errorMessage === '' ? {} : { partialSuccess: { rejectedSpans, errorMessage } };
  return Response.encode(Response.fromObject(payload)).finish();
}
