/**
 * Loads a bundle folder: manifest (version, schema, consistency), file list (presence, sizes, and
 * sha256 + content_hash when asked), then ONNX sessions, one per graph, keyed by stage name.
 * Sessions open lazily on first use unless `eagerSessions`; either way each session's actual input
 * and output names and dtypes are checked against the manifest's declaration as it opens.
 */
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import type * as ort from 'onnxruntime-node';
import { VlmError } from '../errors';
import { createLogger, type Logger } from '../log';
import type { ModelConfig } from '../config';
import { ProviderChain, type SessionRuntime } from '../onnx/providers';
import type { Stage } from '../onnx/stage';
import { checkManifest, requiredStages } from './check-manifest';
import { checkFiles, contentHash } from './files';
import type { GraphDecl, Manifest } from './manifest';

export interface Bundle {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly stages: StageSet;
}

/** The half of a bundle a process runs: a vision service never opens the decoder's graphs. */
export type ModelSide = 'vision' | 'language';

export interface LoadOptions {
  readonly model: Pick<ModelConfig, 'verifyHashes' | 'eagerSessions'> & Partial<Pick<ModelConfig, 'expectedHash'>>;
  readonly runtime: SessionRuntime;
  /** With eagerSessions, open only this side's graphs (absent: both, as eval and local runs need). */
  readonly side?: ModelSide;
  readonly log?: Logger;
}

/**
 * `expectedHash` (VLM_MODEL_HASH) is compared before the files are read: a wrong bundle fails at
 * once, not after hashing gigabytes. It pins the manifest's claim; `verifyHashes` proves the files
 * hold what the manifest lists: with a `side`, the files that side can read (a vision pod of a 7B
 * bundle hashes its 0.6 GB, not the decoder's 13 GB; every file is still checked for its size).
 */
export async function readManifest(dir: string, verifyHashes = false, expectedHash: string | null = null, side?: ModelSide): Promise<Manifest> {
  const file = path.join(dir, 'manifest.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new VlmError('FAILED_PRECONDITION', `no bundle at ${dir}: cannot read manifest.json (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); pass --model DIR or set VLM_MODEL_DIR`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new VlmError('FAILED_PRECONDITION', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  const manifest = checkManifest(raw, file);
  if (expectedHash !== null && manifest.content_hash !== expectedHash) {
    throw new VlmError('FAILED_PRECONDITION', `bundle ${dir} has content_hash ${manifest.content_hash}, but --model-hash / VLM_MODEL_HASH requires ${expectedHash}; point --model / VLM_MODEL_DIR at that bundle or change the pinned hash`);
  }
  const otherSides = side === undefined ? new Set<string>() : otherSidesFiles(manifest, side);
  await checkFiles(dir, manifest.files, (f) => verifyHashes && !otherSides.has(f.path));
  if (verifyHashes) {
    const actual = contentHash(manifest.files);
    if (actual !== manifest.content_hash) throw new VlmError('FAILED_PRECONDITION', `${file}: content_hash is ${manifest.content_hash}, the file list hashes to ${actual}`);
  }
  return manifest;
}

/** The graph files (and their external data) that only the other side's graphs read. */
function otherSidesFiles(manifest: Manifest, side: ModelSide): Set<string> {
  const filesOf = (g: GraphDecl) => [g.path, ...(g.external_data ?? [])];
  const graphs = Object.entries(manifest.graphs);
  const mine = new Set(graphs.filter(([name]) => name.startsWith(`${side}/`)).flatMap(([, g]) => filesOf(g)));
  return new Set(graphs.filter(([name]) => !name.startsWith(`${side}/`)).flatMap(([, g]) => filesOf(g)).filter((f) => !mine.has(f)));
}

export async function loadBundle(dir: string, options: LoadOptions): Promise<Bundle> {
  const abs = path.resolve(dir);
  const log = options.log ?? createLogger('bundle');
  // Here rather than in the service: every worker of a pool loads through this, replacements too.
  const manifest = await readManifest(abs, options.model.verifyHashes, options.model.expectedHash ?? null, options.side);
  const stages = new StageSet(abs, manifest, new ProviderChain(options.runtime, log));
  if (options.model.eagerSessions) await stages.openAll(options.side);
  log.info('bundle loaded', { dir: abs, model_id: manifest.model_id, content_hash: manifest.content_hash, eager: options.model.eagerSessions, side: options.side ?? 'both' });
  return { dir: abs, manifest, stages };
}

export class StageSet {
  private readonly opening = new Map<string, Promise<Stage>>();

  constructor(
    private readonly dir: string,
    private readonly manifest: Manifest,
    private readonly providers: ProviderChain,
  ) {}

  has(name: string): boolean {
    return name in this.manifest.graphs;
  }

  /** The provider sessions run on (after the first session opened). */
  get provider(): string | undefined {
    return this.providers.active;
  }

  get(name: string): Promise<Stage> {
    let p = this.opening.get(name);
    if (!p) {
      const decl = this.manifest.graphs[name];
      if (!decl) {
        return Promise.reject(new VlmError('FAILED_PRECONDITION', `bundle ${this.manifest.model_id} has no stage "${name}" (its graphs: ${Object.keys(this.manifest.graphs).length}); re-export the bundle with it`));
      }
      p = this.open(name, decl);
      p.catch(() => this.opening.delete(name)); // a failed open may be retried
      this.opening.set(name, p);
    }
    return p;
  }

  /** Every graph of the bundle, or of one side: the reduction methods' scores graphs included. */
  async openAll(side?: ModelSide): Promise<void> {
    const all = new Set([...requiredStages(this.manifest), ...Object.keys(this.manifest.graphs)]);
    const names = side === undefined ? [...all] : [...all].filter((n) => n.startsWith(`${side}/`));
    // One after another: the first open pins the provider, and parallel opens would each log a fallback.
    for (const n of names) await this.get(n);
  }

  async dispose(): Promise<void> {
    const all = [...this.opening.values()];
    this.opening.clear();
    for (const p of all) {
      try {
        await (await p).session.release();
      } catch {
        // a session that failed to open has nothing to release
      }
    }
  }

  private async open(name: string, decl: GraphDecl): Promise<Stage> {
    const { session, provider } = await this.providers.open(path.join(this.dir, decl.path), name);
    checkSessionIo(name, decl, session);
    return { name, decl, session, provider, ioDtype: this.manifest.io_dtype };
  }
}

function checkSessionIo(name: string, decl: GraphDecl, session: ort.InferenceSession): void {
  const problems: string[] = [];
  const compare = (kind: string, declared: GraphDecl['inputs'], actualNames: readonly string[], meta: readonly ort.InferenceSession.ValueMetadata[]) => {
    const want = declared.map((d) => d.name);
    const missing = want.filter((n) => !actualNames.includes(n));
    const extra = actualNames.filter((n) => !want.includes(n));
    if (missing.length) problems.push(`graph lacks declared ${kind} ${missing.join(', ')}`);
    if (extra.length) problems.push(`graph has undeclared ${kind} ${extra.join(', ')}`);
    for (const d of declared) {
      const m = meta.find((x) => x.name === d.name);
      if (!m || !m.isTensor) continue;
      if (m.type !== d.dtype) problems.push(`${kind} ${d.name} is ${m.type} in the graph, declared ${d.dtype}`);
      if (m.shape.length && m.shape.length !== d.shape.length) problems.push(`${kind} ${d.name} has rank ${m.shape.length} in the graph, declared ${d.shape.length}`);
      m.shape.forEach((s, i) => {
        const ds = d.shape[i];
        if (typeof s === 'number' && s > 0 && typeof ds === 'number' && s !== ds) problems.push(`${kind} ${d.name} dim ${i} is ${s} in the graph, declared ${ds}`);
      });
    }
  };
  compare('input', decl.inputs, session.inputNames, session.inputMetadata);
  compare('output', decl.outputs, session.outputNames, session.outputMetadata);
  if (problems.length) throw new VlmError('FAILED_PRECONDITION', `stage ${name} (${decl.path}) does not match its manifest declaration: ${problems.join('; ')}`);
}
