export { InferencePool, type PoolDeps, type CallOptions, type PoolCloseReport } from './pool';
export type { AskResult, WarmUp } from './protocol';
