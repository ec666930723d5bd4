/**
 * Analytic FLOPs from the architecture and the real token counts, as 2 x multiply-accumulates
 * (the papers' other convention, MACs, is `macs()` = FLOPs / 2: SparseVLM's 4.62 T is the decoder's
 * prefill of LLaVA-1.5-7B at 576 visual and about 118 other tokens; FiCoCo's 8.5 T is 2 x MACs at 576 +
 * 60).
 * Matrix products only: norms, activations, softmax and RoPE are O(n d) and left out, as the papers
 * do. Attention counts the full T x (P+T) score matrix (no causal halving), as SparseVLM's
 * 4nd^2 + 2n^2d + 3ndm does.
 */
import type { LanguageArch, Manifest, VisionArch } from '../bundle/manifest';

export interface StageFlops {
  /** vision/embed and every encoder layer actually run. */
  vision: number;
  projector: number;
  /** language/embed is a lookup (0); decoder layers over the prompt, then the head on one position. */
  prefill: number;
  decode: number;
  /** scores graphs run for reduction methods (their projections again, V included on the language side, and QK^T). */
  overhead: number;
}

export function emptyFlops(): StageFlops {
  return { vision: 0, projector: 0, prefill: 0, decode: 0, overhead: 0 };
}

export function totalFlops(f: StageFlops): number {
  return f.vision + f.projector + f.prefill + f.decode + f.overhead;
}

export function macs(f: StageFlops): StageFlops {
  return { vision: f.vision / 2, projector: f.projector / 2, prefill: f.prefill / 2, decode: f.decode / 2, overhead: f.overhead / 2 };
}

export function addFlops(a: StageFlops, b: Partial<StageFlops>): StageFlops {
  return {
    vision: a.vision + (b.vision ?? 0),
    projector: a.projector + (b.projector ?? 0),
    prefill: a.prefill + (b.prefill ?? 0),
    decode: a.decode + (b.decode ?? 0),
    overhead: a.overhead + (b.overhead ?? 0),
  };
}

const F = 2; // FLOPs per multiply-accumulate

// --- vision ---------------------------------------------------------------------------------------

export function visionEmbedFlops(v: VisionArch): number {
  return F * v.num_patches * 3 * v.patch_size * v.patch_size * v.hidden_size;
}

/** QKV, T x T scores, weighted sum, output projection, for T tokens (LN1 is a norm: not counted). */
export function visionAttnFlops(v: VisionArch, T: number): number {
  const inner = v.num_heads * v.head_dim;
  return F * (4 * T * v.hidden_size * inner + 2 * T * T * inner);
}

export function visionMlpFlops(v: VisionArch, T: number): number {
  return F * 2 * T * v.hidden_size * v.intermediate_size;
}

/** The scores graph: Q and K projections and QK^T again. */
export function visionScoresFlops(v: VisionArch, T: number): number {
  const inner = v.num_heads * v.head_dim;
  return F * (2 * T * v.hidden_size * inner + T * T * inner);
}

export function projectorFlops(m: Manifest, N: number): number {
  return F * N * (m.projector.input_size * m.projector.output_size + m.projector.output_size * m.projector.output_size);
}

// --- language -------------------------------------------------------------------------------------

/** T new tokens attending over past + new = C keys. */
export function languageAttnFlops(l: LanguageArch, T: number, C: number): number {
  const q = l.num_heads * l.head_dim;
  const kv = l.num_kv_heads * l.head_dim;
  return F * (T * l.hidden_size * (q + 2 * kv) + T * q * l.hidden_size + 2 * T * C * q);
}

export function languageMlpFlops(l: LanguageArch, T: number): number {
  return F * 3 * T * l.hidden_size * l.intermediate_size;
}

/**
 * The scores graph: Q, K and QK^T again, and V too: the exported graph builds its projections with the
 * attention graph's code, and ONNX Runtime computes an unused V all the same (measured on the bundles'
 * graphs with optimisation `all` and `disabled`). Counted because it runs; dropping it from the
 * export would save it.
 */
export function languageScoresFlops(l: LanguageArch, T: number, C: number): number {
  const q = l.num_heads * l.head_dim;
  const kv = l.num_kv_heads * l.head_dim;
  return F * (T * l.hidden_size * (q + 2 * kv) + T * C * q);
}

export function headFlops(l: LanguageArch, T: number): number {
  return F * T * l.hidden_size * l.vocab_size;
}
