/**
 * The one way a stage runs. Feeds are checked against the manifest's declared inputs (names, dtype,
 * rank, fixed sizes, and symbols bound consistently across inputs) before ORT sees them. Host float32
 * feeds of a float16 input and outputs that are not kept are converted here, so the engine hands over
 * and reads float32 whatever the bundle's io_dtype. Outputs named in `keep` stay ORT tensors in their
 * session dtype, so what only moves between graphs is never converted: the residual stream and the KV
 * caches are fed back as they are, a reduction step combines a float16 state in its bits
 * (HiddenState.combine), and the projected visual tokens and prompt embeddings stay float16 bits from
 * the projector over the hop to the decoder's first layer (residentRows; tensor/float-rows.ts converts
 * them only for a reader of values or a caller's rows of the other dtype).
 */
import { ort } from './ort';
import { VlmError } from '../errors';
import type { Dim, TensorDecl } from '../bundle/manifest';
import { f32, type F32Tensor, type HostTensor } from '../tensor/host-tensor';
import { float16Bits, toFloat16, toFloat32 } from '../tensor/fp16';
import { floatRows, type FloatRows } from '../tensor/float-rows';
import { deviceFaultError, isDeviceFault } from './device-fault';
import { isOutOfMemory, OUT_OF_MEMORY_RETRY_MS } from './out-of-memory';
import type { Stage } from './stage';

/** A tensor fed as-is: a previously kept output (already in the session's dtype). */
export type Resident = ort.Tensor;
export type Feed = HostTensor | Resident;

export interface RunOptions {
  /** Outputs to fetch (default: all declared). */
  readonly outputs?: readonly string[];
  /** Outputs to return as ORT tensors, unconverted. */
  readonly keep?: readonly string[];
  /**
   * Tensors the runtime writes these outputs into (of the output's exact shape), instead of
   * allocating its own: a KV cache's new rows land in the cache's buffer, not in a copy of them.
   */
  readonly into?: Readonly<Record<string, ort.Tensor>>;
}

export interface StageOutputs {
  readonly host: Readonly<Record<string, F32Tensor>>;
  readonly kept: Readonly<Record<string, Resident>>;
}

function isResident(f: Feed): f is Resident {
  return f instanceof ort.Tensor;
}

function describe(feeds: Readonly<Record<string, Feed>>): string {
  return Object.entries(feeds)
    .map(([n, f]) => `${n}: ${isResident(f) ? f.type : f.dtype}[${f.dims.join(',')}]`)
    .join(', ');
}

function declared(inputs: readonly TensorDecl[]): string {
  return inputs.map((d) => `${d.name}: ${d.dtype}[${d.shape.join(',')}]`).join(', ');
}

/** Binds symbolic dims across all inputs; returns a problem description or undefined. */
function checkFeeds(stage: Stage, feeds: Readonly<Record<string, Feed>>): string | undefined {
  const names = new Set(Object.keys(feeds));
  const missing = stage.decl.inputs.filter((d) => !names.has(d.name)).map((d) => d.name);
  const known = new Set(stage.decl.inputs.map((d) => d.name));
  const extra = [...names].filter((n) => !known.has(n));
  if (missing.length || extra.length) return `${missing.length ? `missing ${missing.join(', ')}` : ''}${missing.length && extra.length ? '; ' : ''}${extra.length ? `unexpected ${extra.join(', ')}` : ''}`;
  const bound = new Map<string, number>();
  for (const d of stage.decl.inputs) {
    const f = feeds[d.name]!;
    const type = isResident(f) ? f.type : f.dtype;
    const want = d.dtype;
    // Host float32 is converted below; a resident tensor must already be in the wire dtype.
    const okType = type === want || (!isResident(f) && type === 'float32' && want === 'float16');
    if (!okType) return `${d.name} has dtype ${type}, declared ${want}`;
    if (f.dims.length !== d.shape.length) return `${d.name} has rank ${f.dims.length}, declared ${d.shape.length}`;
    for (let i = 0; i < d.shape.length; i++) {
      const s: Dim = d.shape[i]!;
      const n = f.dims[i]!;
      if (typeof s === 'number') {
        if (s !== n) return `${d.name} dim ${i} is ${n}, declared ${s}`;
      } else {
        const prev = bound.get(s);
        if (prev !== undefined && prev !== n) return `${d.name} dim ${i} (${s}) is ${n}, but ${s} is ${prev} in another input`;
        bound.set(s, n);
      }
    }
  }
  const P = bound.get('P');
  const T = bound.get('T');
  const PT = bound.get('PT');
  if (P !== undefined && T !== undefined && PT !== undefined && PT !== P + T) return `PT is ${PT}, expected P+T = ${P + T}`;
  return undefined;
}

function toOrt(decl: TensorDecl, f: Feed): ort.Tensor {
  if (isResident(f)) return f;
  const dims = [...f.dims];
  if (f.dtype === 'int64') return new ort.Tensor('int64', f.data, dims);
  if (decl.dtype === 'float16') return new ort.Tensor('float16', toFloat16(f.data), dims);
  return new ort.Tensor('float32', f.data, dims);
}

function toHost(name: string, t: ort.Tensor): F32Tensor {
  const dims = t.dims.map(Number);
  if (t.type === 'float32') return f32(dims, t.data as Float32Array);
  if (t.type === 'float16') return f32(dims, toFloat32(float16Bits(t.data as ArrayBufferView)));
  throw new VlmError('INTERNAL', `output ${name} has dtype ${t.type}; the engine reads float outputs only`);
}

export async function runStage(stage: Stage, feeds: Readonly<Record<string, Feed>>, options: RunOptions = {}): Promise<StageOutputs> {
  const problem = checkFeeds(stage, feeds);
  if (problem) {
    throw new VlmError('INTERNAL', `stage ${stage.name}: ${problem}. Fed {${describe(feeds)}}; declared {${declared(stage.decl.inputs)}}`);
  }
  const ortFeeds: Record<string, ort.Tensor> = {};
  for (const d of stage.decl.inputs) ortFeeds[d.name] = toOrt(d, feeds[d.name]!);
  const fetch = options.outputs ?? stage.decl.outputs.map((o) => o.name);
  let results: ort.InferenceSession.ReturnType;
  try {
    const into = options.into;
    results = await (into ? stage.session.run(ortFeeds, Object.fromEntries(fetch.map((name) => [name, into[name] ?? null]))) : stage.session.run(ortFeeds, [...fetch]));
  } catch (err) {
    const message = (err as Error).message;
    if (isDeviceFault(message)) throw deviceFaultError(`running this request (stage ${stage.name} on ${stage.provider})`, err);
    if (isOutOfMemory(message)) {
      // The runtime's text (allocator, sizes, source paths) goes to the worker's log, not to the caller.
      throw new VlmError('RESOURCE_EXHAUSTED', `stage ${stage.name} ran out of memory on ${stage.provider} (the request is too large for what is free now)`, { cause: err, reason: 'OUT_OF_MEMORY', retryDelayMs: OUT_OF_MEMORY_RETRY_MS });
    }
    throw new VlmError('INTERNAL', `stage ${stage.name} failed on ${stage.provider}: ${message}. Fed {${describe(feeds)}}`, { cause: err });
  }
  const keep = new Set(options.keep ?? []);
  const host: Record<string, F32Tensor> = {};
  const kept: Record<string, Resident> = {};
  for (const name of fetch) {
    const t = results[name];
    if (!t) throw new VlmError('INTERNAL', `stage ${stage.name} returned no output ${name}`);
    if (keep.has(name)) kept[name] = t;
    else host[name] = toHost(`${stage.name}:${name}`, t);
  }
  return { host, kept };
}

/** Converts a kept tensor to host float32 (for golden comparisons and the CPU fallback of merges). */
export function residentToHost(name: string, t: Resident): F32Tensor {
  return toHost(name, t);
}

/** A kept [1, N, D] (or [N, D]) float output as rows in its own dtype, float16 as bits: no conversion. */
export function residentRows(name: string, t: Resident): FloatRows {
  const dims = t.dims.map(Number);
  const [N, D] = dims.length === 3 && dims[0] === 1 ? [dims[1]!, dims[2]!] : dims.length === 2 ? [dims[0]!, dims[1]!] : [NaN, NaN];
  if (Number.isNaN(N)) throw new VlmError('INTERNAL', `output ${name} has dims [${dims.join(',')}], expected [1,N,D] or [N,D]`);
  if (t.type === 'float32') return floatRows([N, D], 'float32', t.data as Float32Array);
  if (t.type === 'float16') return floatRows([N, D], 'float16', float16Bits(t.data as ArrayBufferView));
  throw new VlmError('INTERNAL', `output ${name} has dtype ${t.type}; the engine reads float outputs only`);
}
