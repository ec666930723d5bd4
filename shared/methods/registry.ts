/**
 * The one table of token-reduction methods: one row per method, one file per method. Rows are
 * listed here explicitly (no method registers itself on import), and the maps are frozen.
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

function table<K extends string, V>(rows: ReadonlyArray<readonly [K, V]>): ReadonlyMap<K, V> {
  const map = new Map<K, V>(rows);
  // ReadonlyMap removes set/delete at compile time; freezing stops anything being hung on the object.
  return Object.freeze(map);
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
      `policy.${side}`,
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

export function visionMethodNames(): VisionMethodName[] {
  return [...VISION_METHODS.keys()];
}

export function languageMethodNames(): LanguageMethodName[] {
  return [...LANGUAGE_METHODS.keys()];
}
