import { VlmError } from '../../errors';

/**
 * Readers for fields of untrusted JSON (span files, OTLP request bodies). Each takes the field's path
 * (`resourceSpans[0].scopeSpans[2].spans[5].startTimeUnixNano`) and throws INVALID_ARGUMENT naming
 * that path and what is wrong with the value, so that a bad payload is refused with a message a
 * person can act on, never with a TypeError from deep inside the analysis.
 */

export type Json = Record<string, unknown>;

const UINT64_MAX = (1n << 64n) - 1n;

export function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/** A short JSON-ish rendering of a bad value for error messages. */
export function shown(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (typeof v === 'bigint') return `${v}`;
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  let text: string;
  try {
    text = JSON.stringify(v) ?? String(v);
  } catch {
    text = String(v);
  }
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

export function objectAt(v: unknown, path: string): Json {
  if (!isObject(v)) throw VlmError.invalid(path, `expected an object, got ${shown(v)}`);
  return v;
}

/** An object, or undefined when the field is absent (a default in proto3 JSON). */
export function optionalObject(v: unknown, path: string): Json | undefined {
  return v === undefined || v === null ? undefined : objectAt(v, path);
}

export function arrayAt(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) throw VlmError.invalid(path, `expected an array, got ${shown(v)}`);
  return v;
}

/** An array, or [] when the field is absent (proto3 JSON leaves empty repeated fields out). */
export function optionalArray(v: unknown, path: string): unknown[] {
  return v === undefined || v === null ? [] : arrayAt(v, path);
}

export function stringAt(v: unknown, path: string): string {
  if (v === undefined) throw VlmError.invalid(path, 'missing');
  if (typeof v !== 'string') throw VlmError.invalid(path, `expected a string, got ${shown(v)}`);
  return v;
}

export function optionalString(v: unknown, path: string, fallback: string): string {
  return v === undefined || v === null ? fallback : stringAt(v, path);
}

/**
 * A non-negative whole number below 2^64 (an OTLP fixed64 or a Jaeger microsecond count) as a decimal
 * string. Accepted spellings: decimal text (how int64 travels in JSON), a JSON number that is a whole
 * number, a bigint, or protobufjs's {low, high} Long. A negative, fractional or non-decimal time is
 * refused rather than written: it would make every duration around it meaningless. A JSON number
 * above 2^53 arrives already rounded by the JSON parser (to 256 ns for today's unix nanoseconds); it is
 * taken as it is, since OTLP/JSON allows numbers, and the reports work in milliseconds.
 */
export function wholeNumberAt(v: unknown, path: string, unit: string): string {
  if (v === undefined || v === null) throw VlmError.invalid(path, 'missing');
  let n: bigint | undefined;
  if (typeof v === 'string' && /^\d{1,20}$/.test(v)) n = BigInt(v);
  else if (typeof v === 'number' && Number.isInteger(v) && v >= 0) n = BigInt(v);
  else if (typeof v === 'bigint' && v >= 0n) n = v;
  else if (isObject(v) && typeof v.low === 'number' && typeof v.high === 'number') n = (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
  if (n === undefined || n > UINT64_MAX) throw VlmError.invalid(path, `${shown(v)} is not a non-negative whole number of ${unit}`);
  return n.toString();
}

/**
 * A span's start and end, checked to be in order (a negative duration breaks every sum over spans).
 * `path` is the span's; '' when the caller's context already names the span (a line of a file).
 */
export function checkSpanTimes(start: string, end: string, path: string): void {
  if (BigInt(end) >= BigInt(start)) return;
  const problem = `ends (${end}) before it starts (${start})`;
  const field = path === '' ? 'endTimeUnixNano' : `${path}.endTimeUnixNano`;
  throw new VlmError('INVALID_ARGUMENT', path === '' ? problem : `${path}: ${problem}`, { violations: [{ field, description: problem }] });
}

/**
 * Runs `read` and prefixes any INVALID_ARGUMENT it throws with `where` (a file name and line), so
 * the message leads with where to look; other errors pass unchanged.
 */
export function within<T>(where: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    if (err instanceof VlmError && err.code === 'INVALID_ARGUMENT') {
      throw new VlmError('INVALID_ARGUMENT', `${where}: ${err.message}`, { cause: err, violations: [...err.violations] });
    }
    throw err;
  }
}
