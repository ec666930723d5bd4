/** The loader refuses broken bundles before any session runs, saying what is wrong and where. */
import { cp, mkdtemp, readFile, rm, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { testConfig } from '../shared/config';
import { loadBundle } from '../shared/bundle';
import { createLogger } from '../shared/log';
import { ProviderChain } from '../shared/onnx/providers';
import { runStage } from '../shared/onnx/run-stage';
import { f32, i64 } from '../shared/tensor/host-tensor';
import { failure, RANDOM_BUNDLE } from './core-helpers';
import { recordingLogger, type LogLine } from './reliability-helpers';

const config = testConfig();
const log = createLogger('test');
const temps: string[] = [];

/** A private copy of the random bundle with `edit` applied to its manifest. */
async function brokenCopy(edit: (m: Record<string, any>) => void = () => {}): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'vlm-bundle-'));
  temps.push(dir);
  await cp(RANDOM_BUNDLE, dir, { recursive: true });
  const file = path.join(dir, 'manifest.json');
  const m = JSON.parse(await readFile(file, 'utf8')) as Record<string, any>;
  edit(m);
  await writeFile(file, JSON.stringify(m));
  return dir;
}

const load = (dir: string, over: { verifyHashes?: boolean; eagerSessions?: boolean } = {}) =>
  loadBundle(dir, { model: { verifyHashes: false, eagerSessions: false, ...over }, runtime: config.runtime, log });

afterEach(async () => {
  for (const d of temps.splice(0)) await rm(d, { recursive: true, force: true });
});

describe('bundle loader', () => {
  it('loads the random bundle, verifies every hash, and opens stages by name', async () => {
    const b = await load(RANDOM_BUNDLE, { verifyHashes: true });
    const stage = await b.stages.get('vision/layer_01.attn');
    expect(stage.session.inputNames).toEqual(['hidden_in', 'attn_bias']);
    expect(b.stages.provider).toBe('cpu');
    await b.stages.dispose();
  });

  it("opens every graph of one side at load with eagerSessions and a side, the methods' scores graphs included", async () => {
    const b = await loadBundle(RANDOM_BUNDLE, { model: { verifyHashes: false, eagerSessions: true }, runtime: config.runtime, side: 'vision', log });
    try {
      const open = [...(b.stages as unknown as { opening: Map<string, unknown> }).opening.keys()];
      const visionGraphs = Object.keys(b.manifest.graphs).filter((n) => n.startsWith('vision/'));
      expect(open.sort()).toEqual(visionGraphs.sort());
      expect(open).toContain('vision/layer_00.scores');
    } finally {
      await b.stages.dispose();
    }
  });

  it('names a missing directory', async () => {
    const e = await failure(load('/nonexistent/bundle'));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(/no bundle at \/nonexistent\/bundle.*--model/);
  });

  it('rejects another format version, naming the supported one', async () => {
    const e = await failure(load(await brokenCopy((m) => (m.format_version = 2))));
    expect(e.message).toMatch(/format_version 2 is not supported; this runtime reads format_version 1/);
  });

  it('reports schema violations with their field paths', async () => {
    const e = await failure(load(await brokenCopy((m) => {
      m.vision.hidden_size = '32';
      delete m.tokens.stop_ids;
    })));
    expect(e.message).toMatch(/vision\.hidden_size must be integer, got string/);
    expect(e.message).toMatch(/tokens missing required field "stop_ids"/);
  });

  it('reports a file listed in the manifest but missing on disk', async () => {
    const dir = await brokenCopy();
    await rm(path.join(dir, 'language/layer_02.mlp.onnx'));
    const e = await failure(load(dir));
    expect(e.message).toMatch(/language\/layer_02\.mlp\.onnx: missing/);
  });

  it('reports a size mismatch always and a sha256 mismatch when verifying', async () => {
    const dir = await brokenCopy();
    await appendFile(path.join(dir, 'vision/projector.onnx'), Buffer.from([0]));
    expect((await failure(load(dir))).message).toMatch(/vision\/projector\.onnx: \d+ bytes on disk, manifest says \d+/);

    const dir2 = await brokenCopy();
    const tok = path.join(dir2, 'tokenizer.json');
    const text = await readFile(tok, 'utf8');
    await writeFile(tok, text.replace('[UNK]', '[UNX]'));
    await load(dir2); // same size: only the hash can tell
    expect((await failure(load(dir2, { verifyHashes: true }))).message).toMatch(/tokenizer\.json: sha256 [0-9a-f]{64}, manifest says/);
  });

  it("hashes, for one side, that side's graphs and the shared files, and only sizes the other side's graphs", async () => {
    const dir = await brokenCopy();
    const flip = async (file: string) => {
      const full = path.join(dir, file);
      const bytes = await readFile(full);
      bytes[bytes.length - 1] ^= 0xff; // same size: only the hash can tell
      await writeFile(full, bytes);
    };
    await flip('language/head.onnx');
    const side = (s: 'vision' | 'language') => loadBundle(dir, { model: { verifyHashes: true, eagerSessions: false }, runtime: config.runtime, side: s, log });
    await side('vision');
    expect((await failure(side('language'))).message).toMatch(/language\/head\.onnx: sha256 [0-9a-f]{64}, manifest says/);
    await flip('language/head.onnx');
    await flip('vision/projector.onnx');
    await side('language');
    expect((await failure(side('vision'))).message).toMatch(/vision\/projector\.onnx: sha256/);
    await flip('vision/projector.onnx');
    await flip('tokenizer.json');
    expect((await failure(side('vision'))).message).toMatch(/tokenizer\.json: sha256/);
    expect((await failure(side('language'))).message).toMatch(/tokenizer\.json: sha256/);
  });

  it('rejects a geometry no buffer could hold, a context with no room for a prompt, and token ids outside the vocabulary, naming each field', async () => {
    const e = await failure(
      load(
        await brokenCopy((m) => {
          m.vision.image_size = 1_000_000;
          m.vision.num_patches = 1_000_000;
          m.language.max_positions = 16;
          m.tokens.bos_id = 100_000;
          m.tokens.stop_ids = [3, 176];
        }),
      ),
    );
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(/vision\.image_size 1000000 is over 4096/);
    expect(e.message).toMatch(/vision\.num_patches 1000000 is over 16384/);
    expect(e.message).toMatch(/language\.max_positions 16 leaves no room for a prompt beside the 1000000 visual tokens/);
    expect(e.message).toMatch(/tokens\.bos_id 100000 is not below language\.vocab_size 176/);
    expect(e.message).toMatch(/tokens\.stop_ids\[1\] 176 is not below language\.vocab_size 176/);
    expect(e.message).not.toMatch(/eos_id/);
  });

  it('rejects declared shapes that contradict the architecture', async () => {
    const e = await failure(load(await brokenCopy((m) => (m.graphs['vision/layer_00.mlp'].inputs[0].shape = ['B', 'T', 33]))));
    expect(e.message).toMatch(/graphs\["vision\/layer_00\.mlp"\] hidden_in last dim is 33, architecture says 32/);
  });

  it('rejects attention graphs whose cache outputs are not the layout language.kv_cache names', async () => {
    const e = await failure(load(await brokenCopy((m) => (m.language.kv_cache = 'append'))));
    expect(e.message).toMatch(/graphs\["language\/layer_00\.attn"\] lacks new_key, new_value \(language\.kv_cache is "append"\)/);
    expect(e.message).toMatch(/past_key axis 2 is P, expected num_kv_heads 2 for a "append" cache/);
    const bad = await failure(load(await brokenCopy((m) => (m.language.kv_cache = 'paged'))));
    expect(bad.message).toMatch(/language\.kv_cache/);
  });

  it('rejects a stage whose graph does not have the declared inputs, when the session opens', async () => {
    const dir = await brokenCopy((m) => {
      m.graphs['language/head'].inputs[0].name = 'hidden';
      m.graphs['vision/embed'].outputs[0].shape = ['B', 18, 32];
    });
    const b = await load(dir);
    expect((await failure(b.stages.get('language/head'))).message).toMatch(/stage language\/head .*graph lacks declared input hidden; graph has undeclared input hidden_in/);
    expect((await failure(b.stages.get('vision/embed'))).message).toMatch(/output hidden_out dim 1 is 17 in the graph, declared 18/);
    expect((await failure(b.stages.get('vision/layer_99.attn'))).message).toMatch(/has no stage "vision\/layer_99\.attn"/);
    await b.stages.dispose();
  });
});

describe('runStage classifies what the runtime reports', () => {
  // The failures of a GPU that is out of memory, as the H100 logged them (docs/llava-gpu-log.txt);
  // the CPU cannot be made to fail this way on demand, so the session's run is replaced.
  const ARENA = "Non-zero status code returned while running Mul node. Name:'n_Mul_121' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:359 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed to allocate memory for requested buffer of size 48098560";

  it('out of device memory is RESOURCE_EXHAUSTED (retry later), anything else from ORT is INTERNAL', async () => {
    const b = await load(RANDOM_BUNDLE);
    const real = await b.stages.get('vision/layer_00.attn');
    const failing = (message: string) => ({ ...real, provider: 'cuda:0', session: { run: () => Promise.reject(new Error(message)) } as unknown as typeof real.session });
    const feeds = { hidden_in: f32([1, 17, 32]), attn_bias: f32([1, 17]) };
    const oom = await failure(runStage(failing(ARENA), feeds));
    expect(oom.code).toBe('RESOURCE_EXHAUSTED');
    expect(oom.message).toMatch(/^stage vision\/layer_00\.attn ran out of memory on cuda:0/);
    // the runtime's own text stays with the error's cause (logged by the worker), not in what callers read
    expect(oom.message).not.toContain('bfc_arena');
    expect((oom.cause as Error).message).toBe(ARENA);
    const cublas = await failure(runStage(failing('CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0'), feeds));
    expect(cublas.code).toBe('RESOURCE_EXHAUSTED');
    const other = await failure(runStage(failing('Non-zero status code returned while running Gemm node: shape mismatch'), feeds));
    expect(other.code).toBe('INTERNAL');
    expect(other.message).toMatch(/Fed \{hidden_in: float32\[1,17,32\], attn_bias: float32\[1,17\]\}/);
    await b.stages.dispose();
  });

  it.each([
    ['CUDA failure 700: an illegal memory access was encountered ; GPU=0 ; hostname=h ; file=cuda_call.cc ; line=130 ; expr=cudaStreamSynchronize(stream);', 'DEVICE_FAULT'],
    ['CUDA failure 719: unspecified launch failure ; GPU=0', 'DEVICE_FAULT'],
    ['CUDA failure 214: uncorrectable ECC error encountered ; GPU=0', 'DEVICE_FAULT'],
    ['CUDA error cudaErrorIllegalAddress:an illegal memory access was encountered', 'DEVICE_FAULT'],
    ['CUDA failure 2: out of memory ; GPU=0', 'OUT_OF_MEMORY'],
    ['CUDA failure 1: invalid argument ; GPU=0', undefined],
    ['CUDA failure 7000: something else', undefined],
    ['Non-zero status code returned while running Gemm node: shape mismatch', undefined],
  ])('%s -> reason %s (a sticky CUDA error is a device fault: the context is lost for the process)', async (message, reason) => {
    const b = await load(RANDOM_BUNDLE);
    const real = await b.stages.get('vision/layer_00.attn');
    const failing = { ...real, provider: 'cuda:0', session: { run: () => Promise.reject(new Error(message)) } as unknown as typeof real.session };
    const e = await failure(runStage(failing, { hidden_in: f32([1, 17, 32]), attn_bias: f32([1, 17]) }));
    expect(e.reason).toBe(reason);
    if (reason === 'DEVICE_FAULT') {
      expect(e.code).toBe('INTERNAL');
      expect(e.message).not.toContain('CUDA');
      expect((e.cause as Error).message).toBe(message);
    }
    await b.stages.dispose();
  });
});

describe('runStage checks feeds against the declaration', () => {
  it('lists every input with dims and dtype when a feed is wrong', async () => {
    const b = await load(RANDOM_BUNDLE);
    const stage = await b.stages.get('vision/layer_00.attn');
    const wrongRank = await failure(runStage(stage, { hidden_in: f32([17, 32]), attn_bias: f32([1, 17]) }));
    expect(wrongRank.message).toMatch(/hidden_in has rank 2, declared 3/);
    expect(wrongRank.message).toMatch(/Fed \{hidden_in: float32\[17,32\], attn_bias: float32\[1,17\]\}; declared \{hidden_in: float32\[B,T,32\], attn_bias: float32\[B,T\]\}/);
    expect((await failure(runStage(stage, { hidden_in: f32([1, 17, 32]), attn_bias: f32([1, 16]) }))).message).toMatch(/attn_bias dim 1 \(T\) is 16, but T is 17/);
    expect((await failure(runStage(stage, { hidden_in: f32([1, 17, 32]), attn_bias: i64([1, 17], new Array(17).fill(0)) }))).message).toMatch(/attn_bias has dtype int64, declared float32/);
    expect((await failure(runStage(stage, { hidden_in: f32([1, 17, 32]) }))).message).toMatch(/missing attn_bias/);
    await b.stages.dispose();
  });
});

describe('execution providers', () => {
  it('falls back along the configured order and pins the provider that worked', async () => {
    // onnxruntime-node ships without the CUDA provider here, so cuda:0 throws and cpu takes over.
    const lines: LogLine[] = [];
    const chain = new ProviderChain({ ...config.runtime, providers: [{ kind: 'cuda', deviceId: 0 }, { kind: 'cpu' }] }, recordingLogger(lines, 'providers'));
    const { provider } = await chain.open(path.join(RANDOM_BUNDLE, 'vision/projector.onnx'));
    expect(provider).toBe('cpu');
    expect(chain.active).toBe('cpu');
    expect(lines.map((l) => l.msg)).toContain('execution provider unavailable, trying the next');
  });

  it('blames a graph file no provider can parse on the file, not on the providers, and tries no other provider', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'vlm-corrupt-graph-'));
    try {
      const corrupt = path.join(dir, 'projector.onnx');
      await writeFile(corrupt, Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251)));
      const lines: LogLine[] = [];
      const chain = new ProviderChain({ ...config.runtime, providers: [{ kind: 'cpu' }] }, recordingLogger(lines, 'providers'));
      const e = await failure(chain.open(corrupt));
      expect(e.code).toBe('FAILED_PRECONDITION');
      expect(e.message).toMatch(/^graph projector could not be read: its file is not a model this runtime can load .*--verify-hashes/);
      expect(lines.find((l) => l.msg === 'graph file could not be read')?.['error']).toMatch(/Protobuf parsing failed/);
      expect(lines.map((l) => l.msg)).not.toContain('execution provider unavailable, trying the next');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('fails with every provider tried when none opens, without announcing a next one that does not exist', async () => {
    const lines: LogLine[] = [];
    const chain = new ProviderChain({ ...config.runtime, providers: [{ kind: 'cuda', deviceId: 3 }] }, recordingLogger(lines, 'providers'));
    const e = await failure(chain.open(path.join(RANDOM_BUNDLE, 'vision/projector.onnx')));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(/no execution provider could open graph projector \(tried cuda:3; the service log has each one's message\).*VLM_PROVIDER/);
    // The server's paths and the runtime's text stay in the log: a first open may be inside a request.
    expect(e.message).not.toContain(RANDOM_BUNDLE);
    expect(lines.find((l) => l.msg === 'no execution provider could open a graph')).toMatchObject({ graph: path.join(RANDOM_BUNDLE, 'vision/projector.onnx') });
    expect(lines.map((l) => l.msg)).not.toContain('execution provider unavailable, trying the next');
  });
});
