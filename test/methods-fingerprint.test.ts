/**
 * Every method decides exactly as it did when this hash was taken: each language and vision method,
 * both modes, three budgets, LLaVA-like and odd small sizes, every combination weight to the bit
 * (scripts/method-fingerprint.ts). Work meant only to make a method faster must leave it as it is.
 * A change meant to alter what a method computes updates PINNED, and the commit says why; the
 * official-function and clean-mode vector tests say whether the new decisions are right.
 */
import { describe, expect, it } from 'vitest';
import { methodFingerprint } from '../scripts/method-fingerprint';

const PINNED = 'e6b59802a294d812885c1c72083f8fe7a569e3ab0f6e1daf5e4d7b17957a621f';

describe('the methods fingerprint', () => {
  it('is the pinned hash, over every method, mode and budget', () => {
    const f = methodFingerprint();
    expect({ languageSteps: f.languageSteps, visionSteps: f.visionSteps, infeasible: f.infeasible }).toEqual({ languageSteps: 162, visionSteps: 384, infeasible: 38 });
    expect(f.hash).toBe(PINNED);
  }, 60_000);
});
