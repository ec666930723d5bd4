/**
 * How many lines of one kind a log may write per second. A caller without a token, or one retrying
 * into a full queue, can be refused thousands of times a second, each refusal nearly free for the
 * service but one access-log line each: enough to fill a node's log volume or a log pipeline's quota
 * and bury the lines that matter. Past the rate, lines of that kind are counted instead of written;
 * the next one written says how many were left out, or, if none is written by the end of the second,
 * `onSkipped` does: nothing disappears without a trace, and a flood's size shows within a second
 * (the call metrics still count every call).
 */
export class LineRate {
  /**
   * One entry per kind: callers pass a closed set (status codes), never a caller's value, so this
   * stays small. `skipped` carries over from one window to the next until a line or onSkipped reports it.
   */
  private readonly kinds = new Map<string, { start: number; written: number; skipped: number; flushPending: boolean }>();

  constructor(
    readonly perSecond: number,
    private readonly onSkipped: (kind: string, skipped: number) => void = () => {},
    private readonly now: () => number = () => performance.now(),
    private readonly later: (fn: () => void, ms: number) => void = (fn, ms) => setTimeout(fn, ms).unref(),
  ) {}

  /**
   * Whether a line of `kind` may be written now: null when not, else the number of lines of that kind
   * left out since the last one written or reported (0 when none).
   */
  admit(kind: string): number | null {
    const t = this.now();
    let k = this.kinds.get(kind);
    if (k === undefined) {
      k = { start: t, written: 0, skipped: 0, flushPending: false };
      this.kinds.set(kind, k);
    } else if (t - k.start >= 1000) {
      k.start = t;
      k.written = 0;
    }
    if (k.written < this.perSecond) {
      k.written++;
      const skipped = k.skipped;
      k.skipped = 0;
      return skipped;
    }
    k.skipped++;
    if (!k.flushPending) {
      k.flushPending = true;
      const entry = k;
      this.later(() => {
        entry.flushPending = false;
        this.report(kind, entry);
      }, Math.max(0, k.start + 1000 - t));
    }
    return null;
  }

  /** Reports every count not yet reported: at a stop, whose exit the end-of-second timers do not hold. */
  flush(): void {
    for (const [kind, entry] of this.kinds) this.report(kind, entry);
  }

  private report(kind: string, entry: { skipped: number }): void {
    if (entry.skipped === 0) return; // a line written since carried the count
    const n = entry.skipped;
    entry.skipped = 0;
    try {
      this.onSkipped(kind, n);
    } catch {
      // A timer's exception would end the process; the count waits for the next line instead.
      entry.skipped += n;
    }
  }
}
