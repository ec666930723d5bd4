/**
 * A residual stream between stages, held the cheapest way: as the ORT tensor the last stage returned
 * (in the bundle's io_dtype, fed to the next stage as-is) and converted to host float32 only when
 * something reads it (a reduction method, a tap). For a float16 bundle this removes two conversions
 * per stage boundary; on a device-resident runner the same surface would keep it on the GPU.
 */
import { ort } from '../onnx/ort';
import type { Feed, Resident } from '../onnx/run-stage';
import { residentRows, residentToHost } from '../onnx/run-stage';
import { asMatrix, batched, f32, type F32Tensor } from '../tensor/host-tensor';
import { float16Bits } from '../tensor/fp16';
import { floatRows, type FloatRows } from '../tensor/float-rows';
import type { FloatDType } from '../tensor/dtype';
import { combineRows, combineSpan } from '../tensor/rows';
import type { Span, TokenCombination } from '../methods/types';

export class HiddenState {
  private hostCopy: F32Tensor | undefined;

  private constructor(
    private readonly resident: Resident | undefined,
    host: F32Tensor | undefined,
  ) {
    this.hostCopy = host;
  }

  static fromHost(t: F32Tensor): HiddenState {
    return new HiddenState(undefined, t);
  }

  static fromResident(t: Resident): HiddenState {
    return new HiddenState(t, undefined);
  }

  /** A [N, D] block as the [1, N, D] state: float16 bits become the resident tensor as they are. */
  static fromRows(r: FloatRows): HiddenState {
    const dims = [1, r.dims[0], r.dims[1]];
    return r.dtype === 'float16' ? HiddenState.fromResident(new ort.Tensor('float16', r.data, dims)) : HiddenState.fromHost(f32(dims, r.data));
  }

  get dims(): readonly number[] {
    return this.resident ? this.resident.dims : this.hostCopy!.dims;
  }

  /** What to feed the next stage: the resident tensor when there is one. */
  feed(): Feed {
    return this.resident ?? this.hostCopy!;
  }

  /** Host float32 (converted once, then cached). */
  host(): F32Tensor {
    this.hostCopy ??= residentToHost('hidden', this.resident!);
    return this.hostCopy;
  }

  /**
   * The state after a reduction step's combination (of the rows in `span`, or of all rows), in the
   * representation it is held in: a float16 state stays float16 bits, so the rows that are only kept
   * (most of them) are copied, not decoded and encoded again, and the next stage is fed it as is.
   */
  combine(c: TokenCombination, span?: Span): HiddenState {
    const [, T, D] = this.dims as [number, number, number];
    if (this.resident?.type === 'float16') {
      const m = { rows: T, cols: D, data: float16Bits(this.resident.data as ArrayBufferView) };
      const out = span ? combineSpan(m, span, c) : combineRows(m, c);
      return HiddenState.fromResident(new ort.Tensor('float16', out.data, [1, out.rows, D]));
    }
    const m = asMatrix(this.host());
    return HiddenState.fromHost(batched(span ? combineSpan(m, span, c) : combineRows(m, c)));
  }

  /** The [1, T, D] state as [T, D] rows in the dtype it is held in (float16 as bits), without converting. */
  asRows(): FloatRows {
    if (this.resident) return residentRows('hidden', this.resident);
    const [, T, D] = this.dims as [number, number, number];
    return floatRows([T, D], 'float32', this.hostCopy!.data);
  }

  /** Rows [start, start+count) of the token axis of a [1,T,D] state, without converting. */
  rows(start: number, count: number): Feed {
    const [, , D] = this.dims as [number, number, number];
    if (this.resident) {
      const data = this.resident.data as Float32Array | Uint16Array;
      return new ort.Tensor(this.resident.type as FloatDType, data.subarray(start * D, (start + count) * D), [1, count, D]);
    }
    return f32([1, count, D], this.hostCopy!.data.subarray(start * D, (start + count) * D));
  }
}
