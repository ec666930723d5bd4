/**
 * `vlm trace collect|report ...`: the trace tools (cli/trace-collect.ts, cli/trace-report.ts).
 */
import { VlmError } from '../shared/errors';
import { TRACE_COLLECT_USAGE, traceCollectMain } from './trace-collect';
import { TRACE_REPORT_USAGE, traceReportMain } from './trace-report';

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'collect') return traceCollectMain(rest);
  if (sub === 'report') return traceReportMain(rest);
  throw VlmError.invalid('trace', `expected collect or report, got "${sub ?? ''}"\n${TRACE_COLLECT_USAGE}\n${TRACE_REPORT_USAGE}`);
}
