/**
 * Structured logs: one JSON object per line on stderr (stdout belongs to CLI results). The level comes
 * from VLM_LOG_LEVEL once; components get a child logger so every line names where it came from.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(component: string): Logger;
}

function parseLevel(raw: string | undefined): LogLevel {
  const v = (raw ?? 'info').toLowerCase();
  return v in RANK ? (v as LogLevel) : 'info';
}

// Until an entry point applies its parsed configuration (setLogLevel), libraries and tests log at
// the environment's level; config.ts is what validates the value.
let current: LogLevel = parseLevel(process.env.VLM_LOG_LEVEL);
let threshold = RANK[current];

/** For CLIs that take --log-level after import time. */
export function setLogLevel(level: LogLevel): void {
  current = level;
  threshold = RANK[level];
}

/** The level in effect: what a worker thread started now should log at. */
export function logLevel(): LogLevel {
  return current;
}

function write(level: Exclude<LogLevel, 'silent'>, component: string, msg: string, fields?: Record<string, unknown>): void {
  if (RANK[level] < threshold) return;
  const line: Record<string, unknown> = { time: new Date().toISOString(), level, component, msg };
  if (fields) for (const [k, v] of Object.entries(fields)) line[k] = v instanceof Error ? { name: v.name, message: v.message } : v;
  process.stderr.write(`${JSON.stringify(line, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
}

export function createLogger(component: string): Logger {
  return {
    debug: (m, f) => write('debug', component, m, f),
    info: (m, f) => write('info', component, m, f),
    warn: (m, f) => write('warn', component, m, f),
    error: (m, f) => write('error', component, m, f),
    child: (sub) => createLogger(`${component}.${sub}`),
  };
}
