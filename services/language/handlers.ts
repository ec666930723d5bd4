/**
 * LanguageService handlers: thin wiring of the Generate pipeline and GetModelInfo into the adapters.
 */
import type { LanguageServiceServer } from '../../gen/vlm/v1/language_service';
import { serverStream, unary, type AdapterDeps } from '../common/server-stream';
import { modelInfo, placementOf } from '../common/model-info';
import { generateAttributes, generateStream, type GenerateDeps } from './generate-stream';
import { tracedStream } from '../../shared/telemetry/traced-stream';
import { recordRequest } from '../../shared/telemetry/metrics';

export interface LanguageHandlerDeps extends GenerateDeps {
  readonly adapter: AdapterDeps;
}

export function languageHandlers(deps: LanguageHandlerDeps): LanguageServiceServer {
  return {
    generate: serverStream(tracedStream(generateAttributes(deps.backend), recordRequest, (req, ctx, span) => generateStream(deps, req, ctx, span)), deps.adapter, (r) => r.part?.$case === 'final'),
    getModelInfo: unary(async () => ({ model: modelInfo(deps.backend.model, placementOf(deps.backend, deps.limits)) }), deps.adapter),
  };
}
