/**
 * Numeric flags of the client commands (`vlm ask`, `eval`, `demo`, `bench load`, `bench latency`),
 * judged here against the range of the proto field they fill: a value outside it would otherwise fail to serialise (INTERNAL "Request message
 * serialization failure") or be judged by the service under a field name the user never typed.
 */
import { VlmError } from '../shared/errors';
import type { Budget } from '../shared/methods/policy';

export const UINT32_MAX = 2 ** 32 - 1;

type FlagValues = Record<string, unknown>;

function present(values: FlagValues, flag: string): string | undefined {
  const raw = values[flag];
  return raw === undefined ? undefined : String(raw);
}

/** A finite number, or undefined when absent (so the service's default applies). */
export function numberFlag(values: FlagValues, flag: string): number | undefined {
  const raw = present(values, flag);
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n)) throw VlmError.invalid(`--${flag}`, `expected a number, got "${raw}"`);
  return n;
}

/** An integer in [min, max], or undefined when absent. */
export function integerFlag(values: FlagValues, flag: string, min: number, max: number): number | undefined {
  const raw = present(values, flag);
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
    throw VlmError.invalid(`--${flag}`, `expected an integer in [${min}, ${max}], got "${raw}"`);
  }
  return n;
}

/** `--seed` of the in-process commands (eval, bench): the engine's seeds are integers below 2^53. */
export function seedFlag(values: FlagValues): number | undefined {
  return integerFlag(values, 'seed', 0, Number.MAX_SAFE_INTEGER);
}

const UINT64_MAX = 2n ** 64n - 1n;

/** `vlm ask --seed`: a uint64, as the API takes it (the service folds seeds past 2^53). */
export function wireSeedFlag(values: FlagValues): bigint | undefined {
  const raw = present(values, 'seed');
  if (raw === undefined) return undefined;
  const text = raw.trim();
  if (!/^\d{1,20}$/.test(text) || BigInt(text) > UINT64_MAX) throw VlmError.invalid('--seed', `expected an integer in [0, ${UINT64_MAX}], got "${raw}"`);
  return BigInt(text);
}

/** `128` (tokens, policy.budget_tokens: a uint32) or `25%` (of the unreduced visual tokens, in (0, 100]). */
export function parseBudgetFlag(raw: string | undefined): Budget | null {
  if (raw === undefined || raw === '') return null;
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(raw.trim());
  if (!m) throw VlmError.invalid('--budget', `expected a token count like 128 or a percentage like 25%, got "${raw}"`);
  const n = Number(m[1]);
  if (m[2]) {
    if (!(n > 0 && n <= 100)) throw VlmError.invalid('--budget', `a percentage must be in (0, 100], got "${raw}"`);
    return { percent: n };
  }
  if (!Number.isInteger(n) || n < 1 || n > UINT32_MAX) {
    throw VlmError.invalid('--budget', `a token count must be an integer in [1, ${UINT32_MAX}], got "${raw}"; for a share of the visual tokens write a percentage like ${n > 0 && n <= 100 ? m[1] : '25'}%`);
  }
  return { tokens: n };
}
