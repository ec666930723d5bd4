/**
 * What a warm-up runs the language side on, shared by the workers' own warm-up and the language
 * service's end-to-end one: the most any request runs (the full visual token count, here zeros),
 * decoded for two tokens.
 */
import type { Manifest } from '../bundle/manifest';
import type { VisualTokens } from './encode-image';
import { GREEDY, type SamplingParams } from './sampling';

/** The full visual token count of zeros, in original order. */
export function zeroVisualTokens(manifest: Manifest): VisualTokens {
  const rows = manifest.vision.num_patches;
  const width = manifest.language.hidden_size;
  return { embeds: { dtype: 'float32', dims: [rows, width], data: new Float32Array(rows * width) }, origin: Int32Array.from({ length: rows }, (_, i) => i) };
}

/** Two tokens run the decode step as well, unless the service allows only one (then none will). */
export function warmUpSampling(maxNewTokens: number): SamplingParams {
  return { ...GREEDY, maxNewTokens: Math.min(2, maxNewTokens) };
}
