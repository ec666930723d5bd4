/**
 * Request validation for both services, in one place: wire messages in, core types out, or one
 * INVALID_ARGUMENT listing every field violation (google.rpc.BadRequest), named by proto field path.
 * Unset fields take their documented defaults here, so the core never sees "unset". Method
 * parameters are judged against the names and types the methods declare (shared/methods).
 *
 * What needs the model (image decoding, budget feasibility, prompt length in tokens) is judged by the
 * core and the methods, which raise INVALID_ARGUMENT themselves.
 */
import { characterCount, hasVisibleText } from '../../shared/tokenizer/characters';
import { promptMisuse } from '../../shared/tokenizer/prompt-misuse';
import { randomInt } from 'node:crypto';
import { VlmError, type FieldViolation } from '../../shared/errors';
import { METHOD_PRESETS, paramReaders, type Budget, type ParamReader, type ReductionPolicy } from '../../shared/methods/policy';
import { languageMethodNames, visionMethodNames } from '../../shared/methods/registry';
import type { LanguageMethodName, ParamSpec, ReductionMode, VisionMethodName } from '../../shared/methods/types';
import type { SamplingParams } from '../../shared/engine/sampling';
import type { ParamValue, ReductionPolicy as WirePolicy, RequestLimits, SamplingParams as WireSampling } from '../../gen/vlm/v1/common';
import type { EncodeRequest } from '../../gen/vlm/v1/vision_service';
import type { GenerateRequest } from '../../gen/vlm/v1/language_service';
import { budgetToWire, paramsToWire } from './wire';
import { utf16Prefix } from './text-cut';
import { UNSUPPORTED_FORMAT, sniffFormat } from '../../shared/image/format';

export interface RequestLimitsConfig {
  readonly maxImageBytes: number;
  readonly maxPromptChars: number;
  /** Upper bound on sampling.max_tokens. */
  readonly maxNewTokens: number;
}

export interface ValidLimits {
  /** 0: the service's configured chunking. */
  readonly rowsPerChunk: number;
}

export interface ValidEncode {
  readonly image: Uint8Array;
  readonly policy: ReductionPolicy;
  readonly limits: ValidLimits;
}

export interface ValidGenerate extends ValidEncode {
  readonly question: string;
  readonly sampling: SamplingParams;
}

const MODES: readonly ReductionMode[] = ['clean', 'exact'];
export const MAX_PARAMS = 32;
const MAX_TEMPERATURE = 2;
/** Longest prefix of a caller's string that a message repeats. */
const ECHO_CHARS = 64;

/**
 * A caller's string as a message may repeat it: quoted, and cut to a short prefix with its length
 * when long. Messages travel in the status trailers (twice: grpc-message and the details), and a
 * client never sees a status whose trailers exceed its header-list limit; it waits for its deadline.
 */
function quoted(value: string): string {
  if (value.length <= ECHO_CHARS) return `'${value}'`;
  return `'${utf16Prefix(value, ECHO_CHARS)}…' (${value.length} characters)`;
}

/** A parameter's field path; an overlong (hence invalid) name is cut like any echo. */
function paramField(name: string): string {
  return `policy.params[${name.length <= ECHO_CHARS ? name : `${utf16Prefix(name, ECHO_CHARS)}…`}]`;
}

class Violations {
  readonly list: FieldViolation[] = [];
  add(field: string, description: string): void {
    this.list.push({ field, description });
  }
  throwIfAny(): void {
    if (this.list.length === 0) return;
    const message = this.list.map((v) => `${v.field}: ${v.description}`).join('; ');
    throw new VlmError('INVALID_ARGUMENT', message, { violations: this.list });
  }
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(bytes % (1024 * 1024) === 0 ? 0 : 1)} MiB`;
}

function checkImage(image: Uint8Array, limits: RequestLimitsConfig, v: Violations): void {
  if (image.length === 0) v.add('image', 'is empty; send the encoded image bytes (PNG, JPEG, WebP, GIF or TIFF)');
  else if (image.length > limits.maxImageBytes) {
    v.add('image', `is ${image.length} bytes, over the ${limits.maxImageBytes}-byte (${mib(limits.maxImageBytes)}) image limit (max_image_bytes); downscale or recompress it`);
  } else if (sniffFormat(image) === null) {
    // Here, not only at vision's decoder: the language service then refuses it before the hop.
    v.add('image', UNSUPPORTED_FORMAT);
  }
}

/** Protobuf decoding replaces invalid UTF-8 with U+FFFD, so its presence is how invalid input shows. */
function checkText(field: string, text: string, maxChars: number, v: Violations, required: boolean): void {
  if (required && !hasVisibleText(text)) v.add(field, 'is empty (nothing but spaces, control or zero-width characters); send the question to ask about the image');
  const chars = characterCount(text);
  if (chars > maxChars) v.add(field, `has ${chars} characters (Unicode code points), over the limit of ${maxChars} (max_prompt_chars)`);
  if (text.includes('\uFFFD')) v.add(field, 'is not valid UTF-8 (or contains U+FFFD)');
  if (text.includes('\u0000')) v.add(field, 'contains a NUL character');
}

function paramValue(name: string, p: ParamValue, v: Violations): number | string | boolean | undefined {
  const kind = p.kind;
  if (kind === undefined) {
    v.add(paramField(name), 'has no value; set number, text or flag');
    return undefined;
  }
  if (kind.$case === 'number') {
    if (!Number.isFinite(kind.number)) {
      v.add(paramField(name), `must be a finite number, got ${kind.number}`);
      return undefined;
    }
    return kind.number;
  }
  return kind.$case === 'text' ? kind.text : kind.flag;
}

function describeValue(value: number | string | boolean): string {
  if (typeof value === 'string') return `text ${quoted(value)}`;
  return typeof value === 'number' ? `number ${value}` : `flag ${value}`;
}

/** Why `value` does not fit `spec`, or null when it does. */
function specMismatch(spec: ParamSpec, value: number | string | boolean): string | null {
  const got = `got ${describeValue(value)}`;
  if (spec.type === 'number') {
    return typeof value === 'number' && value >= spec.min && value <= spec.max ? null : `must be a number in [${spec.min}, ${spec.max}], ${got}`;
  }
  if (spec.type === 'integer') {
    const max = spec.max ?? Number.MAX_SAFE_INTEGER;
    const range = spec.max === undefined ? `of at least ${spec.min}` : `in [${spec.min}, ${spec.max}]`;
    return typeof value === 'number' && Number.isInteger(value) && value >= spec.min && value <= max ? null : `must be an integer ${range}, ${got}`;
  }
  return typeof value === 'string' && spec.values.includes(value) ? null : `must be one of ${spec.values.map((x) => `'${x}'`).join(', ')}, ${got}`;
}

/** The specs `name` has among the readers (own names only: 'constructor' is no parameter). */
function specsOf(name: string, readers: readonly ParamReader[]): ParamSpec[] {
  return readers.flatMap((r) => (Object.hasOwn(r.params, name) ? [r.params[name]!] : []));
}

function acceptedNames(readers: readonly ParamReader[]): string {
  const names = [...new Set(readers.flatMap((r) => Object.keys(r.params)))].sort();
  const who = readers.map((r) => r.reader).join(', ');
  return names.length === 0 ? `${who} take no parameters` : `accepted by ${who}: ${names.join(', ')}`;
}

/** A parameter no reader declares, or whose value a declaring reader cannot use. */
function checkParam(name: string, value: number | string | boolean, readers: readonly ParamReader[], v: Violations): void {
  const specs = specsOf(name, readers);
  if (specs.length === 0) {
    v.add(paramField(name), `unknown parameter; ${acceptedNames(readers)}`);
    return;
  }
  const mismatch = specs.map((s) => specMismatch(s, value)).find((m) => m !== null);
  if (mismatch !== undefined) v.add(paramField(name), mismatch);
}

/** The methods the policy names; `known` when both are, so their parameters can be judged. */
function pickMethods(p: WirePolicy, v: Violations): { vision: VisionMethodName; language: LanguageMethodName; known: boolean } {
  let vision = p.visionMethod || 'none';
  let language = p.languageMethod || 'none';
  if (p.preset !== '') {
    const preset = METHOD_PRESETS[p.preset];
    if (preset === undefined) {
      v.add('policy.preset', `unknown preset ${quoted(p.preset)}; valid presets: ${Object.keys(METHOD_PRESETS).join(', ')}`);
    } else {
      if (p.visionMethod !== '' && p.visionMethod !== preset.vision) v.add('policy.vision_method', `${quoted(p.visionMethod)} contradicts preset '${p.preset}' (${preset.vision}); set one or the other`);
      if (p.languageMethod !== '' && p.languageMethod !== preset.language) v.add('policy.language_method', `${quoted(p.languageMethod)} contradicts preset '${p.preset}' (${preset.language}); set one or the other`);
      vision = preset.vision;
      language = preset.language;
    }
  }
  const visionNames: readonly string[] = visionMethodNames();
  const languageNames: readonly string[] = languageMethodNames();
  const knownVision = visionNames.includes(vision);
  const knownLanguage = languageNames.includes(language);
  if (!knownVision) v.add('policy.vision_method', `unknown vision method ${quoted(vision)}; valid: ${visionNames.join(', ')}`);
  if (!knownLanguage) v.add('policy.language_method', `unknown language method ${quoted(language)}; valid: ${languageNames.join(', ')}`);
  return { vision: vision as VisionMethodName, language: language as LanguageMethodName, known: knownVision && knownLanguage };
}

const PARAM_NAME_RULE = 'parameter names are lower_snake_case, at most 64 characters';

/**
 * `readers` null: the methods are unknown, so which names they take cannot be judged (their
 * violations already say what is wrong).
 */
function parseParams(wire: WirePolicy['params'], readers: readonly ParamReader[] | null, v: Violations): Record<string, number | string | boolean> {
  const params: Record<string, number | string | boolean> = {};
  // The generated decoder assigns map entries onto a plain object: a key `__proto__` sets its
  // prototype instead, and Object.entries never sees it. Such a map was sent one, so it is named.
  if (Object.getPrototypeOf(wire) !== Object.prototype) v.add(paramField('__proto__'), PARAM_NAME_RULE);
  const entries = Object.entries(wire);
  if (entries.length > MAX_PARAMS) v.add('policy.params', `has ${entries.length} entries, at most ${MAX_PARAMS} are accepted`);
  for (const [name, value] of entries.slice(0, MAX_PARAMS)) {
    if (!/^[a-z][a-z0-9_]{0,63}$/.test(name)) {
      v.add(paramField(name), PARAM_NAME_RULE);
      continue;
    }
    const parsed = paramValue(name, value, v);
    if (parsed === undefined) continue;
    if (readers !== null) checkParam(name, parsed, readers, v);
    params[name] = parsed;
  }
  return params;
}

function parsePolicy(p: WirePolicy | undefined, v: Violations): ReductionPolicy {
  const wire: WirePolicy = p ?? { visionMethod: '', languageMethod: '', budget: undefined, mode: '', params: {}, seed: undefined, preset: '' };
  const { vision, language, known } = pickMethods(wire, v);
  const mode = (wire.mode || 'clean') as ReductionMode;
  if (!MODES.includes(mode)) v.add('policy.mode', `must be one of ${MODES.join(', ')}, got ${quoted(wire.mode)}`);

  let budget: Budget | null = null;
  const b = wire.budget;
  if (b?.$case === 'budgetTokens') {
    if (b.budgetTokens < 1) v.add('policy.budget_tokens', 'must be at least 1 visual token');
    budget = { tokens: b.budgetTokens };
  } else if (b?.$case === 'budgetPercent') {
    if (!(b.budgetPercent > 0 && b.budgetPercent <= 100)) v.add('policy.budget_percent', `must be in (0, 100], got ${b.budgetPercent}`);
    budget = { percent: b.budgetPercent };
  }

  const params = parseParams(wire.params, known ? paramReaders(vision, language) : null, v);
  const seed = seedFromWire(wire.seed ?? 0n);
  return { vision, language, budget, mode, params, seed };
}

const SEED_BITS = 53n;
const SEED_MASK = (1n << SEED_BITS) - 1n;

/**
 * A uint64 seed as the 53-bit integer the samplers and methods draw from: itself below 2^53 (so a
 * seed reported back replays exactly), else its high bits folded into the low ones. Every uint64 is
 * accepted: clients that draw 64-bit random seeds (Go's rand.Uint64, Java's nextLong) must not be
 * refused most of the time.
 */
export function seedFromWire(seed: bigint): number {
  return Number((seed ^ (seed >> SEED_BITS)) & SEED_MASK);
}

function parseLimits(l: RequestLimits | undefined, v: Violations): ValidLimits {
  const rows = l?.rowsPerChunk;
  if (rows !== undefined && rows < 1) v.add('limits.rows_per_chunk', 'must be at least 1 (leave it unset for the service default)');
  return { rowsPerChunk: rows ?? 0 };
}

function parseSampling(s: WireSampling | undefined, defaultMaxTokens: number, limits: RequestLimitsConfig, v: Violations): SamplingParams {
  const temperature = s?.temperature ?? 0;
  if (!(temperature >= 0 && temperature <= MAX_TEMPERATURE)) v.add('sampling.temperature', `must be in [0, ${MAX_TEMPERATURE}] (0 is greedy), got ${temperature}`);
  const topP = s?.topP ?? 1;
  if (!(topP > 0 && topP <= 1)) v.add('sampling.top_p', `must be in (0, 1], got ${topP}`);
  // Unset: drawn per request (reported in the final message), or every unseeded sampled request
  // would draw the same answer.
  const seed = s?.seed === undefined ? randomInt(2 ** 48 - 1) : seedFromWire(s.seed);
  const maxNewTokens = s?.maxTokens ?? Math.min(defaultMaxTokens, limits.maxNewTokens);
  if (maxNewTokens < 1 || maxNewTokens > limits.maxNewTokens) v.add('sampling.max_tokens', `must be in [1, ${limits.maxNewTokens}], got ${maxNewTokens}`);
  return { temperature, topP, topK: 0, seed, maxNewTokens };
}

export function validateEncode(req: EncodeRequest, limits: RequestLimitsConfig): ValidEncode {
  const v = new Violations();
  checkImage(req.image, limits, v);
  const policy = parsePolicy(req.policy, v);
  const parsedLimits = parseLimits(req.limits, v);
  v.throwIfAny();
  return { image: req.image, policy, limits: parsedLimits };
}

/**
 * `defaultMaxTokens`: the model's generation.max_new_tokens; `imageToken` and `specialTokens`: its
 * prompt's image placeholder and its tokenizer's special tokens, whose text a question may not contain
 * (refused here, before the vision hop, not after it).
 */
export function validateGenerate(req: GenerateRequest, limits: RequestLimitsConfig, defaultMaxTokens: number, imageToken?: string, specialTokens: readonly string[] = []): ValidGenerate {
  const v = new Violations();
  checkImage(req.image, limits, v);
  checkText('prompt', req.prompt, limits.maxPromptChars, v, true);
  const misuse = imageToken ? promptMisuse(req.prompt, imageToken, specialTokens) : null;
  if (misuse) v.add('prompt', misuse);
  const sampling = parseSampling(req.sampling, defaultMaxTokens, limits, v);
  const policy = parsePolicy(req.policy, v);
  const parsedLimits = parseLimits(req.limits, v);
  v.throwIfAny();
  return { image: req.image, question: req.prompt, sampling, policy, limits: parsedLimits };
}

/** The wire form of a validated policy, for the vision hop (defaults made explicit). */
export function wirePolicy(p: ReductionPolicy): WirePolicy {
  return { visionMethod: p.vision, languageMethod: p.language, budget: budgetToWire(p.budget), mode: p.mode, params: paramsToWire(p.params), seed: BigInt(p.seed), preset: '' };
}
