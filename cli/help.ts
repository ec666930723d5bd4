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

function usageOf(flag: string, o: { readonly type: string; readonly arg?: string }): string {
  return o.type === 'boolean' ? `--${flag}` : `--${flag} ${o.arg ?? 'VALUE'}`;
}

/** Two columns, the left padded to its widest entry. */
export function table(rows: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `  ${left.padEnd(width)}  ${right}`.trimEnd()).join('\n');
}

/** One entry per config flag: usage, variable, default (with the range for numbers), meaning. */
export function configFlagsHelp(): string {
  const rows = Object.entries(CONFIG_OPTIONS).map(([flag, o]: [string, OptionSpec]) => {
    const range = o.type === 'int' ? `, ${o.min} to ${o.max}` : o.type === 'string' && o.choices ? `, one of ${o.choices.join(' ')}` : '';
    return [`${usageOf(flag, o)}  ${o.env}`, `${o.help} [default: ${defaultOf(o)}${range}]`] as const;
  });
  return table(rows);
}

/** The full help of one command: what it does, its own flags, then the config flags. */
export function commandHelp(name: string, summary: string, commandFlags: Readonly<Record<string, { readonly type: string }>>): string {
  const own = Object.entries(commandFlags).map(([flag, o]) => [usageOf(flag, o), ''] as const);
  return [
    `usage: vlm ${name} [flags]`,
    '',
    summary,
    ...(own.length > 0 ? ['', 'flags of this command:', table(own)] : []),
    '',
    'config flags (each also read from its variable; a flag wins over its variable):',
    configFlagsHelp(),
    '',
  ].join('\n');
}
