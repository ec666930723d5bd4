export { float32ToFloat16Bit, float16BitToFloat32, toFloat16, toFloat32 } from './fp16';
export { type F32Tensor, type I64Tensor, type HostTensor, sizeOf, f32, i64, asMatrix, batched } from './host-tensor';
export { checkCombination, outputRows, combineRows, combineSpan, firstSourceValues } from './rows';
export { argmax } from './ops';
export { type FloatDType, type FloatRows, floatRows, rowsFloat32, rowsMatrix, rowsIn, concatRows, sliceRows } from './float-rows';
