/**
 * What a `vlm serve <role>` started with an IPC channel tells its parent once it is serving: the port
 * it bound, so a parent can start it on port 0 (`serve all`, and the child services of `vlm demo` and
 * the benches) instead of picking a free port and hoping it stays free until the bind.
 */
export interface ServingMessage {
  readonly type: 'serving';
  readonly port: number;
}
