/**
 * The calls a server's handlers are running. A drain whose grace period runs out ends them through
 * their own signals, so each answers UNAVAILABLE SHUTTING_DOWN (which clients and the vision hop
 * retry on another replica) before the transport is closed; a call the transport cuts off ends
 * CANCELLED, which clients take for their own cancel and do not retry.
 */
import type { VlmError } from '../../shared/errors';

export class ActiveCalls {
  private readonly controllers = new Set<AbortController>();

  /** Holds `controller` until the returned function is called. */
  track(controller: AbortController): () => void {
    this.controllers.add(controller);
    return () => void this.controllers.delete(controller);
  }

  /** Aborts every call held with `reason`; returns how many there were. */
  abortAll(reason: VlmError): number {
    const n = this.controllers.size;
    for (const c of [...this.controllers]) c.abort(reason);
    return n;
  }
}
