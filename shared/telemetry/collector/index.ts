export { startTraceReceiver, type TraceReceiver, type TraceReceiverOptions } from './receiver';
export { decodeTraceRequest } from './otlp-proto';
