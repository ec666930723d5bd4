/**
 * `vlm <command> --help`: the command's usage and flags. The config flags are printed from
 * shared/config.ts CONFIG_OPTIONS, the table configFrom reads, with their variables, defaults and
 * bounds; the command's own flags from the options it hands parseCommandLine.
 */
import { CONFIG_OPTIONS, type OptionSpec } from '../shared/config';

function defaultOf(o: OptionSpec): string {
  if (o.shown !== undefined) return o.shown;
  if (o.type === 'string' && o.default === '') return 'none';
  return String(o.default);
}

/**
 * A command's own flag: node:util parseArgs reads `type` and `multiple` and ignores the rest, so the
 * table a command parses with is also the one its help is printed from.
 */
export interface CommandFlag {
  readonly type: 'string' | 'boolean';
  readonly multiple?: boolean;
  /** The value's placeholder in the usage column (VALUE if unset). */
  readonly arg?: string;
  readonly help: string;
}

export type CommandFlags = Readonly<Record<string, CommandFlag>>;

/** What help needs of a flag (HelpRequested carries them typed loosely). */
type DescribedFlags = Readonly<Record<string, { readonly type: string; readonly multiple?: boolean; readonly arg?: string; readonly help?: string }>>;

function usageOf(flag: string, o: { readonly type: string; readonly arg?: string }): string {
  return o.type === 'boolean' ? `--${flag}` : `--${flag} ${o.arg ?? 'VALUE'}`;
}

/** One entry per flag of the command itself: usage and meaning. */
export function ownFlagsHelp(flags: DescribedFlags): string {
  return table(Object.entries(flags).map(([flag, o]) => [usageOf(flag, o), `${o.help ?? ''}${o.multiple ? ' (repeatable)' : ''}`] as const));
}

/** Two columns, the left padded to its widest entry. */
export function table(rows: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `  ${left.padEnd(width)}  ${right}`.trimEnd()).join('\n');
}

/** One entry per config flag: usage, variable, default (with the range for numbers), meaning. */
export function configFlagsHelp(keys?: readonly string[]): string {
  const rows = Object.entries(CONFIG_OPTIONS).filter(([flag]) => keys === undefined || keys.includes(flag)).map(([flag, o]: [string, OptionSpec]) => {
    const range = o.type === 'int' ? `, ${o.min} to ${o.max}` : o.type === 'string' && o.choices ? `, one of ${o.choices.join(' ')}` : '';
    return [`${usageOf(flag, o)}  ${o.env}`, `${o.help} [default: ${defaultOf(o)}${range}]`] as const;
  });
  return table(rows);
}

/** The full help of one command: what it does, its own flags, then the config flags. */
export function commandHelp(name: string, summary: string, commandFlags: DescribedFlags, configKeys?: readonly string[]): string {
  return [
    `usage: vlm ${name} [flags]`,
    '',
    summary,
    ...(Object.keys(commandFlags).length > 0 ? ['', 'flags of this command:', ownFlagsHelp(commandFlags)] : []),
    '',
    'config flags (each also read from its variable; a flag wins over its variable):',
    configFlagsHelp(configKeys),
    '',
  ].join('\n');
}
