import { defineConfig } from 'vitest/config';

// CI runs on 2 cores: at most two workers, and every ONNX session in tests uses one intra-op thread
// (VLM_INTRA_OP_THREADS=1 is read by shared/config.ts).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 180_000,
    env: { VLM_INTRA_OP_THREADS: '1', VLM_LOG_LEVEL: 'error' },
  },
});
