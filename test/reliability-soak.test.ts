/**
 * The CI soak: `vlm bench load`'s engine for 30 s against both services as two processes, with a
 * small queue so load is shed (memory's start is read after 5 s of load, once JIT and heaps settle). Every request sent ends in exactly one outcome (nothing lost, the
 * counts add up), each kind of outcome actually occurs, and neither service's resident memory grows
 * by half. The longer run's figures are in docs/reliability.md.
 */
import { describe, expect, it } from 'vitest';
import { testConfig } from '../shared/config';
import { runLoad } from '../cli/bench-load';
import { BUNDLE } from './reliability-helpers';

const SOAK_MS = Number(process.env.VLM_SOAK_MS ?? 30_000);
const WARMUP_MS = 5000;

describe('soak: mixed load on the pair, every request accounted for', () => {
  it(`runs ${SOAK_MS / 1000} s of mixed requests with nothing lost and no leak`, async () => {
    const config = testConfig({ model: { dir: BUNDLE }, limits: { queueSize: 2 } });
    const s = await runLoad({ config, durationMs: SOAK_MS + WARMUP_MS, maxRequests: 100_000, concurrency: 6, sampleMs: 1000, warmupMs: WARMUP_MS, seed: 7, serveFlags: ['--queue-size', '2', '--workers', '1'] });
    const { samples, ...memory } = s.memory;
    console.log(`soak: ${JSON.stringify({ ...s, memory })}`);
    console.log(`soak memory (s: vision/language MiB): ${samples.map((m) => `${m.t}:${m.visionMiB}/${m.languageMiB}`).join(' ')}`);

    expect(s.lost).toBe(0);
    expect(s.accountedFor).toBe(true);
    expect(s.answered + s.shed + s.timedOut + s.invalid + Object.values(s.otherErrors).reduce((a, b) => a + b, 0)).toBe(s.sent);
    expect(s.otherErrors).toEqual({});
    for (const n of [s.answered, s.shed, s.timedOut, s.invalid]) expect(n).toBeGreaterThan(0);
    expect(s.memory.vision.endMiB).toBeLessThan(1.5 * s.memory.vision.startMiB);
    expect(s.memory.language.endMiB).toBeLessThan(1.5 * s.memory.language.startMiB);
  });
});
