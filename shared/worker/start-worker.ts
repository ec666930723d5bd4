import { Worker } from 'node:worker_threads';

/**
 * A worker thread running `file`, the built JavaScript or, under vitest and tsx, the TypeScript
 * source through tsx's require hook. Its stdout and stderr are the process's: it logs like the rest.
 */
export function startWorker(file: string, workerData: unknown): Worker {
  const ts = file.endsWith('.ts');
  return new Worker(file, { workerData, execArgv: ts ? ['--require', require.resolve('tsx/cjs')] : [], stdout: false, stderr: false });
}
