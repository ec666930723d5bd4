/**
 * How many lines of one kind a log may write per second. A caller without a token, or one retrying
 * into a full queue, can be refused thousands of times a second, each refusal nearly free for the
 * service but one access-log line each: enough to fill a node's log volume or a log pipeline's quota
 * and bury the lines that matter. Past the rate, lines of that kind are counted instead of written,
 * and the next one written says how many were left out, so nothing disappears without a trace (the
 * call metrics still count every call).
 */
export class LineRate {
  /** By kind: callers pass a closed set (status codes), never a caller's value, so this stays small. */
  private readonly windows = new Map<string, { start: number; written: number; skipped: number }>();

  constructor(
    readonly perSecond: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * Whether a line of `kind` may be written now: null when not, else the number of lines of that kind
   * left out since the last one written (0 when none).
   */
  admit(kind: string): number | null {
    const t = this.now();
    let w = this.windows.get(kind);
    if (w === undefined || t - w.start >= 1000) {
      w = { start: t, written: 0, skipped: w?.skipped ?? 0 };
      this.windows.set(kind, w);
    }
    if (w.written >= this.perSecond) {
      w.skipped++;
      return null;
    }
    w.written++;
    const skipped = w.skipped;
    w.skipped = 0;
    return skipped;
  }
}
