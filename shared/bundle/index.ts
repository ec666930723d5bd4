export { loadBundle, readManifest, StageSet, type Bundle, type LoadOptions } from './loader';
export { contentHash, sha256File } from './files';
export { layerStage, SUPPORTED_FORMAT_VERSION } from './manifest';
export type { Manifest, GraphDecl, TensorDecl, FileEntry, PreprocessSpec, PromptSpec, TokenSpec, VisionArch, LanguageArch } from './manifest';
