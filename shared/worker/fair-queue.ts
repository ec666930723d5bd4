/**
 * The pool's waiting jobs, one FIFO per caller, served round-robin between callers: a caller with a
 * burst of requests takes turns with the others instead of holding every worker until its burst has
 * drained. With one caller (no authentication, or one token) it is a plain FIFO.
 *
 * When the queue is full, a newcomer may take the place of the newest job of the caller with the
 * most waiting (`victimFor`), so a light caller is not refused because a heavy one filled the queue.
 * Only when the heavy caller has at least two more waiting than the newcomer's caller, so the newcomer
 * never ends up heavier than its victim: otherwise two callers would trade places for nothing.
 */
export class FairQueue<T> {
  /** Callers in turn order; each non-empty. */
  private readonly byCaller = new Map<string, T[]>();
  private size = 0;

  get length(): number {
    return this.size;
  }

  countOf(caller: string): number {
    return this.byCaller.get(caller)?.length ?? 0;
  }

  push(caller: string, item: T): void {
    const items = this.byCaller.get(caller);
    if (items) items.push(item);
    else this.byCaller.set(caller, [item]);
    this.size++;
  }

  /** The oldest job of the caller whose turn it is; that caller then goes to the back of the turn order. */
  shift(): T | undefined {
    const first = this.byCaller.entries().next();
    if (first.done) return undefined;
    const [caller, items] = first.value;
    const item = items.shift()!;
    this.byCaller.delete(caller);
    if (items.length > 0) this.byCaller.set(caller, items);
    this.size--;
    return item;
  }

  /** Takes `item` out wherever it waits (a cancelled job); false if it is not queued. */
  remove(item: T): boolean {
    for (const [caller, items] of this.byCaller) {
      const i = items.indexOf(item);
      if (i < 0) continue;
      items.splice(i, 1);
      if (items.length === 0) this.byCaller.delete(caller);
      this.size--;
      return true;
    }
    return false;
  }

  /**
   * The caller whose newest job a full queue should shed to admit one of `caller`'s, or undefined when
   * `caller` should be refused instead: the heaviest caller, if it has at least two more waiting.
   */
  victimFor(caller: string): string | undefined {
    let heaviest: string | undefined;
    let most = 0;
    for (const [c, items] of this.byCaller) {
      if (items.length > most) {
        heaviest = c;
        most = items.length;
      }
    }
    return heaviest !== undefined && this.countOf(caller) + 2 <= most ? heaviest : undefined;
  }

  /** Removes and returns `caller`'s newest waiting job. */
  popNewest(caller: string): T | undefined {
    const items = this.byCaller.get(caller);
    if (!items) return undefined;
    const item = items.pop()!;
    if (items.length === 0) this.byCaller.delete(caller);
    this.size--;
    return item;
  }

  /** Every waiting job, oldest caller turn first; the queue is left empty. */
  drain(): T[] {
    const all = [...this.byCaller.values()].flat();
    this.byCaller.clear();
    this.size = 0;
    return all;
  }
}
