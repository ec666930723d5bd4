/**
 * Message size limits, set on purpose rather than left at gRPC's defaults:
 * - receive: above the image byte limit plus room for the prompt and policy, so an oversize image
 *   reaches the service and is answered with INVALID_ARGUMENT naming the limit, instead of the
 *   transport's anonymous RESOURCE_EXHAUSTED; anything larger still is cut off by the transport.
 * - send: gRPC's 4 MiB default; tensor chunks stay under 3 MiB (tensor-stream.ts).
 */
import type { LimitsConfig } from '../../shared/config';

const ENVELOPE_BYTES = 256 * 1024;
export const SEND_LIMIT = 4 * 1024 * 1024;

/** Image limit + the prompt at 4 UTF-8 bytes per character + 256 KiB for everything else, + 1 MiB slack. */
export function receiveLimit(limits: Pick<LimitsConfig, 'maxImageBytes' | 'maxPromptChars'>): number {
  return limits.maxImageBytes + 4 * limits.maxPromptChars + ENVELOPE_BYTES + 1024 * 1024;
}
