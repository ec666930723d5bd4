/** shared/image/pil-resample.ts against Pillow itself (fixture written by test/fixtures/images/make_pil_resize.py). */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { pilResize } from '../shared/image/pil-resample';
import type { Resample } from '../shared/bundle/manifest';
import { readJson, ROOT } from './core-helpers';

interface Case {
  in: [number, number];
  out: [number, number];
  resample: Resample;
  input: string;
  output: string;
}
const fixture = readJson<{ pillow: string; cases: Case[] }>(path.join(ROOT, 'test/fixtures/images/pil-resize.json'));

describe(`PIL-exact resize (reference: Pillow ${fixture.pillow})`, () => {
  it.each(fixture.cases.map((c) => [`${c.resample} ${c.in.join('x')} -> ${c.out.join('x')}`, c] as const))('%s is byte-identical', (_n, c) => {
    const got = pilResize(new Uint8Array(Buffer.from(c.input, 'base64')), c.in[0], c.in[1], c.out[0], c.out[1], c.resample);
    const want = new Uint8Array(Buffer.from(c.output, 'base64'));
    let mismatches = 0;
    let worst = 0;
    for (let i = 0; i < want.length; i++) {
      if (got[i] !== want[i]) mismatches++;
      worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    }
    expect({ mismatches, worst, length: got.length }).toEqual({ mismatches: 0, worst: 0, length: want.length });
  });
});
