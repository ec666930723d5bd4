export { InferencePool, BUSY_RETRY_MS, type PoolDeps, type CallOptions, type PoolCloseReport, type PoolPlace } from './pool';
export { liveWorkerThreads, startWorker } from './start-worker';
export type { AskResult, WarmUp } from './protocol';
