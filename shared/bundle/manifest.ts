/**
 * manifest.json of a bundle, format version 1 (docs/bundle-format.md). These types are what the
 * loader hands out after validation; field names follow the JSON exactly.
 */
import type { FloatDType } from '../tensor/dtype';

export const SUPPORTED_FORMAT_VERSION = 1;

export type TensorDType = FloatDType | 'int64';
/** A dimension: a fixed size or a symbol (B, T, P, PT = P+T, N). */
export type Dim = number | string;

export interface TensorDecl {
  readonly name: string;
  readonly dtype: TensorDType;
  readonly shape: readonly Dim[];
}

export interface GraphDecl {
  readonly path: string;
  readonly inputs: readonly TensorDecl[];
  readonly outputs: readonly TensorDecl[];
  /** Bundle-relative external-data files the graph reads (a layer's attn and scores share one). */
  readonly external_data?: readonly string[];
}

export interface FileEntry {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
}

export interface VisionArch {
  readonly image_size: number;
  readonly patch_size: number;
  readonly grid: number;
  readonly num_patches: number;
  readonly hidden_size: number;
  readonly num_heads: number;
  readonly head_dim: number;
  readonly intermediate_size: number;
  readonly num_layers: number;
  readonly trained_layers: number;
  readonly class_token: boolean;
  readonly layer_norm_eps: number;
  readonly activation: 'gelu' | 'quick_gelu';
}

export interface ProjectorArch {
  readonly type: 'mlp2x_gelu';
  readonly input_size: number;
  readonly output_size: number;
}

export interface LanguageArch {
  readonly hidden_size: number;
  readonly num_layers: number;
  readonly num_heads: number;
  readonly num_kv_heads: number;
  readonly head_dim: number;
  readonly intermediate_size: number;
  readonly rope_theta: number;
  readonly rms_norm_eps: number;
  readonly vocab_size: number;
  readonly max_positions: number;
  /**
   * How attention graphs hand back the KV cache (absent = `present`). `present`: caches are head-major
   * [B,Hkv,P,dh] and each call returns the whole cache `present_key`/`present_value` [B,Hkv,P+T,dh].
   * `append`: caches are sequence-major [B,P,Hkv,dh] and each call returns only its rows
   * `new_key`/`new_value` [B,T,Hkv,dh], which the runtime appends in place.
   */
  readonly kv_cache?: KvCacheLayout;
}

export type KvCacheLayout = 'present' | 'append';

/** The attention outputs that carry the key and value cache, per layout. */
export const KV_CACHE_OUTPUTS = {
  present: ['present_key', 'present_value'],
  append: ['new_key', 'new_value'],
} as const satisfies Record<KvCacheLayout, readonly [string, string]>;

export function kvCacheLayout(m: Manifest): KvCacheLayout {
  return m.language.kv_cache ?? 'present';
}

export type ResizeMode = 'squash' | 'shortest_edge_center_crop' | 'pad_to_square';
export type Resample = 'bicubic' | 'bilinear' | 'nearest';
export type Rgb = readonly [number, number, number];

export interface PreprocessSpec {
  readonly size: number;
  readonly resize: ResizeMode;
  readonly resample: Resample;
  readonly pad_color: Rgb;
  readonly alpha_background: Rgb;
  readonly rescale: number;
  readonly mean: readonly [number, number, number];
  readonly std: readonly [number, number, number];
}

export interface PromptSpec {
  readonly template: string;
  readonly image_token: string;
  readonly add_bos: boolean;
}

export interface TokenSpec {
  readonly bos_id: number;
  readonly eos_id: number;
  readonly pad_id: number;
  readonly stop_ids: readonly number[];
}

export interface Manifest {
  readonly format: 'vlm-bundle';
  readonly format_version: number;
  readonly model_id: string;
  readonly content_hash: string;
  readonly io_dtype: FloatDType;
  readonly vision: VisionArch;
  readonly projector: ProjectorArch;
  readonly language: LanguageArch;
  readonly preprocess: PreprocessSpec;
  readonly prompt: PromptSpec;
  readonly tokens: TokenSpec;
  readonly generation: { readonly max_new_tokens: number };
  readonly reduction: Readonly<Record<string, unknown>>;
  readonly graphs: Readonly<Record<string, GraphDecl>>;
  readonly files: readonly FileEntry[];
  readonly source?: unknown;
}

/** Stage names as the manifest keys them: `vision/layer_03.attn`, `language/head`. */
export function layerStage(side: 'vision' | 'language', layer: number, half: 'attn' | 'scores' | 'mlp'): string {
  return `${side}/layer_${String(layer).padStart(2, '0')}.${half}`;
}
