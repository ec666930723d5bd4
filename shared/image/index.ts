export { preprocessImage, checkImage, normalize, SUPPORTED_FORMATS, type PreprocessedImage, type ImageLimits } from './preprocess';
