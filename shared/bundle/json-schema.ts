/**
 * A validator for the subset of JSON Schema (draft 2020-12) that manifest.schema.json uses: type,
 * enum, const, properties, required, additionalProperties, patternProperties, items, prefixItems,
 * minItems, maxItems, minimum, maximum, exclusiveMinimum, exclusiveMaximum, minLength, pattern,
 * uniqueItems, $ref to #/$defs, allOf, anyOf, oneOf. A keyword outside the subset throws, so a schema
 * change can never be silently ignored.
 */
import { VlmError } from '../errors';

export type Schema = Record<string, unknown> | boolean;

const ANNOTATIONS = new Set(['$schema', '$id', '$comment', 'title', 'description', 'examples', 'default', '$defs', 'definitions', 'format', 'deprecated', 'readOnly', 'writeOnly']);

export interface SchemaViolation {
  /** JSON pointer-ish path, e.g. `vision.num_layers` or `graphs["vision/embed"].inputs[0]`. */
  readonly path: string;
  readonly message: string;
}

export function validateJson(schema: Schema, value: unknown): SchemaViolation[] {
  const root = schema;
  const out: SchemaViolation[] = [];
  check(root, schema, value, '', out);
  return out;
}

function typeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function matchesType(v: unknown, t: string): boolean {
  const actual = typeOf(v);
  return actual === t || (t === 'number' && actual === 'integer');
}

function join(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? (path ? `${path}.${key}` : key) : `${path}[${JSON.stringify(key)}]`;
}

function resolveRef(root: Schema, ref: string): Schema {
  if (!ref.startsWith('#/')) throw new VlmError('INTERNAL', `manifest schema: only local $ref is supported, got ${ref}`);
  let node: unknown = root;
  for (const part of ref.slice(2).split('/')) node = (node as Record<string, unknown>)[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  if (node === undefined) throw new VlmError('INTERNAL', `manifest schema: unresolved $ref ${ref}`);
  return node as Schema;
}

function check(root: Schema, schema: Schema, v: unknown, path: string, out: SchemaViolation[]): void {
  if (schema === true) return;
  if (schema === false) {
    out.push({ path, message: 'is not allowed' });
    return;
  }
  const where = path || '(root)';
  for (const [kw, arg] of Object.entries(schema)) {
    if (ANNOTATIONS.has(kw)) continue;
    switch (kw) {
      case '$ref':
        check(root, resolveRef(root, arg as string), v, path, out);
        break;
      case 'type': {
        const types = Array.isArray(arg) ? (arg as string[]) : [arg as string];
        if (!types.some((t) => matchesType(v, t))) out.push({ path: where, message: `must be ${types.join(' or ')}, got ${typeOf(v)}` });
        break;
      }
      case 'enum':
        if (!(arg as unknown[]).some((e) => deepEqual(e, v))) out.push({ path: where, message: `must be one of ${(arg as unknown[]).map((e) => JSON.stringify(e)).join(', ')}, got ${JSON.stringify(v)}` });
        break;
      case 'const':
        if (!deepEqual(arg, v)) out.push({ path: where, message: `must be ${JSON.stringify(arg)}, got ${JSON.stringify(v)}` });
        break;
      case 'required':
        if (typeOf(v) === 'object') for (const k of arg as string[]) if (!(k in (v as object))) out.push({ path: where, message: `missing required field "${k}"` });
        break;
      case 'properties':
        if (typeOf(v) === 'object') {
          for (const [k, s] of Object.entries(arg as Record<string, Schema>)) {
            if (k in (v as object)) check(root, s, (v as Record<string, unknown>)[k], join(path, k), out);
          }
        }
        break;
      case 'patternProperties':
        if (typeOf(v) === 'object') {
          for (const [pat, s] of Object.entries(arg as Record<string, Schema>)) {
            const re = new RegExp(pat, 'u');
            for (const [k, val] of Object.entries(v as object)) if (re.test(k)) check(root, s, val, join(path, k), out);
          }
        }
        break;
      case 'additionalProperties':
        if (typeOf(v) === 'object') {
          const known = new Set(Object.keys((schema.properties as object | undefined) ?? {}));
          const pats = Object.keys((schema.patternProperties as object | undefined) ?? {}).map((p) => new RegExp(p, 'u'));
          for (const [k, val] of Object.entries(v as object)) {
            if (known.has(k) || pats.some((re) => re.test(k))) continue;
            if (arg === false) out.push({ path: join(path, k), message: 'is not an allowed field' });
            else check(root, arg as Schema, val, join(path, k), out);
          }
        }
        break;
      case 'propertyNames':
        if (typeOf(v) === 'object') for (const k of Object.keys(v as object)) check(root, arg as Schema, k, join(path, k), out);
        break;
      case 'items':
        if (Array.isArray(v)) {
          const start = Array.isArray(schema.prefixItems) ? schema.prefixItems.length : 0;
          for (let i = start; i < v.length; i++) check(root, arg as Schema, v[i], join(path, i), out);
        }
        break;
      case 'prefixItems':
        if (Array.isArray(v)) (arg as Schema[]).forEach((s, i) => i < v.length && check(root, s, v[i], join(path, i), out));
        break;
      case 'minItems':
        if (Array.isArray(v) && v.length < (arg as number)) out.push({ path: where, message: `must have at least ${arg as number} items, has ${v.length}` });
        break;
      case 'maxItems':
        if (Array.isArray(v) && v.length > (arg as number)) out.push({ path: where, message: `must have at most ${arg as number} items, has ${v.length}` });
        break;
      case 'uniqueItems':
        if (arg === true && Array.isArray(v) && new Set(v.map((e) => JSON.stringify(e))).size !== v.length) out.push({ path: where, message: 'items must be unique' });
        break;
      case 'minimum':
        if (typeof v === 'number' && v < (arg as number)) out.push({ path: where, message: `must be >= ${arg as number}, got ${v}` });
        break;
      case 'maximum':
        if (typeof v === 'number' && v > (arg as number)) out.push({ path: where, message: `must be <= ${arg as number}, got ${v}` });
        break;
      case 'exclusiveMinimum':
        if (typeof v === 'number' && v <= (arg as number)) out.push({ path: where, message: `must be > ${arg as number}, got ${v}` });
        break;
      case 'exclusiveMaximum':
        if (typeof v === 'number' && v >= (arg as number)) out.push({ path: where, message: `must be < ${arg as number}, got ${v}` });
        break;
      case 'minLength':
        if (typeof v === 'string' && v.length < (arg as number)) out.push({ path: where, message: `must be at least ${arg as number} characters` });
        break;
      case 'maxLength':
        if (typeof v === 'string' && v.length > (arg as number)) out.push({ path: where, message: `must be at most ${arg as number} characters` });
        break;
      case 'pattern':
        if (typeof v === 'string' && !new RegExp(arg as string, 'u').test(v)) out.push({ path: where, message: `must match /${arg as string}/, got ${JSON.stringify(v)}` });
        break;
      case 'allOf':
        for (const s of arg as Schema[]) check(root, s, v, path, out);
        break;
      case 'anyOf':
      case 'oneOf': {
        const passing = (arg as Schema[]).filter((s) => {
          const sub: SchemaViolation[] = [];
          check(root, s, v, path, sub);
          return sub.length === 0;
        }).length;
        if (kw === 'anyOf' ? passing === 0 : passing !== 1) out.push({ path: where, message: `must match ${kw === 'anyOf' ? 'at least one' : 'exactly one'} of ${(arg as unknown[]).length} alternatives (matches ${passing})` });
        break;
      }
      default:
        throw new VlmError('INTERNAL', `manifest schema uses JSON Schema keyword "${kw}", which the loader's validator does not implement (shared/bundle/json-schema.ts)`);
    }
  }
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
