/**
 * Request validation for both services, in one place: wire messages in, core types out, or one
 * INVALID_ARGUMENT listing every field violation (google.rpc.BadRequest), named by proto field path.
 * Unset fields take their documented defaults here, so the core never sees "unset".
 *
 * What needs the model (image decoding, budget feasibility, prompt length in tokens) is judged by the
 * core and the methods, which raise INVALID_ARGUMENT themselves.
 */
import { VlmError, type FieldViolation } from '../../shared/errors';
import { METHOD_PRESETS, type Budget, type ReductionPolicy } from '../../shared/methods/policy';
import { languageMethodNames, visionMethodNames } from '../../shared/methods/registry';
import type { LanguageMethodName, ReductionMode, VisionMethodName } from '../../shared/methods/types';
import type { SamplingParams } from '../../shared/engine/sampling';
import type { ParamValue, ReductionPolicy as WirePolicy, RequestLimits, SamplingParams as WireSampling } from '../../gen/vlm/v1/common';
import type { EncodeRequest } from '../../gen/vlm/v1/vision_service';
import type { GenerateRequest } from '../../gen/vlm/v1/language_service';
import { paramsToWire } from './wire';

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
const MAX_PARAMS = 32;
const MAX_TEMPERATURE = 2;

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
  if (image.length === 0) v.add('image', 'is empty; send the encoded image bytes (PNG, JPEG, WebP, GIF, TIFF or AVIF)');
  else if (image.length > limits.maxImageBytes) {
    v.add('image', `is ${image.length} bytes, over the ${limits.maxImageBytes}-byte (${mib(limits.maxImageBytes)}) image limit (max_image_bytes); downscale or recompress it`);
  }
}

/** Protobuf decoding replaces invalid UTF-8 with U+FFFD, so its presence is how invalid input shows. */
function checkText(field: string, text: string, maxChars: number, v: Violations, required: boolean): void {
  if (required && text.trim() === '') v.add(field, 'is empty; send the question to ask about the image');
  if (text.length > maxChars) v.add(field, `has ${text.length} characters, over the limit of ${maxChars} (max_prompt_chars)`);
  if (text.includes('\uFFFD')) v.add(field, 'is not valid UTF-8 (or contains U+FFFD)');
  if (text.includes('\u0000')) v.add(field, 'contains a NUL character');
}

function paramValue(name: string, p: ParamValue, v: Violations): number | string | boolean | undefined {
  const kind = p.kind;
  if (kind === undefined) {
    v.add(`policy.params[${name}]`, 'has no value; set number, text or flag');
    return undefined;
  }
  if (kind.$case === 'number') {
    if (!Number.isFinite(kind.number)) v.add(`policy.params[${name}]`, `must be a finite number, got ${kind.number}`);
    return kind.number;
  }
  return kind.$case === 'text' ? kind.text : kind.flag;
}

function pickMethods(p: WirePolicy, v: Violations): { vision: VisionMethodName; language: LanguageMethodName } {
  let vision = p.visionMethod || 'none';
  let language = p.languageMethod || 'none';
  if (p.preset !== '') {
    const preset = METHOD_PRESETS[p.preset];
    if (preset === undefined) {
      v.add('policy.preset', `unknown preset '${p.preset}'; valid presets: ${Object.keys(METHOD_PRESETS).join(', ')}`);
    } else {
      if (p.visionMethod !== '' && p.visionMethod !== preset.vision) v.add('policy.vision_method', `'${p.visionMethod}' contradicts preset '${p.preset}' (${preset.vision}); set one or the other`);
      if (p.languageMethod !== '' && p.languageMethod !== preset.language) v.add('policy.language_method', `'${p.languageMethod}' contradicts preset '${p.preset}' (${preset.language}); set one or the other`);
      vision = preset.vision;
      language = preset.language;
    }
  }
  const visionNames: readonly string[] = visionMethodNames();
  const languageNames: readonly string[] = languageMethodNames();
  if (!visionNames.includes(vision)) v.add('policy.vision_method', `unknown vision method '${vision}'; valid: ${visionNames.join(', ')}`);
  if (!languageNames.includes(language)) v.add('policy.language_method', `unknown language method '${language}'; valid: ${languageNames.join(', ')}`);
  return { vision: vision as VisionMethodName, language: language as LanguageMethodName };
}

function parsePolicy(p: WirePolicy | undefined, v: Violations): ReductionPolicy {
  const wire: WirePolicy = p ?? { visionMethod: '', languageMethod: '', budget: undefined, mode: '', params: {}, seed: undefined, preset: '' };
  const { vision, language } = pickMethods(wire, v);
  const mode = (wire.mode || 'clean') as ReductionMode;
  if (!MODES.includes(mode)) v.add('policy.mode', `must be one of ${MODES.join(', ')}, got '${wire.mode}'`);

  let budget: Budget | null = null;
  const b = wire.budget;
  if (b?.$case === 'budgetTokens') {
    if (b.budgetTokens < 1) v.add('policy.budget_tokens', 'must be at least 1 visual token');
    budget = { tokens: b.budgetTokens };
  } else if (b?.$case === 'budgetPercent') {
    if (!(b.budgetPercent > 0 && b.budgetPercent <= 100)) v.add('policy.budget_percent', `must be in (0, 100], got ${b.budgetPercent}`);
    budget = { percent: b.budgetPercent };
  }

  const params: Record<string, number | string | boolean> = {};
  const entries = Object.entries(wire.params);
  if (entries.length > MAX_PARAMS) v.add('policy.params', `has ${entries.length} entries, at most ${MAX_PARAMS} are accepted`);
  for (const [name, value] of entries.slice(0, MAX_PARAMS)) {
    if (!/^[a-z][a-z0-9_]{0,63}$/.test(name)) v.add(`policy.params[${name.slice(0, 64)}]`, 'parameter names are lower_snake_case, at most 64 characters');
    const parsed = paramValue(name, value, v);
    if (parsed !== undefined) params[name] = parsed;
  }
  const seed = wire.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) v.add('policy.seed', `must be an integer in [0, 2^53), got ${seed}`);
  return { vision, language, budget, mode, params, seed };
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
  const seed = s?.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) v.add('sampling.seed', `must be an integer in [0, 2^53), got ${seed}`);
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

/** `defaultMaxTokens`: the model's generation.max_new_tokens. */
export function validateGenerate(req: GenerateRequest, limits: RequestLimitsConfig, defaultMaxTokens: number): ValidGenerate {
  const v = new Violations();
  checkImage(req.image, limits, v);
  checkText('prompt', req.prompt, limits.maxPromptChars, v, true);
  const sampling = parseSampling(req.sampling, defaultMaxTokens, limits, v);
  const policy = parsePolicy(req.policy, v);
  const parsedLimits = parseLimits(req.limits, v);
  v.throwIfAny();
  return { image: req.image, question: req.prompt, sampling, policy, limits: parsedLimits };
}

/** The policy of a request that sets none: both sides 'none', no budget. */
export function noReduction(): ReductionPolicy {
  return { vision: 'none', language: 'none', budget: null, mode: 'clean', params: {}, seed: 0 };
}

/** The wire form of a validated policy, for the vision hop (defaults made explicit). */
export function wirePolicy(p: ReductionPolicy): WirePolicy {
  const budget: WirePolicy['budget'] =
    p.budget === null ? undefined : 'tokens' in p.budget ? { $case: 'budgetTokens', budgetTokens: p.budget.tokens } : { $case: 'budgetPercent', budgetPercent: p.budget.percent };
  return { visionMethod: p.vision, languageMethod: p.language, budget, mode: p.mode, params: paramsToWire(p.params), seed: p.seed, preset: '' };
}
