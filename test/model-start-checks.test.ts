/**
 * What stops a service from starting rather than serving the wrong way: a GPU provider that cannot
 * open (no silent CPU fallback unless the list asks for one), a GPU that is out of memory when the
 * first session opens (no fallback at all), and a bundle whose content hash is not the pinned one.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { ort } from '../shared/onnx/ort';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { configFrom, testConfig } from '../shared/config';
import { loadBundle } from '../shared/bundle';
import { createLogger } from '../shared/log';
import { ProviderChain } from '../shared/onnx/providers';
import { startVisionService } from '../services/vision/server';
import { failure, RANDOM_BUNDLE, recordingLogger, type LogLine } from './core-helpers';

const log = createLogger('test');
const GRAPH = path.join(RANDOM_BUNDLE, 'vision/projector.onnx');
const HASH = (JSON.parse(readFileSync(path.join(RANDOM_BUNDLE, 'manifest.json'), 'utf8')) as { content_hash: string }).content_hash;
const OTHER_HASH = `sha256:${'0'.repeat(64)}`;

afterEach(() => {
  vi.restoreAllMocks();
});

describe('execution provider start-up', () => {
  it('--provider cuda:0 on a host without CUDA fails FAILED_PRECONDITION naming what it tried (its error in the log) and the explicit fallback, never on the CPU', async () => {
    // onnxruntime-node here ships without the CUDA provider, as a node with a broken driver behaves.
    const chain = new ProviderChain({ ...configFrom({ provider: 'cuda:0' }, { VLM_INTRA_OP_THREADS: '1' }).runtime }, log);
    const e = await failure(chain.open(GRAPH));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(/tried cuda:0; the service log has each one's message\); set --provider .*list a fallback explicitly \(cuda:0,cpu\)/);
    expect(chain.active).toBeUndefined();
  });

  it('--provider cuda:0,cpu falls back to the CPU, as asked', async () => {
    const chain = new ProviderChain(configFrom({ provider: 'cuda:0,cpu' }, { VLM_INTRA_OP_THREADS: '1' }).runtime, log);
    expect((await chain.open(GRAPH)).provider).toBe('cpu');
  });

  /** Sessions on the CUDA provider fail to open with `message` (this host has none); others open as usual. */
  const cudaOpensFailing = (message: string) => {
    const create = ort.InferenceSession.create.bind(ort.InferenceSession) as (path: string, options: ort.InferenceSession.SessionOptions) => Promise<ort.InferenceSession>;
    return vi.spyOn(ort.InferenceSession, 'create').mockImplementation(((file: string, options: ort.InferenceSession.SessionOptions) => {
      const ep = options.executionProviders?.[0];
      if (typeof ep === 'object' && ep.name === 'cuda') return Promise.reject(new Error(message));
      return create(file, options);
    }) as never);
  };

  it('out of memory on the first session is RESOURCE_EXHAUSTED, not a fallback to the next provider', async () => {
    const spy = cudaOpensFailing('CUDA failure 2: out of memory ; GPU=0');
    const chain = new ProviderChain(configFrom({ provider: 'cuda:0,cpu' }, { VLM_INTRA_OP_THREADS: '1' }).runtime, log);
    const e = await failure(chain.open(GRAPH));
    expect(e.code).toBe('RESOURCE_EXHAUSTED');
    expect(e.message).toMatch(/on cuda:0: out of memory .*not falling back/);
    expect(spy).toHaveBeenCalledTimes(1); // the CPU was never tried
    expect(chain.active).toBeUndefined();
  });
  it('a sticky CUDA error on the first session is DEVICE_FAULT, not a fallback to the next provider (the process cannot use the GPU again)', async () => {
    const spy = cudaOpensFailing('CUDA failure 700: an illegal memory access was encountered ; GPU=0');
    const chain = new ProviderChain(configFrom({ provider: 'cuda:0,cpu' }, { VLM_INTRA_OP_THREADS: '1' }).runtime, log);
    const e = await failure(chain.open(GRAPH));
    expect([e.code, e.reason]).toEqual(['INTERNAL', 'DEVICE_FAULT']);
    expect(spy).toHaveBeenCalledTimes(1); // the CPU was never tried
    expect(chain.active).toBeUndefined();
  });

  it('a later graph that fails to open on the pinned provider names the stage to callers; the runtime text and the path stay in the cause and the log', async () => {
    const lines: LogLine[] = [];
    const chain = new ProviderChain(configFrom({ provider: 'cpu' }, { VLM_INTRA_OP_THREADS: '1' }).runtime, recordingLogger(lines, 'providers'));
    await chain.open(GRAPH);
    const graphPath = path.join(RANDOM_BUNDLE, 'vision/layer_00.attn.onnx');
    const OOM = '/onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:359 Failed to allocate memory for requested buffer of size 48098560';
    const BROKEN = "Could not find an implementation for Gelu(20) node with name '/mlp/Gelu'";
    const CORRUPT = '/onnxruntime_src/onnxruntime/core/graph/model.cc:180 Protobuf parsing failed.';
    const spy = vi.spyOn(ort.InferenceSession, 'create').mockRejectedValueOnce(new Error(OOM)).mockRejectedValueOnce(new Error(BROKEN)).mockRejectedValueOnce(new Error(CORRUPT));
    try {
      const oom = await failure(chain.open(graphPath, 'vision/layer_00.attn'));
      expect(oom.code).toBe('RESOURCE_EXHAUSTED');
      expect(oom.reason).toBe('OUT_OF_MEMORY');
      expect(oom.message).toBe('graph vision/layer_00.attn could not be opened on cpu: out of memory (the request needs more than is free now)');
      expect((oom.cause as Error).message).toBe(OOM);
      const broken = await failure(chain.open(graphPath, 'vision/layer_00.attn'));
      expect(broken.code).toBe('FAILED_PRECONDITION');
      expect(broken.message).toBe("graph vision/layer_00.attn could not be opened on cpu: the model bundle or the provider is broken (the service log has the runtime's message)");
      expect(lines.find((l) => l.msg === 'graph could not be opened')).toMatchObject({ graph: graphPath, provider: 'cpu', error: BROKEN });
      // A file the runtime cannot parse is the bundle's, whatever the provider.
      const corrupt = await failure(chain.open(graphPath, 'vision/layer_00.attn'));
      expect(corrupt.code).toBe('FAILED_PRECONDITION');
      expect(corrupt.message).toMatch(/^graph vision\/layer_00\.attn could not be read: its file is not a model this runtime can load .*--verify-hashes/);
      expect(lines.find((l) => l.msg === 'graph file could not be read')).toMatchObject({ graph: graphPath, provider: 'cpu', error: CORRUPT });
      for (const e of [oom, broken, corrupt]) expect(e.message).not.toContain(RANDOM_BUNDLE);
    } finally {
      spy.mockRestore();
    }
  });
});

describe('the pinned bundle hash (--model-hash / VLM_MODEL_HASH)', () => {
  const config = testConfig();
  const load = (expectedHash: string | null) => loadBundle(RANDOM_BUNDLE, { model: { verifyHashes: false, eagerSessions: false, expectedHash }, runtime: config.runtime, log });

  it('refuses another bundle with FAILED_PRECONDITION naming both hashes, and loads the pinned one', async () => {
    const e = await failure(load(OTHER_HASH));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toContain(`has content_hash ${HASH}, but --model-hash / VLM_MODEL_HASH requires ${OTHER_HASH}`);
    const b = await load(HASH);
    expect(b.manifest.content_hash).toBe(HASH);
    await b.stages.dispose();
  });

  it('keeps a service from starting on another bundle, and lets it start on the pinned one', async () => {
    const service = (hash: string) => startVisionService(testConfig({ model: { dir: RANDOM_BUNDLE, expectedHash: hash }, services: { host: '127.0.0.1' }, telemetry: { metricsPort: 0 } }), { port: 0 });
    const e = await failure(service(OTHER_HASH));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toContain(`requires ${OTHER_HASH}`);
    const running = await service(HASH);
    try {
      expect(running.backend.model.manifest.content_hash).toBe(HASH);
    } finally {
      await running.stop();
    }
  });
});
