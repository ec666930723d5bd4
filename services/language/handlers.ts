/**
 * LanguageService handlers: thin wiring of the Generate pipeline and GetModelInfo into the adapters.
 */
import type { LanguageServiceServer } from '../../gen/vlm/v1/language_service';
import { serverStream, unary, type AdapterDeps } from '../common/server-stream';
import { modelInfo, placementOf } from '../common/model-info';
import { generateStream, type GenerateDeps } from './generate';
import { tracedStream } from '../../shared/telemetry/traced-stream';
import { ATTR_GEN_AI_OPERATION_NAME, ATTR_GEN_AI_REQUEST_MODEL, ATTR_VLM_DEVICE, ATTR_VLM_MODEL_ID, ATTR_VLM_PROVIDER, GEN_AI_OPERATION_CHAT } from '../../shared/telemetry/names';

export interface LanguageHandlerDeps extends GenerateDeps {
  readonly adapter: AdapterDeps;
}

export function languageHandlers(deps: LanguageHandlerDeps): LanguageServiceServer {
  const modelId = deps.engine.model.manifest.model_id;
  const requestAttributes = { [ATTR_GEN_AI_OPERATION_NAME]: GEN_AI_OPERATION_CHAT, [ATTR_GEN_AI_REQUEST_MODEL]: modelId, [ATTR_VLM_MODEL_ID]: modelId, [ATTR_VLM_PROVIDER]: deps.engine.provider, [ATTR_VLM_DEVICE]: deps.engine.device };
  return {
    generate: serverStream(tracedStream(requestAttributes, (req, ctx, span) => generateStream(deps, req, ctx, span)), deps.adapter),
    getModelInfo: unary(async () => ({ model: modelInfo(deps.engine.model, placementOf(deps.engine, deps.limits)) }), deps.adapter),
  };
}
