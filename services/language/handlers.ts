/**
 * LanguageService handlers: thin wiring of the Generate pipeline and GetModelInfo into the adapters.
 */
import type { LanguageServiceServer } from '../../gen/vlm/v1/language_service';
import { serverStream, unary, type AdapterDeps } from '../common/server-stream';
import { modelInfo, placementOf } from '../common/model-info';
import { generateStream, type GenerateDeps } from './generate';

export interface LanguageHandlerDeps extends GenerateDeps {
  readonly adapter: AdapterDeps;
}

export function languageHandlers(deps: LanguageHandlerDeps): LanguageServiceServer {
  return {
    generate: serverStream((req, ctx) => generateStream(deps, req, ctx), deps.adapter),
    getModelInfo: unary(async () => ({ model: modelInfo(deps.engine.model, placementOf(deps.engine, deps.limits)) }), deps.adapter),
  };
}
