import { EVENT_TOKEN } from '../names';
import type { TraceReport } from './report';
import { eventMillis, type TraceTree } from './trace-tree';

/**
 * A self-contained HTML page (inline CSS and SVG, no scripts, no external assets): the stage table,
 * the method comparison, a breakdown chart of self time per stage (one stacked bar for all traces and
 * one per method and budget) and the waterfall of one trace. Every text that comes from a span (names,
 * services, ids, attributes, even in attribute values of elements) goes through `esc`: a trace file is
 * input from anywhere, and the page is opened in a browser.
 */

const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac', '#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#8c564b', '#17becf'];
const SERVICE_COLORS = ['#4e79a7', '#e15759', '#59a14f', '#b07aa1', '#f28e2b'];

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const ms = (v: number) => (Number.isFinite(v) ? `${v.toFixed(v < 10 ? 2 : 1)} ms` : '-');
const pct = (v: number) => `${(v * 100).toFixed(1)}%`;
const signedMs = (v: number) => (Number.isFinite(v) ? `${v >= 0 ? '+' : ''}${v.toFixed(1)} ms` : '-');

export function renderHtml(report: TraceReport, tree: TraceTree | undefined): string {
  const stageColor = new Map(report.stages.map((s, i) => [s.key, PALETTE[i % PALETTE.length]!]));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vlm trace report</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:18px}h2{font-size:15px;margin-top:28px}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}
svg text{font:11px system-ui,sans-serif}
.legend span{display:inline-block;margin-right:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
</style></head><body>
<h1>Where the time goes</h1>
<p>${report.traces.length} traces${report.failedTraces > 0 ? ` (${report.failedTraces} failed, left out of every figure of time)` : ''}, ${report.spans} spans. End-to-end p50 ${ms(report.endToEnd.p50)}, p95 ${ms(report.endToEnd.p95)}, p99 ${ms(report.endToEnd.p99)}.
Transfer (vision send start to language receive end): ${report.transfer.stream.count ? `p50 ${ms(report.transfer.stream.p50)}, p95 ${ms(report.transfer.stream.p95)}` : 'not traced'}.${clockOffsetText(report)}</p>
${warningList(report)}
<h2>Breakdown: self time per stage (mean per trace)</h2>
${breakdownChart(report, stageColor)}
<h2>Waterfall${tree ? ` of trace ${esc(tree.traceId)} (${waterfallNote(tree)})` : ''}</h2>
${tree ? waterfall(tree, stageColor) : '<p>No trace.</p>'}
<h2>Stages</h2>
${stageTable(report)}
<h2>Methods and budgets</h2>
${groupTable(report)}
</body></html>
`;
}

function clockOffsetText(report: TraceReport): string {
  return report.clockOffsets
    .map((c) => `\nClock offset of ${esc(c.service)} relative to ${esc(c.relativeTo)} (estimated per trace, removed): mean ${signedMs(c.offset.mean)}, p50 ${signedMs(c.offset.p50)}, largest ${signedMs(c.largest)} (n=${c.traces}).`)
    .join('');
}

function warningList(report: TraceReport): string {
  if (report.warnings.length === 0) return '';
  return `<ul class="warnings">${report.warnings.map((w) => `<li>${esc(w)}</li>`).join('')}</ul>`;
}

/** The trace's duration and the clock offsets taken off its spans. */
function waterfallNote(tree: TraceTree): string {
  return [ms(tree.root.duration), ...tree.clockOffsets.map((c) => `${esc(c.service)} clock ${signedMs(c.offsetMs)}, removed`)].join('; ');
}

function breakdownChart(report: TraceReport, stageColor: Map<string, string>): string {
  const meanE2e = report.endToEnd.mean;
  const rows: { label: string; e2e: number; parts: { key: string; value: number }[] }[] = [
    { label: 'all traces', e2e: meanE2e, parts: report.stages.map((s) => ({ key: s.key, value: (s.selfShare * meanE2e) || 0 })) },
    ...report.groups.map((g) => ({
      label: `${g.method} @ ${g.budget}`,
      e2e: g.endToEnd.mean,
      parts: report.stages.map((s) => ({ key: s.key, value: g.stageSelfMean[s.key] ?? 0 })),
    })),
  ];
  const left = 200;
  const width = 900;
  const rowH = 26;
  const maxTotal = Math.max(1e-9, ...rows.map((r) => Math.max(r.e2e, r.parts.reduce((a, p) => a + p.value, 0))));
  const scale = (width - left - 80) / maxTotal;
  const bars = rows
    .map((r, i) => {
      const y = 8 + i * rowH;
      let x = left;
      const segs = r.parts
        .filter((p) => p.value > 0)
        .map((p) => {
          const w = p.value * scale;
          const seg = `<rect class="segment" x="${x.toFixed(2)}" y="${y}" width="${Math.max(0.5, w).toFixed(2)}" height="${rowH - 8}" fill="${stageColor.get(p.key)}"><title>${esc(p.key)}: ${ms(p.value)}</title></rect>`;
          x += w;
          return seg;
        })
        .join('');
      return `<g class="bar"><text x="${left - 6}" y="${y + rowH / 2}" text-anchor="end">${esc(r.label)}</text>${segs}<text x="${(x + 4).toFixed(2)}" y="${y + rowH / 2}">${ms(r.e2e)}</text></g>`;
    })
    .join('\n');
  const legend = report.stages.map((s) => `<span><i style="background:${stageColor.get(s.key)}"></i>${esc(s.key)}</span>`).join('');
  return `<svg id="breakdown" width="${width}" height="${16 + rows.length * rowH}" role="img" aria-label="self time per stage">${bars}</svg>
<div class="legend">${legend}</div>`;
}

function waterfall(tree: TraceTree, stageColor: Map<string, string>): string {
  const left = 340;
  const width = 1100;
  const rowH = 18;
  const origin = tree.root.start;
  // A loop, not Math.max(...spans): a huge trace would overflow the argument list.
  const total = Math.max(1e-9, tree.ordered.reduce((latest, n) => Math.max(latest, n.end), -Infinity) - origin);
  const scale = (width - left - 90) / total;
  const serviceColor = new Map(tree.services.map((s, i) => [s, SERVICE_COLORS[i % SERVICE_COLORS.length]!]));
  const rows = tree.ordered
    .map((n, i) => {
      const y = 4 + i * rowH;
      const x = left + (n.start - origin) * scale;
      const w = Math.max(1, n.duration * scale);
      const layer = n.span.attributes['vlm.layer'];
      const label = `${n.span.name}${layer === undefined ? '' : ` #${String(layer)}`}`;
      const tip = `${n.span.service} ${n.span.name}: ${ms(n.duration)} at +${ms(n.start - origin)}\n${Object.entries(n.span.attributes).map(([k, v]) => `${k}=${String(v)}`).join('\n')}`;
      const ticks = n.span.events
        .filter((e) => e.name === EVENT_TOKEN)
        .map((e) => {
          const ex = left + (eventMillis(tree, n, e) - origin) * scale;
          return `<line class="event" x1="${ex.toFixed(2)}" x2="${ex.toFixed(2)}" y1="${y + 1}" y2="${y + rowH - 5}" stroke="#000" stroke-opacity="0.5"/>`;
        })
        .join('');
      return `<g class="row"><rect x="0" y="${y - 1}" width="6" height="${rowH - 2}" fill="${serviceColor.get(n.span.service)}"><title>${esc(n.span.service)}</title></rect>
<text x="${10 + n.depth * 12}" y="${y + rowH / 2 + 1}">${esc(label)}</text>
<rect class="span-bar" data-span-id="${esc(n.span.spanId)}" x="${x.toFixed(2)}" y="${y}" width="${w.toFixed(2)}" height="${rowH - 4}" fill="${n.span.status.code === 'ERROR' ? '#c00' : stageColor.get(`${n.span.service} ${n.span.name}`) ?? '#888'}"><title>${esc(tip)}</title></rect>${ticks}
<text x="${(x + w + 4).toFixed(2)}" y="${y + rowH / 2 + 1}">${ms(n.duration)}</text></g>`;
    })
    .join('\n');
  const legend = tree.services.map((s) => `<span><i style="background:${serviceColor.get(s)}"></i>${esc(s)}</span>`).join('');
  return `<svg id="waterfall" width="${width}" height="${8 + tree.ordered.length * rowH}" role="img" aria-label="span waterfall">${rows}</svg>
<div class="legend">${legend}</div>`;
}

function stageTable(report: TraceReport): string {
  const rows = report.stages
    .map((s) => `<tr><td>${esc(s.key)}</td><td>${s.spans}</td><td>${ms(s.latency.p50)}</td><td>${ms(s.latency.p95)}</td><td>${ms(s.latency.p99)}</td><td>${ms(s.perTrace.mean)}</td><td>${pct(s.share)}</td><td>${pct(s.selfShare)}</td></tr>`)
    .join('\n');
  return `<table id="stages"><tr><th>stage</th><th>spans</th><th>p50</th><th>p95</th><th>p99</th><th>per trace</th><th>share</th><th>self</th></tr>\n${rows}</table>`;
}

function groupTable(report: TraceReport): string {
  const rows = report.groups
    .map((g) => `<tr><td>${esc(g.method)}</td><td>${esc(g.budget)}</td><td>${g.traces}</td><td>${ms(g.endToEnd.p50)}</td><td>${ms(g.endToEnd.p95)}</td><td>${ms(g.endToEnd.p99)}</td></tr>`)
    .join('\n');
  return `<table id="groups"><tr><th>method</th><th>budget</th><th>traces</th><th>e2e p50</th><th>e2e p95</th><th>e2e p99</th></tr>\n${rows}</table>`;
}
