export { preprocessImage, checkImage, normalize, type CheckedImage, SUPPORTED_FORMATS, type PreprocessedImage, type ImageLimits } from './preprocess';
