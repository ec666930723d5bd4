/**
 * `vlm trace report FILE [--json] [--html OUT] [--trace ID]`: where the time of the traced requests
 * went. FILE is what `vlm trace collect` wrote, OTLP JSON (Tempo, the Collector's file exporter) or
 * Jaeger's query JSON; the format is detected.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { VlmError } from '../shared/errors';
import { analyseTraces, formatReport, parseTraceText, renderHtml } from '../shared/telemetry/analysis';
import { ownFlagsHelp, type CommandFlags } from './help';

export const TRACE_REPORT_USAGE = 'usage: vlm trace report FILE [--json] [--html OUT.html] [--trace TRACE_ID]';

const FLAGS = {
  json: { type: 'boolean', help: 'print the report as JSON' },
  html: { type: 'string', arg: 'OUT.html', help: 'also write an HTML waterfall of one trace' },
  trace: { type: 'string', arg: 'TRACE_ID', help: 'the trace --html draws [default: the slowest that succeeded]' },
} as const satisfies CommandFlags;

export async function traceReportMain(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: { ...FLAGS, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `${(err as Error).message}\n${TRACE_REPORT_USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${TRACE_REPORT_USAGE}\n\nFILE: what vlm trace collect wrote, OTLP JSON or Jaeger's query JSON (detected)\n\nflags of this command:\n${ownFlagsHelp(FLAGS)}\n`);
    return 0;
  }
  if (positionals.length !== 1) throw new VlmError('INVALID_ARGUMENT', `expected exactly one trace file\n${TRACE_REPORT_USAGE}`);
  const file = positionals[0]!;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new VlmError('NOT_FOUND', `cannot read trace file ${file}: ${(err as Error).message}`);
  }
  const { format, spans } = parseTraceText(text, file);
  if (spans.length === 0) throw new VlmError('FAILED_PRECONDITION', `${file} holds no spans (format ${format}); was the collector running while requests were sent?`);
  const { report, trees } = analyseTraces(spans);
  printWarnings(report.warnings);

  if (values.html !== undefined) {
    const wanted = values.trace ?? report.slowestTraceId;
    const tree = trees.find((t) => t.traceId === wanted.toLowerCase());
    if (!tree) throw new VlmError('NOT_FOUND', `trace ${wanted} is not in ${file}; it has ${trees.length} traces, e.g. ${trees.slice(0, 3).map((t) => t.traceId).join(', ')}`);
    writeFileSync(values.html, renderHtml(report, tree));
  }
  process.stdout.write(values.json ? `${JSON.stringify({ format, ...report }, null, 2)}\n` : `${formatReport(report)}\n`);
  return 0;
}

/** Odd traces are analysed anyway; say which, on stderr so --json output stays parseable. */
const MAX_WARNINGS_SHOWN = 20;
function printWarnings(warnings: readonly string[]): void {
  for (const w of warnings.slice(0, MAX_WARNINGS_SHOWN)) process.stderr.write(`vlm trace report: warning: ${w}\n`);
  if (warnings.length > MAX_WARNINGS_SHOWN) process.stderr.write(`vlm trace report: warning: ${warnings.length - MAX_WARNINGS_SHOWN} more (all of them are in --json output)\n`);
}

if (require.main === module) {
  traceReportMain(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`vlm trace report: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
