/**
 * GetModelInfo's answer, the same for both services: what model runs (id, content hash, dtype,
 * geometry), which methods it offers, the budget range each can reach and the parameters each reads,
 * the limits a request must stay within, and where it runs.
 */
import type { Manifest } from '../../shared/bundle/manifest';
import type { LimitsConfig } from '../../shared/config';
import { feasibleBudgets, SPLIT_PARAM_SPECS } from '../../shared/methods/policy';
import { LANGUAGE_METHODS, languageMethodNames, VISION_METHODS, visionMethodNames } from '../../shared/methods/registry';
import type { LanguageGeometry, ParamDefault, ParamSpecs, VisionGeometry } from '../../shared/methods/types';
import { ElementType, type MethodParam, type ModelInfo } from '../../gen/vlm/v1/common';
import { paramValueToWire } from './wire';
import { receiveLimit } from './message-limits';

export interface ModelFacts {
  readonly manifest: Manifest;
  readonly visionGeometry: VisionGeometry;
  readonly languageGeometry: Omit<LanguageGeometry, 'visualTokens'>;
}

/** The request limits a client must stay within, as the service enforces them. */
export type AdvertisedLimits = Pick<LimitsConfig, 'maxImageBytes' | 'maxNewTokens' | 'maxPromptChars' | 'maxImagePixels' | 'maxAspectRatio' | 'deadlineMs' | 'maxDeadlineMs'>;

export interface Placement extends AdvertisedLimits {
  /** Execution provider sessions actually run on, e.g. "cpu" or "cuda". */
  readonly provider: string;
  /** e.g. "cpu" or "cuda:0". */
  readonly device: string;
}

function defaultOf(d: ParamDefault): Pick<MethodParam, 'defaultValue' | 'defaultRule'> {
  if (typeof d !== 'object') return { defaultValue: paramValueToWire(d), defaultRule: '' };
  return 'rule' in d ? { defaultValue: undefined, defaultRule: d.rule } : { defaultValue: paramValueToWire(d.value), defaultRule: `read only with ${d.onlyWith}; refused otherwise` };
}

/** Every parameter a request may set in policy.params, per method and for the budget split. */
function methodParams(): MethodParam[] {
  const rows = (side: string, method: string, specs: ParamSpecs): MethodParam[] =>
    Object.entries(specs).map(([name, spec]) => ({
      side,
      method,
      name,
      type: spec.type,
      min: spec.type === 'text' ? undefined : spec.min,
      max: spec.type === 'text' ? undefined : spec.max,
      choices: spec.type === 'text' ? [...spec.values] : [],
      ...defaultOf(spec.default),
    }));
  return [
    ...[...VISION_METHODS].flatMap(([name, r]) => rows('vision', name, r.params)),
    ...[...LANGUAGE_METHODS].flatMap(([name, r]) => rows('language', name, r.params)),
    ...rows('', '', SPLIT_PARAM_SPECS),
  ];
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
    maxPromptChars: placement.maxPromptChars,
    maxTokensLimit: placement.maxNewTokens,
    maxPositions: m.language.max_positions,
    maxImagePixels: BigInt(placement.maxImagePixels),
    maxAspectRatio: placement.maxAspectRatio,
    methodParams: methodParams(),
    padsToSquare: m.preprocess.resize === 'pad_to_square',
    defaultDeadlineMs: placement.deadlineMs,
    maxDeadlineMs: placement.maxDeadlineMs,
    maxRequestBytes: BigInt(receiveLimit(placement)),
  };
}

export function placementOf(where: { readonly provider: string; readonly device: string }, limits: AdvertisedLimits): Placement {
  const { maxImageBytes, maxNewTokens, maxPromptChars, maxImagePixels, maxAspectRatio, deadlineMs, maxDeadlineMs } = limits;
  return { provider: where.provider, device: where.device, maxImageBytes, maxNewTokens, maxPromptChars, maxImagePixels, maxAspectRatio, deadlineMs, maxDeadlineMs };
}
