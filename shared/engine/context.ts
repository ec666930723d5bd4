import { throwIfAborted, VlmError } from '../errors';
import type { F32Tensor } from '../tensor/host-tensor';

/** What every engine call carries: cancellation, a deadline, and an optional tap on stage outputs. */
export interface RunContext {
  readonly signal?: AbortSignal;
  /** Epoch milliseconds; past it the call stops with DEADLINE_EXCEEDED at the next check. */
  readonly deadline?: number;
  readonly requestId?: string;
  /** Spans may carry the answer's token ids (telemetry's content capture); off when absent. */
  readonly captureContent?: boolean;
  /**
   * Called with every stage output as `<stage>:<output>` (e.g. `vision/layer_03.mlp:hidden_out`),
   * host float32, batch 1. Golden tests use it; the data must not be modified.
   */
  readonly tap?: (key: string, tensor: F32Tensor) => void;
}

/** Checked between layers, reduction steps and decode steps. */
export function checkContinue(ctx: RunContext): void {
  throwIfAborted(ctx.signal);
  if (ctx.deadline !== undefined && Date.now() > ctx.deadline) {
    throw new VlmError('DEADLINE_EXCEEDED', `the request ran past its deadline (${new Date(ctx.deadline).toISOString()})`);
  }
}
