/**
 * ONNX Runtime reports a device (or host) allocation failure as a plain error whose text names the
 * allocator or the CUDA status. Such a failure is capacity, not a bug or bad input: callers may retry
 * later or elsewhere, so it maps to RESOURCE_EXHAUSTED instead of INTERNAL / FAILED_PRECONDITION.
 * Texts seen on an H100 (docs/llava-gpu-log.txt): BFCArena "Failed to allocate memory for requested
 * buffer", and cuBLAS handle creation failing while a session opens.
 */
const OUT_OF_MEMORY = [
  /Failed to allocate memory/i,
  /\bout of memory\b/i,
  /CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation/,
  /CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED/,
  /std::bad_alloc/,
];

export function isOutOfMemory(message: string): boolean {
  return OUT_OF_MEMORY.some((re) => re.test(message));
}

/** Retry hint sent with an out-of-memory error: memory frees as the requests holding it finish. */
export const OUT_OF_MEMORY_RETRY_MS = 1_000;
