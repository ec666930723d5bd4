/**
 * GetModelInfo's answer, the same for both services: what model runs (id, content hash, dtype,
 * geometry), which methods it offers and the budget range each can reach, where it runs.
 */
import type { Manifest } from '../../shared/bundle/manifest';
import type { LanguageGeometry, VisionGeometry } from '../../shared/methods/types';
import { feasibleBudgets } from '../../shared/methods/policy';
import { languageMethodNames, visionMethodNames } from '../../shared/methods/registry';
import { ElementType, type ModelInfo } from '../../gen/vlm/v1/common';

export interface ModelFacts {
  readonly manifest: Manifest;
  readonly visionGeometry: VisionGeometry;
  readonly languageGeometry: Omit<LanguageGeometry, 'visualTokens'>;
}

export interface Placement {
  /** Execution provider sessions actually run on, e.g. "cpu" or "cuda". */
  readonly provider: string;
  /** e.g. "cpu" or "cuda:0". */
  readonly device: string;
  readonly maxImageBytes: number;
  readonly maxNewTokens: number;
}

export function modelInfo(model: ModelFacts, placement: Placement): ModelInfo {
  const m = model.manifest;
  return {
    modelId: m.model_id,
    contentHash: m.content_hash,
    ioDtype: m.io_dtype === 'float16' ? ElementType.ELEMENT_TYPE_FLOAT16 : ElementType.ELEMENT_TYPE_FLOAT32,
    visualTokens: m.vision.num_patches,
    embedWidth: m.language.hidden_size,
    visionLayers: m.vision.num_layers,
    languageLayers: m.language.num_layers,
    visionMethods: visionMethodNames(),
    languageMethods: languageMethodNames(),
    budgetRanges: feasibleBudgets(model.visionGeometry, model.languageGeometry).map((b) => ({
      visionMethod: b.vision,
      languageMethod: b.language,
      preset: b.preset ?? '',
      mode: b.mode,
      minTokens: b.min,
      maxTokens: b.max,
    })),
    provider: placement.provider,
    device: placement.device,
    maxImageBytes: BigInt(placement.maxImageBytes),
    defaultMaxTokens: Math.min(m.generation.max_new_tokens, placement.maxNewTokens),
    imageSize: m.preprocess.size,
  };
}

export function placementOf(where: { readonly provider: string; readonly device: string }, limits: { readonly maxImageBytes: number; readonly maxNewTokens: number }): Placement {
  return { provider: where.provider, device: where.device, maxImageBytes: limits.maxImageBytes, maxNewTokens: limits.maxNewTokens };
}
