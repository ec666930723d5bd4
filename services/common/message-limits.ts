/**
 * Message size limits, set on purpose rather than left at gRPC's defaults:
 * - receive: twice the image byte limit plus room for the prompt and policy, so an image up to twice
 *   the limit reaches the service and is answered with INVALID_ARGUMENT naming the limit, instead of
 *   the transport's anonymous RESOURCE_EXHAUSTED, which reads as "retry later" and would be retried
 *   (an image a little over the limit is the usual mistake); only a request larger still is cut off
 *   by the transport.
 * - send: gRPC's 4 MiB default; tensor chunks stay under 3 MiB (tensor-stream.ts).
 */
import type { LimitsConfig } from '../../shared/config';

/** What a request may carry besides its image and prompt (policy, sampling, limits): ample for any real one. */
export const ENVELOPE_BYTES = 256 * 1024;
export const SEND_LIMIT = 4 * 1024 * 1024;

/** Twice the image limit + the prompt at 4 UTF-8 bytes per character + 256 KiB for everything else, + 1 MiB slack. */
export function receiveLimit(limits: Pick<LimitsConfig, 'maxImageBytes' | 'maxPromptChars'>): number {
  return 2 * limits.maxImageBytes + 4 * limits.maxPromptChars + ENVELOPE_BYTES + 1024 * 1024;
}
