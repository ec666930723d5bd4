/**
 * setTimeout's longest delay, 2^31 - 1 ms (24.8 days). Node fires a longer one after 1 ms instead:
 * a deadline, an export interval or a watchdog past it would go off at once, every time.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
