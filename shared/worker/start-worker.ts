import { Worker } from 'node:worker_threads';

/**
 * A worker thread running `file`, the built JavaScript or, under vitest and tsx, the TypeScript
 * source through tsx's require hook. Its stdout and stderr are the process's: it logs like the rest.
 */
export function startWorker(file: string, workerData: unknown): Worker {
  const ts = file.endsWith('.ts');
  const worker = new Worker(file, { workerData, execArgv: ts ? ['--require', require.resolve('tsx/cjs')] : [], stdout: false, stderr: false });
  live++;
  worker.once('exit', () => live--);
  return worker;
}

let live = 0;

/**
 * Worker threads this process has started that have not exited. process.exit() with one inside a
 * native model call (a model load, a warm-up) tears it down mid-call and the process aborts.
 */
export function liveWorkerThreads(): number {
  return live;
}
