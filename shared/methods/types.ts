/**
 * The contract between the stage runner and the token-reduction methods.
 *
 * A method never touches ONNX Runtime. It resolves a schedule from the budget once per request, then
 * at each of its steps it receives the tensors it asked for (hidden states, and the outputs of the
 * layer's `scores` graph) and hands back a TokenCombination: which rows survive and what is merged
 * into them. The runner applies the combination to the hidden states (and, on the GPU fast path, can
 * do that on the device), so only the small decision tensors cross into JavaScript.
 *
 * Budget (one unit for every method): the number of visual tokens entering each decoder layer's
 * attention during prefill, averaged over all decoder layers, as an absolute count.
 */

export type VisionMethodName = 'none' | 'ficoco-v' | 'tome' | 'random';
export type LanguageMethodName = 'none' | 'sparsevlm' | 'ficoco-l' | 'fastv' | 'random';
/** clean: the spec's recommended re-implementation; exact: the official code's behaviour. */
export type ReductionMode = 'clean' | 'exact';

/** Row-major float32 matrix. */
export interface Matrix {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float32Array;
}

/**
 * A sparse linear map from input rows to output rows (CSR): output row k is
 * sum over j in [indptr[k], indptr[k+1]) of weight[j] * input[src[j]].
 * A pure selection has one source of weight 1 per row; weights of a merge are already normalised
 * however the method defines it (FiCoCo's self-preserving average, ToMe's size weighting, means).
 */
export interface TokenCombination {
  readonly indptr: Int32Array;
  readonly src: Int32Array;
  readonly weight: Float32Array;
}

/** What a token of the current sequence stands for. */
export interface TokenMeta {
  /** Original patch index (0..P-1) of the token's main source; -1 for CLS; -2 for a synthesised token (cluster). */
  readonly origin: Int32Array;
  /** How many original patches the token carries (ToMe's size); 1 for untouched tokens. */
  readonly size: Float32Array;
}

/** A closed range of budgets (average visual tokens per decoder layer) a method can reach. */
export interface BudgetRange {
  readonly min: number;
  readonly max: number;
}

/**
 * The type of one `policy.params` entry a method reads. Requests are checked against these before any
 * method runs, so a misspelt name or a value of the wrong kind is INVALID_ARGUMENT instead of being
 * silently replaced by the default.
 */
export type ParamSpec = (
  /** A finite number in [min, max]: the range the method's arithmetic is defined on (weights in [0, 1], divisors above 0). */
  | { readonly type: 'number'; readonly min: number; readonly max: number }
  | { readonly type: 'integer'; readonly min: number; readonly max?: number }
  | { readonly type: 'text'; readonly values: readonly string[] }
) & { readonly default: ParamDefault };

/**
 * What a request that leaves the parameter unset gets: a value; a value the method reads only beside
 * another parameter's value (`onlyWith`; sent otherwise, the parameter is refused); or, where it
 * depends on the model's anchors or on the request's budget, the rule that picks it (the resolved
 * schedule reports the value). The method reads the same constant, so GetModelInfo cannot advertise
 * a default it does not use.
 */
export type ParamDefault = number | string | { readonly value: number | string; readonly onlyWith: string } | { readonly rule: string };

/** Every `policy.params` name a method reads, and nothing else. */
export type ParamSpecs = Readonly<Record<string, ParamSpec>>;

export interface MethodOptions {
  readonly mode: ReductionMode;
  /** Method-specific overrides (e.g. { lambda: 0.35 } or { version: 'v1' }), of the names and types the method declares. */
  readonly params: Readonly<Record<string, number | string | boolean>>;
  /** Seed for methods that draw random numbers (random, tie-breaks); per request. */
  readonly seed: number;
}

// ---------------------------------------------------------------------------------------------
// Vision side: steps sit inside encoder layers, after the attention residual and before the MLP.

export interface VisionGeometry {
  /** Exported encoder layers; the feature is the output of layer numLayers-1. */
  readonly numLayers: number;
  readonly grid: number;
  readonly numPatches: number;
  readonly hasClassToken: boolean;
  readonly hiddenSize: number;
  /** Decoder depth, so a vision method can translate the (decoder-side) budget. */
  readonly languageLayers: number;
  /** manifest.reduction anchors */
  readonly anchors: Readonly<Record<string, unknown>>;
}

export interface VisionStep {
  readonly layer: number;
  /** Tokens entering the step (CLS included) and leaving it. */
  readonly tokensIn: number;
  readonly tokensOut: number;
}

export interface VisionSchedule {
  readonly method: VisionMethodName;
  readonly steps: readonly VisionStep[];
  /**
   * Visual tokens handed to the projector (CLS excluded). Like LLaVA's `[:, 1:]`, the runner drops row
   * 0 of the last layer's output: that is CLS, except in ficoco-v exact mode, whose score-sorted
   * order puts CLS last (so a patch is dropped and CLS reaches the LLM, as in the released code).
   */
  readonly outputTokens: number;
  /** ToMe: feed log(size) as attn_bias to every later layer. */
  readonly proportionalAttention: boolean;
  /** Which outputs of the scores graph each step reads. */
  readonly needs: ReadonlyArray<'scores' | 'probs' | 'keys'>;
  readonly params: Readonly<Record<string, number | string | boolean>>;
}

export interface VisionStepInput {
  readonly step: VisionStep;
  /** Residual stream after the layer's attention, T x Dv (batch 1). */
  readonly hidden: Matrix;
  /** Outputs of the layer's scores graph, as requested in schedule.needs (T x T, T x T, T x dh). */
  readonly scores?: Matrix;
  readonly probs?: Matrix;
  readonly keys?: Matrix;
  readonly tokens: TokenMeta;
  /** Per-request, per-method state (e.g. the grid of FiCoCo-V's local penalty); starts as {}. */
  readonly state: Record<string, unknown>;
}

export interface VisionStepOutput {
  readonly combine: TokenCombination;
  readonly tokens: TokenMeta;
}

export interface VisionReducer {
  readonly name: VisionMethodName;
  readonly params: ParamSpecs;
  /**
   * Turns a budget into a schedule for this geometry. `budget` null means the method's default
   * operating point. Throws VlmError INVALID_ARGUMENT naming the feasible range when infeasible.
   */
  resolve(geometry: VisionGeometry, budget: number | null, options: MethodOptions): VisionSchedule;
  /** The budgets resolve() accepts for this geometry (GetModelInfo reports it). */
  feasibleRange(geometry: VisionGeometry, options: MethodOptions): BudgetRange;
  reduce(input: VisionStepInput, schedule: VisionSchedule, options: MethodOptions): VisionStepOutput;
}

// ---------------------------------------------------------------------------------------------
// Language side: steps sit at prefill only, either inside a layer (after the attention residual,
// before the MLP: FiCoCo-L) or after a whole layer (SparseVLM; FastV's "before layer K" is "after
// layer K-1"). The scores a step reads are those of the same layer's attention.

export type PositionRule =
  /** positions 0..L-1 after every removal; a decoded token's position is that layer's cache length */
  | 'renumber'
  /** the original positions travel with the kept tokens; decode uses original prompt length + step */
  | 'keep';

export interface LanguageGeometry {
  readonly numLayers: number;
  readonly hiddenSize: number;
  readonly numHeads: number;
  /** Visual tokens arriving from the vision service (after any vision-side reduction). */
  readonly visualTokens: number;
  /** Visual tokens the unreduced encoder would produce (P), for budgets given in percent. */
  readonly fullVisualTokens: number;
  readonly anchors: Readonly<Record<string, unknown>>;
}

export interface LanguageStep {
  readonly layer: number;
  readonly at: 'after-attn' | 'after-layer';
  /** Visual tokens entering and leaving the step (text rows are never removed). */
  readonly tokensIn: number;
  readonly tokensOut: number;
}

export interface LanguageSchedule {
  readonly method: LanguageMethodName;
  readonly steps: readonly LanguageStep[];
  readonly positions: PositionRule;
  /** Visual tokens entering each decoder layer's attention (length numLayers); its mean is the achieved budget. */
  readonly perLayerVisualTokens: readonly number[];
  readonly needs: ReadonlyArray<'scores' | 'probs'>;
  readonly params: Readonly<Record<string, number | string | boolean>>;
  /**
   * True when the counts are decided at each step from the data (SparseVLM v1's rank rule): the
   * steps' tokensOut and perLayerVisualTokens are then upper bounds and the runner reports what was
   * achieved. Absent means the counts are exact.
   */
  readonly dataDependent?: boolean;
}

export interface Span {
  readonly start: number;
  readonly length: number;
}

export interface LanguagePrepareInput {
  /** Layer-0 input embeddings of the whole prompt, L x Dl. */
  readonly embeds: Matrix;
  /** The image span in the prompt. */
  readonly image: Span;
}

export interface LanguageStepInput {
  readonly step: LanguageStep;
  /** The whole current sequence's residual stream at the step's point, L x Dl. */
  readonly hidden: Matrix;
  /** Head-mean scores/probs of this layer's attention over the current sequence (L x L). */
  readonly scores?: Matrix;
  readonly probs?: Matrix;
  /** The true image span in the current sequence. */
  readonly image: Span;
  readonly state: Record<string, unknown>;
}

export interface LanguageStepOutput {
  /**
   * The rows the combination replaces: normally the image span; FiCoCo-L exact mode names the code's
   * [0, V) span instead. Rows outside it are untouched.
   */
  readonly span: Span;
  /** Replaces the span's rows with its output rows; sources index the span's input rows (0 = span.start). */
  readonly combine: TokenCombination;
  /** The true image span after the step. */
  readonly image: Span;
}

export interface LanguageReducer {
  readonly name: LanguageMethodName;
  readonly params: ParamSpecs;
  resolve(geometry: LanguageGeometry, budget: number | null, options: MethodOptions): LanguageSchedule;
  /** The budgets resolve() accepts given geometry.visualTokens arriving (GetModelInfo reports it). */
  feasibleRange(geometry: LanguageGeometry, options: MethodOptions): BudgetRange;
  /** Once per request, before layer 0 (SparseVLM's text raters). */
  prepare?(input: LanguagePrepareInput, schedule: LanguageSchedule, options: MethodOptions, state: Record<string, unknown>): void;
  reduce(input: LanguageStepInput, schedule: LanguageSchedule, options: MethodOptions): LanguageStepOutput;
}
