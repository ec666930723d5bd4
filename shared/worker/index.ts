export { InferencePool, type PoolDeps, type CallOptions } from './pool';
export type { AskResult, WarmUp } from './protocol';
