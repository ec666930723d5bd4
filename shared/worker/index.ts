export { InferencePool, type PoolDeps, type CallOptions, type PoolCloseReport, type PoolPlace } from './pool';
export type { AskResult, WarmUp } from './protocol';
