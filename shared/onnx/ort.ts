/**
 * onnxruntime-node, for every module of this project: import ORT from here, never from the package,
 * so that the float16 fix below has run in the thread before its first tensor exists.
 *
 * onnxruntime-common stores float16 tensors in a Float16Array wherever the runtime has that global
 * (Node 24 and later), converting a Uint16Array of bits to one as well. onnxruntime-node 1.29's binding
 * then reads every float16 input as 0 bytes ("not enough space: expected N, got 0":
 * microsoft/onnxruntime#32323, open), so a float16 bundle cannot run at all. The common package picks
 * the array type once per thread, at its first Tensor: that first Tensor is made here with
 * Float16Array hidden, so float16 data stays Uint16Array bits both ways, as on Node 20, which is what
 * the engine carries throughout (tensor/fp16.ts). The global is put back at once.
 */
import * as ort from 'onnxruntime-node';

function pinFloat16ToBits(): void {
  const descriptor = Object.getOwnPropertyDescriptor(globalThis, 'Float16Array');
  if (descriptor) delete (globalThis as { Float16Array?: unknown }).Float16Array;
  try {
    new ort.Tensor('float32', new Float32Array(0), [0]);
  } finally {
    if (descriptor) Object.defineProperty(globalThis, 'Float16Array', descriptor);
  }
  const probe = new ort.Tensor('float16', new Uint16Array([0x3c00]), [1]);
  // The constructor itself: a Float16Array stand-in may subclass Uint16Array.
  if ((probe.data as object).constructor !== Uint16Array) {
    // Some tensor was made before this module ran, and the runtime has Float16Array: float16 inputs would reach the binding as 0 bytes.
    throw new Error(`onnxruntime-common keeps float16 data as ${(probe.data as object).constructor.name}, which onnxruntime-node's binding reads as empty: import ORT through shared/onnx/ort before anything makes a tensor`);
  }
}

pinFloat16ToBits();

export { ort };
