/**
 * The benchmark and demo commands judge their numeric flags before they start anything: a value the
 * engine would refuse used to mark every bench cell "infeasible" (exit 0), and a demo with no items
 * started both services, asked nothing and exited 0.
 */
import { describe, expect, it } from 'vitest';
import { vlm } from './service-helpers';

describe('numeric flags of bench accuracy and demo', () => {
  it.each([
    [['bench', 'accuracy', '--limit', '0'], /--limit: expected an integer in \[1, /],
    [['bench', 'accuracy', '--limit', '2', '--max-new-tokens', '300'], /--max-new-tokens: expected an integer in \[1, 256\], got "300"/],
    [['bench', 'accuracy', '--limit', '2', '--seed', '1.5'], /--seed: expected an integer in \[0, /],
    [['demo', '--items', 'abc'], /--items: expected an integer in \[1, /],
    [['demo', '--items', '0'], /--items: expected an integer in \[1, /],
    // Output paths judged before the run, not after minutes of it.
    [['bench', 'accuracy', '--limit', '2', '--docs', '/dev/null'], /--docs: cannot write into \/dev\/null/],
    [['bench', 'latency', '--limit', '1', '--spans', '/tmp'], /--spans: cannot write \/tmp: it is a folder/],
  ])('vlm %j is INVALID_ARGUMENT, exit 1, with nothing on stdout', (args, message) => {
    const r = vlm(args);
    expect(r.stderr).toMatch(/^INVALID_ARGUMENT: /);
    expect(r.stderr).toMatch(message);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
  });
});
