/**
 * Request validation: defaults for unset fields, and one INVALID_ARGUMENT naming every bad field.
 */
import { describe, expect, it } from 'vitest';
import { VlmError } from '../shared/errors';
import { validateEncode, validateGenerate, wirePolicy } from '../services/common/validate';
import type { GenerateRequest } from '../gen/vlm/v1/language_service';
import { ReductionPolicy as WirePolicy } from '../gen/vlm/v1/common';

const limits = { maxImageBytes: 1000, maxPromptChars: 50, maxNewTokens: 64 };
const png = Buffer.from([0x89, 0x50, 0x4e, 0x47]);

function request(over: Partial<GenerateRequest> = {}): GenerateRequest {
  return { image: png, prompt: 'what shape is it?', sampling: undefined, policy: undefined, limits: undefined, ...over };
}

function violationsOf(fn: () => unknown): Array<[string, string]> {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof VlmError) || err.code !== 'INVALID_ARGUMENT') throw err;
    return err.violations.map((v) => [v.field, v.description]);
  }
  throw new Error('expected INVALID_ARGUMENT');
}

describe('validateGenerate', () => {
  it('fills the documented defaults: no reduction, greedy, the model default max tokens (capped)', () => {
    const ok = validateGenerate(request(), limits, 32);
    expect(ok.policy).toEqual({ vision: 'none', language: 'none', budget: null, mode: 'clean', params: {}, seed: 0 });
    expect(ok.sampling).toEqual({ temperature: 0, topP: 1, topK: 0, seed: 0, maxNewTokens: 32 });
    expect(ok.limits).toEqual({ rowsPerChunk: 0 });
    expect(validateGenerate(request(), limits, 500).sampling.maxNewTokens).toBe(64);
    expect(ok.question).toBe('what shape is it?');
  });

  it('distinguishes an explicit zero from unset (temperature 0, seed 0 set explicitly)', () => {
    const ok = validateGenerate(request({ sampling: { temperature: 0, topP: 0.5, seed: 0, maxTokens: 3 } }), limits, 32);
    expect(ok.sampling).toMatchObject({ temperature: 0, topP: 0.5, seed: 0, maxNewTokens: 3 });
  });

  it('names every bad field at once', () => {
    const v = violationsOf(() =>
      validateGenerate(
        request({
          image: Buffer.alloc(0),
          prompt: ' ',
          sampling: { temperature: 5, topP: 0, seed: undefined, maxTokens: 0 },
          policy: { ...WirePolicy.fromPartial({ visionMethod: 'nope', mode: 'fast' }), budget: { $case: 'budgetPercent', budgetPercent: 150 } },
          limits: { rowsPerChunk: 0 },
        }),
        limits,
        32,
      ),
    );
    expect(v.map(([f]) => f)).toEqual([
      'image',
      'prompt',
      'sampling.temperature',
      'sampling.top_p',
      'sampling.max_tokens',
      'policy.vision_method',
      'policy.mode',
      'policy.budget_percent',
      'limits.rows_per_chunk',
    ]);
    expect(v[5]![1]).toMatch(/unknown vision method 'nope'; valid: none/);
  });

  it('judges the image size itself, naming the limit', () => {
    const [[field, why]] = violationsOf(() => validateGenerate(request({ image: Buffer.alloc(1001) }), limits, 32)) as [[string, string]];
    expect(field).toBe('image');
    expect(why).toMatch(/1001 bytes, over the 1000-byte .* image limit \(max_image_bytes\)/);
  });

  it('rejects prompts that are too long, invalid UTF-8 (decoded as U+FFFD) or contain NUL', () => {
    expect(violationsOf(() => validateGenerate(request({ prompt: 'x'.repeat(51) }), limits, 32))[0]![1]).toMatch(/51 characters, over the limit of 50/);
    const invalidUtf8 = Buffer.from([0x77, 0xff, 0xfe, 0x68]).toString('utf8');
    expect(violationsOf(() => validateGenerate(request({ prompt: invalidUtf8 }), limits, 32))[0]).toEqual(['prompt', 'is not valid UTF-8 (or contains U+FFFD)']);
    expect(violationsOf(() => validateGenerate(request({ prompt: 'a\u0000b' }), limits, 32))[0]![0]).toBe('prompt');
  });

  it('rejects malformed method parameters and unknown presets', () => {
    const v = violationsOf(() =>
      validateGenerate(
        request({ policy: WirePolicy.fromPartial({ preset: 'turbo', params: { Bad: { kind: { $case: 'number', number: 1 } }, empty: { kind: undefined } } }) }),
        limits,
        32,
      ),
    );
    expect(v.map(([f]) => f)).toEqual(['policy.preset', 'policy.params[Bad]', 'policy.params[empty]']);
  });
});

describe('validateEncode', () => {
  it('takes the policy and the chunking limit; the prompt is not its business', () => {
    const ok = validateEncode({ image: png, policy: WirePolicy.fromPartial({ budget: { $case: 'budgetTokens', budgetTokens: 8 }, seed: 7 }), limits: { rowsPerChunk: 4 } }, limits);
    expect(ok.policy).toMatchObject({ budget: { tokens: 8 }, seed: 7 });
    expect(ok.limits.rowsPerChunk).toBe(4);
  });
});

describe('wirePolicy', () => {
  it('round-trips a validated policy through the wire form unchanged', () => {
    const policy = validateEncode(
      {
        image: png,
        policy: WirePolicy.fromPartial({ budget: { $case: 'budgetPercent', budgetPercent: 25 }, mode: 'exact', params: { lambda: { kind: { $case: 'number', number: 0.35 } }, version: { kind: { $case: 'text', text: 'v1' } } }, seed: 3 }),
        limits: undefined,
      },
      limits,
    ).policy;
    const again = validateEncode({ image: png, policy: WirePolicy.decode(WirePolicy.encode(wirePolicy(policy)).finish()), limits: undefined }, limits).policy;
    expect(again).toEqual(policy);
  });
});
