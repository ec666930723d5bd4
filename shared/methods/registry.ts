/**
 * The one table of token-reduction methods: one row per method, one file per method. Rows are
 * listed here explicitly (no method registers itself on import), and the tables cannot be changed at
 * run time.
 */
import { VlmError } from '../errors';
import { fastv } from './fastv';
import { ficocoL } from './ficoco-l';
import { ficocoV } from './ficoco-v';
import { noneLanguage, noneVision } from './none';
import { randomLanguage } from './random-language';
import { randomVision } from './random-vision';
import { sparsevlm } from './sparsevlm';
import { tome } from './tome';
import type { LanguageMethodName, LanguageReducer, VisionMethodName, VisionReducer } from './types';

/**
 * A Map frozen with Object.freeze still takes set() and delete() (they change its internal slots, not
 * its properties), so the table is a Map behind an object that has no way to change it.
 */
class Table<K extends string, V> implements ReadonlyMap<K, V> {
  readonly #map: Map<K, V>;
  constructor(rows: ReadonlyArray<readonly [K, V]>) {
    this.#map = new Map(rows);
    Object.freeze(this);
  }
  get size(): number {
    return this.#map.size;
  }
  get(key: K): V | undefined {
    return this.#map.get(key);
  }
  has(key: K): boolean {
    return this.#map.has(key);
  }
  forEach(fn: (value: V, key: K, map: ReadonlyMap<K, V>) => void): void {
    this.#map.forEach((v, k) => fn(v, k, this));
  }
  keys(): MapIterator<K> {
    return this.#map.keys();
  }
  values(): MapIterator<V> {
    return this.#map.values();
  }
  entries(): MapIterator<[K, V]> {
    return this.#map.entries();
  }
  [Symbol.iterator](): MapIterator<[K, V]> {
    return this.#map[Symbol.iterator]();
  }
}

function table<K extends string, V>(rows: ReadonlyArray<readonly [K, V]>): ReadonlyMap<K, V> {
  return new Table(rows);
}

export const VISION_METHODS: ReadonlyMap<VisionMethodName, VisionReducer> = table<VisionMethodName, VisionReducer>([
  ['none', noneVision],
  ['ficoco-v', ficocoV],
  ['tome', tome],
  ['random', randomVision],
]);

export const LANGUAGE_METHODS: ReadonlyMap<LanguageMethodName, LanguageReducer> = table<LanguageMethodName, LanguageReducer>([
  ['none', noneLanguage],
  ['sparsevlm', sparsevlm],
  ['ficoco-l', ficocoL],
  ['fastv', fastv],
  ['random', randomLanguage],
]);

function lookup<V>(side: 'vision' | 'language', map: ReadonlyMap<string, V>, name: string): V {
  const found = map.get(name);
  if (found === undefined) {
    throw VlmError.invalid(
      `policy.${side}_method`,
      `unknown ${side} method '${name}'; valid ${side} methods: ${[...map.keys()].join(', ')}`,
    );
  }
  return found;
}

export function getVisionReducer(name: string): VisionReducer {
  return lookup('vision', VISION_METHODS, name);
}

export function getLanguageReducer(name: string): LanguageReducer {
  return lookup('language', LANGUAGE_METHODS, name);
}

export function isVisionMethod(name: string): name is VisionMethodName {
  return (VISION_METHODS as ReadonlyMap<string, unknown>).has(name);
}

export function isLanguageMethod(name: string): name is LanguageMethodName {
  return (LANGUAGE_METHODS as ReadonlyMap<string, unknown>).has(name);
}

export function visionMethodNames(): VisionMethodName[] {
  return [...VISION_METHODS.keys()];
}

export function languageMethodNames(): LanguageMethodName[] {
  return [...LANGUAGE_METHODS.keys()];
}
