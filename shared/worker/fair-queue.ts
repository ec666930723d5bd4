/**
 * The pool's waiting jobs, one FIFO per caller, served round-robin between callers: a caller with a
 * burst of requests takes turns with the others instead of holding every worker until its burst has
 * drained. With one caller (no authentication, or one token) it is a plain FIFO.
 *
 * Two levels. A caller `token/sub` (vision's name for a caller the language service forwards) is a
 * sub-caller of `token`: turns go round the tokens first, then round the sub-callers inside the
 * token whose turn it is. A token therefore gets one turn however many sub-callers it names, and
 * dividing it between them can only share out its own turns, never take another token's.
 *
 * When the queue is full, a newcomer may take the place of the newest job of a heavier caller
 * (`victimFor`), so a light caller is not refused because a heavy one filled the queue. Only when the
 * victim has at least two more waiting than the newcomer's side, so the newcomer never ends up heavier
 * than its victim: otherwise two callers would trade places for nothing.
 */
export class FairQueue<T> {
  /** Tokens in turn order, each holding its sub-callers in turn order; nothing held is empty. */
  private readonly byToken = new Map<string, Group<T>>();
  private size = 0;

  get length(): number {
    return this.size;
  }

  /** Jobs waiting for exactly this caller (`token` alone or `token/sub`). */
  countOf(caller: string): number {
    const { token, sub } = split(caller);
    return this.byToken.get(token)?.bySub.get(sub)?.length ?? 0;
  }

  push(caller: string, item: T): void {
    const { token, sub } = split(caller);
    let group = this.byToken.get(token);
    if (!group) {
      group = { size: 0, bySub: new Map() };
      this.byToken.set(token, group);
    }
    const items = group.bySub.get(sub);
    if (items) items.push(item);
    else group.bySub.set(sub, [item]);
    group.size++;
    this.size++;
  }

  /**
   * The oldest job of the sub-caller whose turn it is inside the token whose turn it is; both then go
   * to the back of their turn orders.
   */
  shift(): T | undefined {
    const first = this.byToken.entries().next();
    if (first.done) return undefined;
    const [token, group] = first.value;
    const [sub, items] = group.bySub.entries().next().value!;
    const item = items.shift()!;
    group.bySub.delete(sub);
    if (items.length > 0) group.bySub.set(sub, items);
    group.size--;
    this.byToken.delete(token);
    if (group.size > 0) this.byToken.set(token, group);
    this.size--;
    return item;
  }

  /** Takes `item` out wherever it waits (a cancelled job); false if it is not queued. */
  remove(item: T): boolean {
    for (const [token, group] of this.byToken) {
      for (const [sub, items] of group.bySub) {
        const i = items.indexOf(item);
        if (i < 0) continue;
        items.splice(i, 1);
        this.taken(token, group, sub, items);
        return true;
      }
    }
    return false;
  }

  /**
   * The caller whose newest job a full queue should shed to admit one of `caller`'s, or undefined when
   * `caller` should be refused instead. First between tokens: the heaviest token's heaviest
   * sub-caller, if that token has at least two more waiting than `caller`'s token. Failing that,
   * inside `caller`'s own token: its heaviest sub-caller, if that has at least two more waiting than
   * `caller` (which moves a place between the token's own sub-callers, never another token's).
   * `held`: places callers hold outside the queue (the pool's reserved places), which weigh as waiting
   * jobs do but cannot be shed.
   */
  victimFor(caller: string, held: HeldCounts = NO_HELD): string | undefined {
    const { token, sub } = split(caller);
    const tokenWeight = (t: string, g: Group<T> | undefined) => (g?.size ?? 0) + held.ofToken(t);
    const heaviest = heaviestOf(this.byToken, (g, t) => tokenWeight(t, g));
    const own = this.byToken.get(token);
    if (heaviest && tokenWeight(token, own) + 2 <= tokenWeight(heaviest[0], heaviest[1])) {
      return join(heaviest[0], heaviestOf(heaviest[1].bySub, (items, s) => items.length + held.of(join(heaviest[0], s)))![0]);
    }
    if (!own) return undefined;
    const subWeight = (s: string) => (own.bySub.get(s)?.length ?? 0) + held.of(join(token, s));
    const [victim] = heaviestOf(own.bySub, (_, s) => subWeight(s))!;
    return subWeight(sub) + 2 <= subWeight(victim) ? join(token, victim) : undefined;
  }

  /** Removes and returns `caller`'s newest waiting job. */
  popNewest(caller: string): T | undefined {
    const { token, sub } = split(caller);
    const group = this.byToken.get(token);
    const items = group?.bySub.get(sub);
    if (!group || !items) return undefined;
    const item = items.pop()!;
    this.taken(token, group, sub, items);
    return item;
  }

  /** Every waiting job, oldest turn first; the queue is left empty. */
  drain(): T[] {
    const all = [...this.byToken.values()].flatMap((g) => [...g.bySub.values()].flat());
    this.byToken.clear();
    this.size = 0;
    return all;
  }

  /** Bookkeeping after one job left `items` other than by its turn: nothing empty stays held. */
  private taken(token: string, group: Group<T>, sub: string, items: T[]): void {
    if (items.length === 0) group.bySub.delete(sub);
    group.size--;
    if (group.size === 0) this.byToken.delete(token);
    this.size--;
  }
}

interface Group<T> {
  size: number;
  bySub: Map<string, T[]>;
}

/** Token names hold no '/', so the first one separates a forwarded sub-caller from its token. */
function split(caller: string): { token: string; sub: string } {
  const at = caller.indexOf('/');
  return at < 0 ? { token: caller, sub: '' } : { token: caller.slice(0, at), sub: caller.slice(at + 1) };
}

function join(token: string, sub: string): string {
  return sub === '' ? token : `${token}/${sub}`;
}

/** The entry with the largest weight, the earliest in turn order on a tie; undefined when empty. */
function heaviestOf<V>(map: Map<string, V>, weight: (v: V, key: string) => number): [string, V] | undefined {
  let best: [string, V] | undefined;
  let bestWeight = -Infinity;
  for (const entry of map) {
    const w = weight(entry[1], entry[0]);
    if (w > bestWeight) (best = entry), (bestWeight = w);
  }
  return best;
}

/** Places held per caller outside the queue: by exact caller (`token` or `token/sub`), and summed per token. */
export interface HeldCounts {
  of(caller: string): number;
  ofToken(token: string): number;
}

const NO_HELD: HeldCounts = { of: () => 0, ofToken: () => 0 };

/** A HeldCounts kept as places are taken and given back. */
export class HeldByCaller implements HeldCounts {
  private readonly byCaller = new Map<string, number>();
  private readonly byToken = new Map<string, number>();

  of(caller: string): number {
    return this.byCaller.get(caller) ?? 0;
  }

  ofToken(token: string): number {
    return this.byToken.get(token) ?? 0;
  }

  add(caller: string): void {
    bump(this.byCaller, caller, 1);
    bump(this.byToken, split(caller).token, 1);
  }

  remove(caller: string): void {
    bump(this.byCaller, caller, -1);
    bump(this.byToken, split(caller).token, -1);
  }

  /** The most any caller other than `caller` holds here. */
  heaviestOther(caller: string): number {
    let most = 0;
    for (const [c, n] of this.byCaller) if (c !== caller && n > most) most = n;
    return most;
  }
}

/** Adds `by` to `key`'s count; a count of zero leaves the map. */
function bump(map: Map<string, number>, key: string, by: number): void {
  const n = (map.get(key) ?? 0) + by;
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}
