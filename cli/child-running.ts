/**
 * Whether a spawned child process is still running. Its own module so that `vlm serve all`, whose
 * parent must not load grpc-js or sharp, shares it with child-services.ts.
 */
import type { ChildProcess } from 'node:child_process';

/** A child killed by a signal keeps exitCode null and sets signalCode instead. */
export function running(c: ChildProcess): boolean {
  return c.exitCode === null && c.signalCode === null;
}
