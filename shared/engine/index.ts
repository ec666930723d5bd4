export { loadModel, disposeModel, geometryOf, type LoadedModel, type ModelDeps } from './model';
export { encodeImage, encodePixels, type EncodeResult, type VisualTokens } from './encode-image';
export { generate, type GenerateResult, type FinishReason, type OnDelta } from './generate';
export { checkContinue, type RunContext } from './context';
export { fitMaxTokens } from './context-fit';
export { Sampler, checkSampling, GREEDY, type SamplingParams } from './sampling';
export { VisionStageRunner } from './vision-runner';
export { LanguageStageRunner } from './language-runner';
