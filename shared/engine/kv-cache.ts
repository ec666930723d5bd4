/**
 * The decoder's per-layer KV caches, in the layout the bundle's attention graphs use
 * (manifest `language.kv_cache`, docs/bundle-format.md). Layers have independent lengths: a layer's
 * cache holds exactly the tokens its attention saw, so language-side reduction shortens later layers.
 *
 * - `present`: each call returns the whole cache [1,Hkv,P+T,dh]; it is kept as the ORT tensor and fed
 *   back as is.
 * - `append`: each call returns only its rows [1,T,Hkv,dh], written by the runtime straight into the
 *   free rows of a sequence-major host buffer with spare capacity, and the next call is fed a view
 *   of the filled prefix. Per call, outputs are O(T) instead of O(P+T): on the CUDA provider every output is copied
 *   to host memory, and copying whole caches back each decode step was most of the step's time.
 */
import { ort } from '../onnx/ort';
import { VlmError } from '../errors';
import { KV_CACHE_OUTPUTS, kvCacheLayout, type KvCacheLayout, type Manifest } from '../bundle/manifest';
import type { Resident } from '../onnx/run-stage';
import type { FloatDType } from '../tensor/dtype';

type Rows = Uint16Array | Float32Array;

export interface KvCaches {
  readonly layout: KvCacheLayout;
  /** The attention outputs that carry the cache: keep them as ORT tensors when running the graph. */
  readonly outputs: (typeof KV_CACHE_OUTPUTS)[KvCacheLayout];
  length(layer: number): number;
  /** `past_key` / `past_value` for the layer's next attention call. */
  past(layer: number): { past_key: Resident; past_value: Resident };
  /**
   * Tensors for the layer's next attention call to write its cache outputs into, for `tokens` new
   * tokens; undefined when the runtime allocates them. Called before past(): it may move the buffer.
   */
  outputsInto(layer: number, tokens: number): Readonly<Record<string, Resident>> | undefined;
  /**
   * Takes the layer's attention call over `tokens` new tokens, given its outputs (named as in
   * `outputs`): a present cache keeps them, an append cache the rows the call wrote into outputsInto()'s tensors.
   */
  take(layer: number, kept: Readonly<Record<string, Resident>>, tokens: number): void;
}

/** `decodeRows`: how many rows each layer may still append after prefill (room reserved up front). */
export function createKvCaches(manifest: Manifest, decodeRows = 0): KvCaches {
  const l = manifest.language;
  const type = manifest.io_dtype === 'float16' ? 'float16' : 'float32';
  return kvCacheLayout(manifest) === 'append'
    ? new AppendCaches(l.num_layers, l.num_kv_heads, l.head_dim, type, decodeRows)
    : new PresentCaches(l.num_layers, l.num_kv_heads, l.head_dim, type);
}

function emptyRows(type: FloatDType, n: number): Rows {
  return type === 'float16' ? new Uint16Array(n) : new Float32Array(n);
}

function output(kept: Readonly<Record<string, Resident>>, name: string, layer: number): Resident {
  const t = kept[name];
  if (!t) throw new VlmError('INTERNAL', `language layer ${layer} attention returned no ${name}`);
  return t;
}

class PresentCaches implements KvCaches {
  readonly layout = 'present' as const;
  readonly outputs = KV_CACHE_OUTPUTS.present;
  private readonly layers: ({ key: Resident; value: Resident; length: number } | undefined)[];
  private readonly empty: Resident;

  constructor(numLayers: number, kvHeads: number, headDim: number, type: FloatDType) {
    this.layers = new Array(numLayers).fill(undefined);
    this.empty = new ort.Tensor(type, emptyRows(type, 0), [1, kvHeads, 0, headDim]);
  }

  length(layer: number): number {
    return this.layers[layer]?.length ?? 0;
  }

  past(layer: number): { past_key: Resident; past_value: Resident } {
    const c = this.layers[layer];
    return { past_key: c?.key ?? this.empty, past_value: c?.value ?? this.empty };
  }

  outputsInto(): undefined {
    return undefined;
  }

  take(layer: number, kept: Readonly<Record<string, Resident>>, tokens: number): void {
    const [keyName, valueName] = this.outputs;
    const key = output(kept, keyName, layer);
    const length = this.length(layer) + tokens;
    if (Number(key.dims[2]) !== length) throw new VlmError('INTERNAL', `layer ${layer} ${keyName} holds ${key.dims[2]} tokens, expected ${length}`);
    this.layers[layer] = { key, value: output(kept, valueName, layer), length };
  }
}

/** A growable sequence-major buffer: rows of Hkv*dh values, the first `length` of them filled. */
class RowBuffer {
  private data: Rows;
  length = 0;

  constructor(
    private readonly type: FloatDType,
    private readonly rowSize: number,
    private readonly spareRows: number,
  ) {
    this.data = emptyRows(type, 0);
  }

  /** Room for `count` more rows. */
  private reserve(count: number): void {
    const needed = (this.length + count) * this.rowSize;
    if (needed <= this.data.length) return;
    // The first fill (prefill) reserves the decode rows, so decode appends in place: growing at the
    // first decode row would copy the whole prompt's cache and hold twice its memory. Past the
    // reserve (a caller that under-declared), doubling keeps one-row appends amortised O(1).
    const capacity = this.data.length === 0 ? needed + this.spareRows * this.rowSize : Math.max(needed, 2 * this.data.length);
    const grown = emptyRows(this.type, capacity);
    grown.set(this.data.subarray(0, this.length * this.rowSize));
    this.data = grown;
  }

  /** The next `count` free rows, for the runtime to write an output into; commit() takes them. */
  free(count: number, dims: readonly number[]): Resident {
    this.reserve(count);
    const at = this.length * this.rowSize;
    return new ort.Tensor(this.type, this.data.subarray(at, at + count * this.rowSize), [...dims]);
  }

  /** Takes the `count` free rows free() handed out, which the runtime has filled. */
  commit(count: number): void {
    if ((this.length + count) * this.rowSize > this.data.length) throw new VlmError('INTERNAL', `committing ${count} rows past the ${this.data.length / this.rowSize} reserved`);
    this.length += count;
  }

  /** The filled prefix, without copying (ORT reads the view during the next call only). */
  view(dims: readonly number[]): Resident {
    return new ort.Tensor(this.type, this.data.subarray(0, this.length * this.rowSize), [...dims]);
  }
}

class AppendCaches implements KvCaches {
  readonly layout = 'append' as const;
  readonly outputs = KV_CACHE_OUTPUTS.append;
  private readonly keys: RowBuffer[];
  private readonly values: RowBuffer[];

  constructor(
    numLayers: number,
    private readonly kvHeads: number,
    private readonly headDim: number,
    private readonly type: FloatDType,
    decodeRows: number,
  ) {
    const buffers = () => Array.from({ length: numLayers }, () => new RowBuffer(type, kvHeads * headDim, decodeRows));
    this.keys = buffers();
    this.values = buffers();
  }

  length(layer: number): number {
    return this.keys[layer]!.length;
  }

  past(layer: number): { past_key: Resident; past_value: Resident } {
    const dims = [1, this.length(layer), this.kvHeads, this.headDim];
    return { past_key: this.keys[layer]!.view(dims), past_value: this.values[layer]!.view(dims) };
  }

  /**
   * The layer's free rows, so its attention writes its new keys and values straight into the cache:
   * on LLaVA-1.5 a prefill otherwise copies 64 outputs of about 5 MB each out of the runtime's own.
   * (onnxruntime-node still returns a copy of each, which take() checks and leaves unread.)
   */
  outputsInto(layer: number, tokens: number): Readonly<Record<string, Resident>> {
    const [keyName, valueName] = this.outputs;
    const dims = [1, tokens, this.kvHeads, this.headDim];
    return { [keyName]: this.keys[layer]!.free(tokens, dims), [valueName]: this.values[layer]!.free(tokens, dims) };
  }

  take(layer: number, kept: Readonly<Record<string, Resident>>, tokens: number): void {
    const [keyName, valueName] = this.outputs;
    for (const [name, buffer] of [[keyName, this.keys[layer]!], [valueName, this.values[layer]!]] as const) {
      const t = output(kept, name, layer);
      if (t.type !== this.type) throw new VlmError('INTERNAL', `layer ${layer} ${name} is ${t.type}, the cache holds ${this.type}`);
      if (Number(t.dims[1]) !== tokens) throw new VlmError('INTERNAL', `layer ${layer} ${name} holds ${t.dims[1]} rows, expected ${tokens}`);
      buffer.commit(tokens);
    }
  }
}
