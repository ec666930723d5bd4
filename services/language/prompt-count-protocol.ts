/** Messages between the language service and its prompt-counting thread. */
import type { VlmErrorJSON } from '../../shared/errors';
import type { PromptSpec, TokenSpec } from '../../shared/bundle/manifest';
import type { PromptLimits } from '../../shared/tokenizer/tokenizer';

export interface CountWorkerInit {
  readonly tokenizerFile: string;
  readonly prompt: PromptSpec;
  readonly tokens: TokenSpec;
  readonly limits: PromptLimits;
}

export interface CountRequest {
  readonly id: number;
  readonly question: string;
}

export type CountAnswer = { readonly id: number; readonly count: number } | { readonly id: number; readonly error: VlmErrorJSON };
