/**
 * `vlm <command> [flags]`: one row per subcommand. A row loads its module only when chosen, so
 * `vlm serve` never loads what `vlm eval` needs. A command module exports
 * `run(argv: string[]): Promise<number>` (the exit code) and parses its flags with
 * shared/config.ts parseCommandLine. VlmErrors print as `CODE: message` on stderr with exit 1.
 */
import { HelpRequested } from '../shared/config';
import { VlmError } from '../shared/errors';
import { commandHelp, table } from './help';

export interface CommandModule {
  run(argv: string[]): Promise<number>;
}

interface Row {
  readonly summary: string;
  readonly load: () => CommandModule;
  /** Subcommands, each with its own flags: `vlm <command> --help` points to theirs. */
  readonly subcommands?: readonly string[];
  /** What each subcommand does, for its own help (the summary otherwise). */
  readonly subSummaries?: Readonly<Record<string, string>>;
  /** The positional argument the command takes, for its usage line. */
  readonly positional?: string;
}

// One line per command; keep alphabetical.
const COMMANDS: Readonly<Record<string, Row>> = {
  ask: { summary: 'ask the language service about an image (--image FILE --question TEXT [--target HOST:PORT] [--vision-method M] [--language-method M] [--preset P] [--budget N|P%] [--json] [--ca FILE|--tls] [--cert F --key F])', load: () => require('./ask') as CommandModule },
  bench: {
    summary: 'bench accuracy: every reduction method at 50/25/12.5 % budgets (--limit N, --mode, --json, --docs DIR); bench load: both services under mixed load, every request accounted for, memory and latency (--duration-s, --concurrency, --requests); bench latency: where the time of a request goes per method, from the traces of both services (--limit, --budget, --spans FILE)',
    load: () => ({
      run: (argv) =>
        argv[0] === 'load'
          ? (require('./bench-load') as CommandModule).run(argv.slice(1))
          : argv[0] === 'latency'
            ? (require('./bench-latency') as CommandModule).run(argv.slice(1))
            : (require('./bench-accuracy') as CommandModule).run(argv),
    }),
    subcommands: ['accuracy', 'load', 'latency'],
    subSummaries: {
      accuracy: 'every reduction method at 50/25/12.5 % budgets and none, on the model\'s test items: accuracy, retention, FLOPs, confidence intervals (--json; --docs DIR writes the README table and plot)',
      load: 'both services under a mixed load of valid and bad requests: every request accounted for, memory and latency (--light-concurrency adds a second caller)',
      latency: 'where the time of a request goes per method, from the traces of both services',
    },
  },
  demo: { summary: 'start both services, ask committed test questions under several policies, print answers, tokens, FLOPs, latency', load: () => require('./demo') as CommandModule },
  eval: { summary: 'accuracy of a model bundle on its evaluation items (--json for one JSON line)', load: () => require('./eval') as CommandModule },
  serve: { summary: 'serve vision|language|all (all = two processes; ports 50051/50052, embedded model, CPU by default)', load: () => require('./serve') as CommandModule, positional: 'vision|language|all' },
  trace: {
    summary: 'trace collect: OTLP/HTTP receiver writing span lines; trace report: per-stage latency, shares, transfer, methods, HTML waterfall',
    load: () => require('./trace') as CommandModule,
    subcommands: ['collect', 'report'],
    subSummaries: {
      collect: 'an OTLP/HTTP receiver (traces) writing one JSON line per span, for services started with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it',
      report: "per-stage latency, shares, transfer and methods from span lines, OTLP JSON (Tempo's query JSON is OTLP) or Jaeger's query JSON; --html writes a waterfall",
    },
  },
};

function usage(): string {
  const rows = table(Object.entries(COMMANDS).map(([name, r]) => [name, r.summary] as const));
  return `usage: vlm <command> [flags]\n\ncommands:\n${rows}\n\nvlm <command> --help (or vlm help <command>) lists the command's flags, with their variables and defaults.\n`;
}

const isHelp = (arg: string | undefined): boolean => arg === '--help' || arg === '-h';

export async function main(argv: string[]): Promise<number> {
  let [name, ...rest] = argv;
  if (name === 'help' && argv[1] !== undefined) [name, rest] = [argv[1], [...argv.slice(2), '--help']];
  if (name === undefined || name === 'help' || isHelp(name)) {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const row = COMMANDS[name];
  if (!row) {
    process.stderr.write(`vlm: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  if (row.subcommands && isHelp(rest[0])) {
    process.stdout.write(`usage: vlm ${name} ${row.subcommands.join('|')} [flags]\n\n${row.summary}\n\n${row.subcommands.map((sub) => `vlm ${name} ${sub} --help`).join(', ')}: the flags of each\n`);
    return 0;
  }
  try {
    return await row.load().run(rest);
  } catch (err) {
    // A command parsing `--help` stops there and hands back its own flags (shared/config.ts).
    if (err instanceof HelpRequested) {
      const sub = row.subcommands?.includes(rest[0] ?? '') ? rest[0]! : undefined;
      const shown = sub !== undefined ? `${name} ${sub}` : row.positional !== undefined ? `${name} ${row.positional}` : name;
      process.stdout.write(commandHelp(shown, (sub !== undefined ? row.subSummaries?.[sub] : undefined) ?? row.summary, err.commandFlags, err.configKeys));
      return 0;
    }
    const e = VlmError.from(err);
    process.stderr.write(`${e.code}: ${e.code === 'INTERNAL' && err instanceof Error ? err.message : e.message}\n`);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
