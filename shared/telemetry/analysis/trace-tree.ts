import type { SpanRecord } from './span-record';
import { coveredLength } from './stats';

/** One span placed on its trace's time axis (milliseconds from the trace's first start). */
export interface TimedSpan {
  span: SpanRecord;
  start: number;
  end: number;
  duration: number;
  /** Duration minus the time covered by its children (clipped to this span; never negative). */
  self: number;
  depth: number;
  children: TimedSpan[];
}

export interface TraceTree {
  traceId: string;
  originNs: bigint;
  /** The span the trace is measured by: the longest span whose parent is not in the trace. */
  root: TimedSpan;
  /** Depth-first, children by start time: the waterfall's row order. */
  ordered: TimedSpan[];
  services: string[];
}

/** Groups spans by trace and links parents; spans whose parent is missing become extra roots. */
export function buildTraces(spans: readonly SpanRecord[]): TraceTree[] {
  const byTrace = new Map<string, SpanRecord[]>();
  for (const s of spans) {
    const list = byTrace.get(s.traceId);
    if (list) list.push(s);
    else byTrace.set(s.traceId, [s]);
  }
  const out: TraceTree[] = [];
  for (const [traceId, list] of byTrace) out.push(buildOne(traceId, list));
  return out;
}

function buildOne(traceId: string, list: SpanRecord[]): TraceTree {
  let originNs = BigInt(list[0]!.startTimeUnixNano);
  for (const s of list) {
    const t = BigInt(s.startTimeUnixNano);
    if (t < originNs) originNs = t;
  }
  const nodes = new Map<string, TimedSpan>();
  for (const span of list) {
    const start = Number(BigInt(span.startTimeUnixNano) - originNs) / 1e6;
    const end = Number(BigInt(span.endTimeUnixNano) - originNs) / 1e6;
    nodes.set(span.spanId, { span, start, end, duration: end - start, self: 0, depth: 0, children: [] });
  }
  const roots: TimedSpan[] = [];
  for (const node of nodes.values()) {
    const parent = node.span.parentSpanId === '' ? undefined : nodes.get(node.span.parentSpanId);
    if (parent && parent !== node) parent.children.push(node);
    else roots.push(node);
  }
  const ordered: TimedSpan[] = [];
  const byStart = (a: TimedSpan, b: TimedSpan) => a.start - b.start || b.duration - a.duration;
  const visit = (node: TimedSpan, depth: number) => {
    node.depth = depth;
    node.children.sort(byStart);
    node.self = Math.max(0, node.duration - coveredLength(node.children, node.start, node.end));
    ordered.push(node);
    for (const c of node.children) visit(c, depth + 1);
  };
  roots.sort(byStart);
  for (const r of roots) visit(r, 0);
  const root = roots.reduce((best, r) => (r.duration > best.duration ? r : best), roots[0]!);
  const services = [...new Set(list.map((s) => s.service))].sort();
  return { traceId, originNs, root, ordered, services };
}
