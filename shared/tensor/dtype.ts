/**
 * The float types a graph's inputs and outputs, the hidden state, the KV cache and the hop's tensor
 * stream can hold; float16 travels as raw bits in a Uint16Array everywhere (onnxruntime-node's form).
 */
export type FloatDType = 'float32' | 'float16';
