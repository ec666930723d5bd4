/**
 * A CUDA error the device does not recover from. After an illegal address, a failed launch, a
 * device-side assert or an uncorrectable ECC error the CUDA context is corrupt for the whole process:
 * every later call on it fails the same way, in every worker thread, so replacing a worker does not
 * help and the process has to go. ONNX Runtime's CUDA provider reports these as "CUDA failure <n>:
 * <cudaGetErrorString>" (CUDA_CALL in its cuda_call.cc); the numbers are cudaError_t values CUDA's
 * documentation calls sticky. Out of memory is not among them (see out-of-memory.ts): the device
 * works, it is full.
 */
import { VlmError } from '../errors';

const STICKY_CUDA_ERRORS = [
  214, // cudaErrorECCUncorrectable
  700, // cudaErrorIllegalAddress
  702, // cudaErrorLaunchTimeout
  710, // cudaErrorAssert
  714, // cudaErrorHardwareStackError
  715, // cudaErrorIllegalInstruction
  716, // cudaErrorMisalignedAddress
  717, // cudaErrorInvalidAddressSpace
  718, // cudaErrorInvalidPc
  719, // cudaErrorLaunchFailure
];

const DEVICE_FAULT = [
  new RegExp(`\\bCUDA (?:failure|error) (?:${STICKY_CUDA_ERRORS.join('|')})\\b`),
  /\b(?:cudaErrorIllegalAddress|cudaErrorLaunchFailure|cudaErrorAssert|cudaErrorECCUncorrectable|CUDA_ERROR_ILLEGAL_ADDRESS|CUDA_ERROR_LAUNCH_FAILED|CUDA_ERROR_ECC_UNCORRECTABLE)\b/,
  /an illegal memory access was encountered|unspecified launch failure|device-side assert triggered|uncorrectable ECC error encountered|GPU has fallen off the bus/i,
];

export function isDeviceFault(message: string): boolean {
  return DEVICE_FAULT.some((re) => re.test(message));
}

/** INTERNAL DEVICE_FAULT for a fault met while `doing`; the runtime's text stays in `cause` (logged by the worker), not in the message. */
export function deviceFaultError(doing: string, cause: unknown): VlmError {
  return new VlmError('INTERNAL', `the GPU of this replica failed while ${doing}; the replica stops serving and is restarted`, { cause, reason: 'DEVICE_FAULT' });
}
