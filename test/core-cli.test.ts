/**
 * `vlm` through its package bin: dispatch, errors as `CODE: message`, and `vlm eval --json` on a
 * small model folder (the random bundle with a few generated items of two types).
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isCorrect, selectEvenly, type EvalItem } from '../cli/eval-items';
import { integerFlag, parseBudgetFlag, seedFlag } from '../cli/numeric-flags';
import { RANDOM_BUNDLE, ROOT } from './core-helpers';

const exec = promisify(execFile);
const BIN = path.join(ROOT, 'bin/vlm.js');
let dir: string;

async function vlm(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await exec(process.execPath, [BIN, ...args], { cwd: tmpdir(), env: { ...process.env, VLM_WORKERS: '1' } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'vlm-eval-'));
  await cp(RANDOM_BUNDLE, dir, { recursive: true });
  await mkdir(path.join(dir, 'eval'));
  const lines: string[] = [];
  for (const [i, color] of ['red', 'blue', 'green'].entries()) {
    const rgb = { red: [220, 20, 20], blue: [20, 20, 220], green: [20, 220, 20] }[color]!;
    await sharp({ create: { width: 40, height: 32, channels: 3, background: { r: rgb[0]!, g: rgb[1]!, b: rgb[2]! } } }).png().toFile(path.join(dir, 'eval', `${i}.png`));
    lines.push(JSON.stringify({ image: `${i}.png`, question: 'what color is the object?', answer: color, type: 'color' }));
    lines.push(JSON.stringify({ image: `${i}.png`, question: 'how many objects are there?', answer: '1', type: 'count' }));
  }
  await writeFile(path.join(dir, 'eval/items.jsonl'), `${lines.join('\n')}\n`);
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('vlm CLI', () => {
  it('eval --json prints one JSON line last on stdout, progress on stderr', async () => {
    const r = await vlm(['eval', '--model', dir, '--limit', '4', '--json']);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]!) as Record<string, any>;
    expect(out.items).toBe(4);
    expect(Object.keys(out.by_type).sort()).toEqual(['color', 'count']);
    expect(out.by_type.color.items).toBe(2);
    expect(out.accuracy).toBeGreaterThanOrEqual(0);
    expect(out.accuracy).toBeLessThanOrEqual(1);
    expect(out.visual_tokens_avg).toBe(16);
    expect(out.flops.total).toBeGreaterThan(0);
    expect(out.macs.total).toBe(out.flops.total / 2);
    expect(r.stderr).toMatch(/\[eval\] 4\/4 accuracy/);
  });

  it('eval with a reduction policy reports the achieved budget', async () => {
    const r = await vlm(['eval', '--model', dir, '--limit', '2', '--vision-method', 'tome', '--budget', '50%', '--json']);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout.trim()) as Record<string, any>;
    expect(out.visual_tokens_avg).toBe(8);
    expect(out.policy).toMatchObject({ vision: 'tome', language: 'none', budget: { percent: 50 } });
  });

  it('prints CODE: message and exits 1 on a bad request; unknown commands exit 2 with usage', async () => {
    const bad = await vlm(['eval', '--model', dir, '--budget', 'lots']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^INVALID_ARGUMENT: --budget: expected a token count/m);
    const missing = await vlm(['eval', '--model', path.join(dir, 'nothing')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/FAILED_PRECONDITION: .*nothing is not a model bundle \(no manifest\.json there\); point --model/);
    const unknown = await vlm(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "frobnicate"[\s\S]*eval/);
  });

  // Each would fail to serialise into the request (or be judged under a proto field name): the CLI
  // names the flag and its range before anything is sent. Port 1 has no service: nothing is sent.
  const askFlags: Array<[string[], RegExp]> = [
    [['--budget', '12.5'], /^INVALID_ARGUMENT: --budget: a token count must be an integer in \[1, 4294967295\], got "12\.5"; for a share of the visual tokens write a percentage like 12\.5%$/m],
    [['--budget', '0'], /^INVALID_ARGUMENT: --budget: a token count must be an integer in \[1, 4294967295\], got "0"; for a share of the visual tokens write a percentage like 25%$/m],
    [['--seed', '1.5'], /^INVALID_ARGUMENT: --seed: expected an integer in \[0, 18446744073709551615\], got "1\.5"$/m],
    [['--seed=-1'], /^INVALID_ARGUMENT: --seed: expected an integer in \[0, 18446744073709551615\], got "-1"$/m],
    [['--max-tokens', '1e10'], /^INVALID_ARGUMENT: --max-tokens: expected an integer in \[1, 4294967295\], got "1e10"$/m],
    [['--max-tokens', '2.5'], /^INVALID_ARGUMENT: --max-tokens: expected an integer in \[1, 4294967295\], got "2\.5"$/m],
  ];
  for (const [flags, message] of askFlags) {
    it(`ask ${flags.join(' ')} is INVALID_ARGUMENT naming the flag and its range`, async () => {
      const r = await vlm(['ask', '--image', path.join(dir, 'eval/0.png'), '--question', 'what color?', '--target', '127.0.0.1:1', '--deadline-ms', '3000', ...flags]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(message);
    });
  }

  it('eval judges its numeric and method flags before starting the pool', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['--budget', '12.5'], /^INVALID_ARGUMENT: --budget: a token count must be an integer/m],
      [['--seed', '1.5'], /^INVALID_ARGUMENT: --seed: expected an integer in \[0, 9007199254740991\]/m],
      [['--max-new-tokens', '1e10'], /^INVALID_ARGUMENT: --max-new-tokens: expected an integer in \[1, 256\], got "1e10"$/m],
      [['--vision-method', 'fastv'], /^INVALID_ARGUMENT: --vision-method: unknown method "fastv"; valid: none, ficoco-v, tome, random$/m],
      [['--language-method', 'tome'], /^INVALID_ARGUMENT: --language-method: unknown method "tome"; valid: none, sparsevlm, ficoco-l, fastv, random$/m],
    ];
    for (const [flags, message] of cases) {
      const r = await vlm(['eval', '--model', dir, '--limit', '1', ...flags]);
      expect(r.code, flags.join(' ')).toBe(1);
      expect(r.stderr).toMatch(message);
    }
  });
});

describe('eval helpers', () => {
  it('--limit takes items evenly across types, in file order', () => {
    const items: EvalItem[] = ['a', 'a', 'a', 'a', 'b', 'c', 'c'].map((type, i) => ({ image: `${i}`, question: 'q', answer: 'x', type }));
    expect(selectEvenly(items, 5).map((i) => i.image)).toEqual(['0', '4', '5', '1', '6']);
    expect(selectEvenly(items, 100)).toHaveLength(7);
  });

  it('matches answers ignoring case, spacing and trailing punctuation', () => {
    expect(isCorrect(' Red.', 'red')).toBe(true);
    expect(isCorrect('red circle', 'red')).toBe(false);
  });

  it('parses budgets as tokens or percent', () => {
    expect(parseBudgetFlag('128')).toEqual({ tokens: 128 });
    expect(parseBudgetFlag('12.5%')).toEqual({ percent: 12.5 });
    expect(parseBudgetFlag('100%')).toEqual({ percent: 100 });
    expect(parseBudgetFlag(undefined)).toBeNull();
    expect(() => parseBudgetFlag('-3')).toThrow(/--budget/);
  });

  it('takes a token budget only as a whole number a uint32 holds, and a percentage only in (0, 100]', () => {
    expect(() => parseBudgetFlag('12.5')).toThrow(/--budget: a token count must be an integer in \[1, 4294967295\]/);
    expect(() => parseBudgetFlag('0')).toThrow(/--budget/);
    expect(() => parseBudgetFlag('4294967296')).toThrow(/--budget/);
    expect(parseBudgetFlag('4294967295')).toEqual({ tokens: 4294967295 });
    expect(() => parseBudgetFlag('0%')).toThrow(/--budget: a percentage must be in \(0, 100\]/);
    expect(() => parseBudgetFlag('100.5%')).toThrow(/--budget/);
  });

  it('takes seeds from 0 to 2^53 - 1 and integer flags only within their range', () => {
    expect(seedFlag({ seed: '0' })).toBe(0);
    expect(seedFlag({ seed: String(Number.MAX_SAFE_INTEGER) })).toBe(Number.MAX_SAFE_INTEGER);
    expect(() => seedFlag({ seed: '9007199254740992' })).toThrow(/--seed/);
    expect(seedFlag({})).toBeUndefined();
    expect(integerFlag({ n: '1e3' }, 'n', 1, 2000)).toBe(1000);
    expect(() => integerFlag({ n: '' }, 'n', 0, 10)).toThrow(/--n: expected an integer in \[0, 10\], got ""/);
  });
});
