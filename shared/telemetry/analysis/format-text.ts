import { SpanName } from '../names';
import type { ClockOffsetReport, TraceReport } from './report';
import type { Summary } from './stats';

const ms = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : '-');
const pct = (v: number) => `${(v * 100).toFixed(1)}%`;
/** Signed, so that the direction of a clock offset is never ambiguous. */
const signedMs = (v: number) => (Number.isFinite(v) ? `${v >= 0 ? '+' : ''}${v.toFixed(1)}` : '-');

/** Pipeline stages worth a column in the method comparison (layers and steps are inside them). */
const COMPARED: readonly string[] = [SpanName.Preprocess, SpanName.VisionEmbed, SpanName.Project, SpanName.StreamReceive, SpanName.Prefill, SpanName.Decode];

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), ...rows.map(line)].join('\n');
}

function triple(s: Summary): string {
  return `p50 ${ms(s.p50)} ms, p95 ${ms(s.p95)} ms, p99 ${ms(s.p99)} ms (n=${s.count})`;
}

/** How far a service's clock was found ahead of the root service's (and taken off its spans). */
export function clockOffsetLine(c: ClockOffsetReport): string {
  const o = c.offset;
  return `clock offset of ${c.service} relative to ${c.relativeTo} (estimated per trace, removed): mean ${signedMs(o.mean)} ms, p50 ${signedMs(o.p50)} ms, largest ${signedMs(c.largest)} ms (n=${c.traces})`;
}

export function formatReport(report: TraceReport): string {
  const out: string[] = [];
  const failed = report.failedTraces > 0 ? ` (${report.failedTraces} failed, left out of every figure of time)` : '';
  out.push(`${report.traces.length} traces${failed}, ${report.spans} spans; end-to-end ${triple(report.endToEnd)}`);
  out.push('');
  out.push(
    table(
      ['stage', 'spans', 'p50 ms', 'p95 ms', 'p99 ms', 'per trace ms', 'share', 'self'],
      report.stages.map((s) => [s.key, String(s.spans), ms(s.latency.p50), ms(s.latency.p95), ms(s.latency.p99), ms(s.perTrace.mean), pct(s.share), pct(s.selfShare)]),
    ),
  );
  out.push('');
  out.push(`transfer (vision send start -> language receive end): ${report.transfer.stream.count ? triple(report.transfer.stream) : 'no traces with both stream spans'}`);
  for (const r of report.transfer.rpc) out.push(`rpc overhead ${r.name} (client minus server): ${triple(r.overhead)}`);
  for (const c of report.clockOffsets) out.push(clockOffsetLine(c));
  out.push('');
  const compared = COMPARED.filter((name) => report.stages.some((s) => s.name === name));
  const keyOf = (name: string) => report.stages.filter((s) => s.name === name).map((s) => s.key);
  out.push('by method and budget (mean ms per trace):');
  out.push(
    table(
      ['method', 'budget', 'traces', 'e2e p50', 'e2e p95', 'e2e p99', ...compared],
      report.groups.map((g) => [
        g.method,
        g.budget,
        String(g.traces),
        ms(g.endToEnd.p50),
        ms(g.endToEnd.p95),
        ms(g.endToEnd.p99),
        ...compared.map((name) => ms(keyOf(name).reduce((sum, k) => sum + (g.stageMean[k] ?? 0), 0))),
      ]),
    ),
  );
  return out.join('\n');
}
