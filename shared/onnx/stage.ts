import type * as ort from 'onnxruntime-node';
import type { GraphDecl } from '../bundle/manifest';
import type { FloatDType } from '../tensor/dtype';

/** One graph of a bundle, opened: its manifest declaration and its session. */
export interface Stage {
  /** Manifest key, e.g. `vision/layer_03.attn`. */
  readonly name: string;
  readonly decl: GraphDecl;
  readonly session: ort.InferenceSession;
  readonly provider: string;
  /** The bundle's io_dtype: what `f` means in the declaration. */
  readonly ioDtype: FloatDType;
}
