/**
 * The pool's queue: one FIFO per caller, callers served in turn, and a full queue sheds the heaviest
 * caller's newest job for a caller with at least two fewer waiting.
 */
import { describe, expect, it } from 'vitest';
import { FairQueue } from '../shared/worker/fair-queue';

function queueOf(entries: Array<[string, string]>): FairQueue<string> {
  const q = new FairQueue<string>();
  for (const [caller, item] of entries) q.push(caller, item);
  return q;
}

function drainInTurn(q: FairQueue<string>): string[] {
  const out: string[] = [];
  for (let item = q.shift(); item !== undefined; item = q.shift()) out.push(item);
  return out;
}

describe('FairQueue', () => {
  it('is a plain FIFO with one caller (no authentication: everyone is the anonymous caller)', () => {
    expect(drainInTurn(queueOf([['', '1'], ['', '2'], ['', '3']]))).toEqual(['1', '2', '3']);
  });

  it('serves callers in turn, each in its own arrival order, a caller that arrives later joining the round', () => {
    const q = queueOf([['a', 'a1'], ['a', 'a2'], ['a', 'a3'], ['b', 'b1'], ['b', 'b2'], ['c', 'c1']]);
    expect([q.shift(), q.shift()]).toEqual(['a1', 'b1']);
    q.push('d', 'd1');
    expect(drainInTurn(q)).toEqual(['c1', 'a2', 'b2', 'd1', 'a3']);
    expect(q.length).toBe(0);
  });

  it('puts a caller whose jobs all ran at the back when it comes again', () => {
    const q = queueOf([['a', 'a1'], ['b', 'b1'], ['b', 'b2']]);
    expect(q.shift()).toBe('a1');
    q.push('a', 'a2');
    expect(drainInTurn(q)).toEqual(['b1', 'a2', 'b2']);
  });

  it('sheds only from a caller with at least two more waiting than the newcomer', () => {
    const q = queueOf([['a', 'a1'], ['a', 'a2'], ['b', 'b1']]);
    expect(q.victimFor('c')).toBe('a'); // 0 against 2: c gets a place, a keeps one
    expect(q.victimFor('b')).toBeUndefined(); // 1 against 2: b would only become the heaviest
    expect(q.victimFor('a')).toBeUndefined(); // the heaviest caller is refused
    expect(queueOf([['a', 'a1'], ['b', 'b1']]).victimFor('c')).toBeUndefined(); // one each: refuse
  });

  it('sheds the newest job of the victim, which keeps its older ones in their order', () => {
    const q = queueOf([['a', 'a1'], ['a', 'a2'], ['a', 'a3'], ['b', 'b1']]);
    expect(q.popNewest('a')).toBe('a3');
    expect([q.length, q.countOf('a')]).toEqual([3, 2]);
    expect(drainInTurn(q)).toEqual(['a1', 'b1', 'a2']);
  });

  it('removes a cancelled job wherever it waits, and drains everything on close', () => {
    const q = queueOf([['a', 'a1'], ['b', 'b1'], ['a', 'a2']]);
    expect(q.remove('b1')).toBe(true);
    expect(q.remove('b1')).toBe(false);
    expect(q.countOf('b')).toBe(0);
    expect(q.drain()).toEqual(['a1', 'a2']);
    expect([q.length, q.shift()]).toEqual([0, undefined]);
  });
});
