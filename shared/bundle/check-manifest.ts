/**
 * Checks of a parsed manifest beyond the schema: the version (first, so an old or new bundle gets a
 * message naming the supported version rather than a list of schema complaints), then the schema,
 * then the cross-field consistency the engine relies on (geometry, stage list, declared shapes).
 */
import { VlmError } from '../errors';
import { validateJson, type Schema } from './json-schema';
import { KV_CACHE_OUTPUTS, kvCacheLayout, layerStage, SUPPORTED_FORMAT_VERSION, type Manifest, type TensorDecl } from './manifest';
// Imported, not read from the package root at run time: tsc then emits it beside this module in
// dist/, so a runtime image that ships only dist/ still has it.
import manifestSchemaJson from './manifest.schema.json';

const manifestSchema = manifestSchemaJson as unknown as Schema;

function fail(where: string, problems: string[]): never {
  throw new VlmError('FAILED_PRECONDITION', `${where}: ${problems.join('; ')}`);
}

export function checkManifest(raw: unknown, where: string): Manifest {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(where, ['manifest.json is not a JSON object']);
  const m = raw as Record<string, unknown>;
  if (m.format !== 'vlm-bundle') fail(where, [`format is ${JSON.stringify(m.format)}, expected "vlm-bundle"`]);
  if (m.format_version !== SUPPORTED_FORMAT_VERSION) {
    fail(where, [`format_version ${JSON.stringify(m.format_version)} is not supported; this runtime reads format_version ${SUPPORTED_FORMAT_VERSION} (docs/bundle-format.md)`]);
  }
  const violations = validateJson(manifestSchema, raw);
  if (violations.length) fail(`${where} fails manifest.schema.json`, violations.map((v) => `${v.path} ${v.message}`));
  const manifest = raw as unknown as Manifest;
  checkConsistency(manifest, where);
  return manifest;
}

/** Stages every bundle must have; scores graphs are checked when a method needs them. */
export function requiredStages(m: Manifest): string[] {
  const out = ['vision/embed', 'vision/projector', 'language/embed', 'language/head'];
  for (let l = 0; l < m.vision.num_layers; l++) out.push(layerStage('vision', l, 'attn'), layerStage('vision', l, 'mlp'));
  for (let l = 0; l < m.language.num_layers; l++) out.push(layerStage('language', l, 'attn'), layerStage('language', l, 'mlp'));
  return out;
}

/** The largest geometry a bundle may declare: well past any LLaVA-style encoder, well short of what cannot be allocated. */
const MAX_IMAGE_SIZE = 4096;
const MAX_PATCHES = 16_384;

function checkConsistency(m: Manifest, where: string): void {
  const p: string[] = [];
  const v = m.vision;
  const L = m.language;
  if (v.grid * v.grid !== v.num_patches) p.push(`vision.num_patches ${v.num_patches} != grid^2 (${v.grid}^2)`);
  if (v.grid * v.patch_size !== v.image_size) p.push(`vision.image_size ${v.image_size} != grid x patch_size (${v.grid} x ${v.patch_size})`);
  if (m.preprocess.size !== v.image_size) p.push(`preprocess.size ${m.preprocess.size} != vision.image_size ${v.image_size}`);
  if (m.projector.input_size !== v.hidden_size) p.push(`projector.input_size ${m.projector.input_size} != vision.hidden_size ${v.hidden_size}`);
  if (m.projector.output_size !== L.hidden_size) p.push(`projector.output_size ${m.projector.output_size} != language.hidden_size ${L.hidden_size}`);
  if (L.num_heads % L.num_kv_heads !== 0) p.push(`language.num_heads ${L.num_heads} is not a multiple of num_kv_heads ${L.num_kv_heads}`);
  if (v.num_layers > v.trained_layers) p.push(`vision.num_layers ${v.num_layers} > trained_layers ${v.trained_layers}`);
  // Past these, buffers sized from the geometry cannot be allocated: the start would fail inside the
  // warm-up as an internal error instead of naming the field (LLaVA-1.5: 336 px, 576 patches).
  if (v.image_size > MAX_IMAGE_SIZE) p.push(`vision.image_size ${v.image_size} is over ${MAX_IMAGE_SIZE}`);
  if (v.num_patches > MAX_PATCHES) p.push(`vision.num_patches ${v.num_patches} is over ${MAX_PATCHES}`);
  // Visual tokens alone must leave room for a prompt; else every request, the warm-up first, is "too long".
  if (L.max_positions <= v.num_patches) p.push(`language.max_positions ${L.max_positions} leaves no room for a prompt beside the ${v.num_patches} visual tokens`);
  const t = m.tokens;
  for (const [name, id] of [['bos_id', t.bos_id], ['eos_id', t.eos_id], ['pad_id', t.pad_id], ...t.stop_ids.map((s, i) => [`stop_ids[${i}]`, s] as const)] as const) {
    if (id >= L.vocab_size) p.push(`tokens.${name} ${id} is not below language.vocab_size ${L.vocab_size}`);
  }
  const tpl = m.prompt.template;
  if (tpl.split(m.prompt.image_token).length !== 2) p.push(`prompt.template must contain image_token "${m.prompt.image_token}" exactly once`);
  if (tpl.split('{question}').length !== 2) p.push('prompt.template must contain {question} exactly once');
  else if (tpl.indexOf('{question}') < tpl.indexOf(m.prompt.image_token)) p.push('prompt.template must put {question} after the image token');

  const files = new Set(m.files.map((f) => f.path));
  if (!files.has('tokenizer.json')) p.push('manifest.files does not list tokenizer.json');
  for (const name of requiredStages(m)) if (!m.graphs[name]) p.push(`graphs has no stage "${name}"`);
  // The runner feeds and reads caches in the manifest's layout; a graph in the other one would be
  // fed transposed caches that happen to have legal shapes whenever Hkv == P.
  const kv = kvCacheLayout(m);
  const headAxis = kv === 'append' ? 2 : 1;
  for (let l = 0; l < L.num_layers; l++) {
    const stage = layerStage('language', l, 'attn');
    const g = m.graphs[stage];
    if (!g) continue;
    const outs = new Set(g.outputs.map((o) => o.name));
    const missing = KV_CACHE_OUTPUTS[kv].filter((o) => !outs.has(o));
    if (missing.length) p.push(`graphs["${stage}"] lacks ${missing.join(', ')} (language.kv_cache is "${kv}")`);
    const past = g.inputs.find((i) => i.name === 'past_key');
    if (past && past.shape[headAxis] !== L.num_kv_heads) p.push(`graphs["${stage}"] past_key axis ${headAxis} is ${past.shape[headAxis]}, expected num_kv_heads ${L.num_kv_heads} for a "${kv}" cache`);
  }
  for (const [name, g] of Object.entries(m.graphs)) {
    if (!files.has(g.path)) p.push(`graphs["${name}"].path ${g.path} is not in manifest.files`);
    const width = name.startsWith('vision/') && name !== 'vision/projector' ? v.hidden_size : L.hidden_size;
    for (const t of [...g.inputs, ...g.outputs]) checkDecl(name, t, width, m, p);
  }
  if (p.length) fail(where, p);
}

/** Every cache tensor a layer graph feeds or returns, in either layout: [.., head_dim], io_dtype. */
const CACHE_TENSORS: readonly string[] = ['past_key', 'past_value', ...KV_CACHE_OUTPUTS.present, ...KV_CACHE_OUTPUTS.append];
/** Tensors exchanged between layer graphs in io_dtype (float32 is always accepted too). */
const IO_DTYPE_TENSORS = new Set(['hidden_in', 'hidden_out', 'embeds', ...CACHE_TENSORS]);

/** Fixed trailing sizes declared for hidden states and caches must match the architecture. */
function checkDecl(stage: string, t: TensorDecl, width: number, m: Manifest, p: string[]): void {
  const last = t.shape[t.shape.length - 1];
  const expectLast: Record<string, number> = {
    hidden_in: width,
    hidden_out: width,
    features: m.vision.hidden_size,
    embeds: m.language.hidden_size,
    logits: m.language.vocab_size,
    keys: m.vision.head_dim,
  };
  for (const name of CACHE_TENSORS) expectLast[name] = m.language.head_dim;
  const want = expectLast[t.name];
  if (want !== undefined && typeof last === 'number' && last !== want) p.push(`graphs["${stage}"] ${t.name} last dim is ${last}, architecture says ${want}`);
  if (IO_DTYPE_TENSORS.has(t.name) && t.dtype !== m.io_dtype && t.dtype !== 'float32') {
    p.push(`graphs["${stage}"] ${t.name} dtype ${t.dtype} does not match io_dtype ${m.io_dtype}`);
  }
}
