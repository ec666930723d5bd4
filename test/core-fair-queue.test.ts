/**
 * The pool's queue: one FIFO per caller, callers served in turn, and a full queue sheds the heaviest
 * caller's newest job for a caller with at least two fewer waiting. Callers `token/sub` (vision's
 * name for a caller the language service forwards) take turns inside their token's turn.
 */
import { describe, expect, it } from 'vitest';
import { FairQueue, HeldByCaller } from '../shared/worker/fair-queue';

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

  it('weighs places a caller holds outside the queue as jobs waiting, for the newcomer and the victim alike', () => {
    const q = queueOf([['a', 'a1'], ['a', 'a2'], ['a', 'a3']]);
    const held = new HeldByCaller();
    expect(q.victimFor('b', held)).toBe('a'); // 0 against 3
    held.add('b');
    held.add('b');
    expect(q.victimFor('b', held)).toBeUndefined(); // 2 held against 3: b would only become the heaviest
    held.add('hop/x');
    held.add('hop/x');
    held.add('hop/x');
    held.add('hop/y');
    // A token weighs what all its sub-callers hold: hop/y holds one place, but hop four against a's three.
    expect(q.victimFor('hop/y', held)).toBeUndefined();
    expect(q.victimFor('hop/y')).toBe('a'); // with nothing held counted, it would shed
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

  describe('sub-callers (token/sub)', () => {
    it('give a token one turn however many sub-callers it names, shared out between them in turn', () => {
      const q = queueOf([
        ['hop/a', 'a1'], ['hop/a', 'a2'], ['hop/b', 'b1'], ['hop/c', 'c1'], ['direct', 'd1'], ['direct', 'd2'], ['direct', 'd3'],
      ]);
      expect(drainInTurn(q)).toEqual(['a1', 'd1', 'b1', 'd2', 'c1', 'd3', 'a2']);
    });

    it('count each sub-caller apart, and the token alone as a sub-caller of its own', () => {
      const q = queueOf([['hop', 'h1'], ['hop/a', 'a1'], ['hop/a', 'a2']]);
      expect([q.countOf('hop'), q.countOf('hop/a'), q.countOf('hop/b'), q.length]).toEqual([1, 2, 0, 3]);
      expect(drainInTurn(q)).toEqual(['h1', 'a1', 'a2']);
    });

    it('shed between tokens by their totals, from the heaviest sub-caller of the heaviest token', () => {
      // hop has 4 waiting spread over three sub-callers, none of which alone is two ahead of anyone
      const q = queueOf([['hop/a', 'a1'], ['hop/a', 'a2'], ['hop/b', 'b1'], ['hop/c', 'c1'], ['other', 'o1']]);
      expect(q.victimFor('other')).toBe('hop/a');
      expect(q.victimFor('new')).toBe('hop/a');
      expect(q.popNewest('hop/a')).toBe('a2');
    });

    it('shed inside a token only between its own sub-callers, when the token is not two lighter than the heaviest', () => {
      const q = queueOf([['hop/a', 'a1'], ['hop/a', 'a2'], ['hop/a', 'a3'], ['other', 'o1'], ['other', 'o2'], ['other', 'o3']]);
      expect(q.victimFor('hop/b')).toBe('hop/a'); // hop's own share moves from a to b; other keeps its 3
      expect(q.victimFor('hop/a')).toBeUndefined();
      expect(q.victimFor('other/x')).toBe('other'); // the token's own calls are its sub-caller ''
    });

    it("cannot take another token's place by naming more sub-callers", () => {
      const q = new FairQueue<string>();
      for (let i = 0; i < 4; i++) q.push('light', `l${i}`);
      for (let i = 0; i < 4; i++) q.push(`greedy/s${i}`, `g${i}`);
      expect(q.victimFor('greedy/s9')).toBeUndefined(); // 4 against 4: refused, light keeps its places
      expect(drainInTurn(q).slice(0, 4)).toEqual(['l0', 'g0', 'l1', 'g1']);
    });

    it('remove a cancelled job and drop a token whose last job left', () => {
      const q = queueOf([['hop/a', 'a1'], ['x', 'x1']]);
      expect(q.remove('a1')).toBe(true);
      expect([q.countOf('hop/a'), q.length, q.victimFor('hop/a')]).toEqual([0, 1, undefined]);
      expect(drainInTurn(q)).toEqual(['x1']);
    });
  });
});
