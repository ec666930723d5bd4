/**
 * A loaded model: the bundle (manifest + stage sessions), its tokenizer, and the geometry the
 * reduction methods resolve schedules against. Family differences are manifest data, not subclasses.
 */
import * as path from 'node:path';
import { loadBundle, type Bundle, type ModelSide } from '../bundle/loader';
import type { Manifest } from '../bundle/manifest';
import type { LimitsConfig, ModelConfig, RuntimeConfig } from '../config';
import type { Logger } from '../log';
import type { LanguageGeometry, VisionGeometry } from '../methods/types';
import { loadTokenizer, type TextTokenizer } from '../tokenizer/tokenizer';

export interface LoadedModel {
  readonly bundle: Bundle;
  readonly manifest: Manifest;
  readonly tokenizer: TextTokenizer;
  readonly limits: LimitsConfig;
  readonly visionGeometry: VisionGeometry;
  /** Without visualTokens, which depends on what arrives from the vision side. */
  readonly languageGeometry: Omit<LanguageGeometry, 'visualTokens'>;
}

export interface ModelDeps {
  readonly model: ModelConfig;
  readonly runtime: RuntimeConfig;
  readonly limits: LimitsConfig;
  readonly side?: ModelSide;
  readonly log?: Logger;
}

export function geometryOf(m: Manifest): { vision: VisionGeometry; language: Omit<LanguageGeometry, 'visualTokens'> } {
  return {
    vision: {
      numLayers: m.vision.num_layers,
      grid: m.vision.grid,
      numPatches: m.vision.num_patches,
      hasClassToken: m.vision.class_token,
      hiddenSize: m.vision.hidden_size,
      languageLayers: m.language.num_layers,
      anchors: m.reduction,
    },
    language: {
      numLayers: m.language.num_layers,
      hiddenSize: m.language.hidden_size,
      numHeads: m.language.num_heads,
      fullVisualTokens: m.vision.num_patches,
      anchors: m.reduction,
    },
  };
}

export async function loadModel(deps: ModelDeps): Promise<LoadedModel> {
  const bundle = await loadBundle(deps.model.dir, { model: deps.model, runtime: deps.runtime, side: deps.side, log: deps.log });
  const tokenizer = await loadTokenizer(path.join(bundle.dir, 'tokenizer.json'));
  const g = geometryOf(bundle.manifest);
  return { bundle, manifest: bundle.manifest, tokenizer, limits: deps.limits, visionGeometry: g.vision, languageGeometry: g.language };
}

export async function disposeModel(model: LoadedModel): Promise<void> {
  await model.bundle.stages.dispose();
}
