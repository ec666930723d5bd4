import { ATTR_VLM_REDUCTION_BUDGET, ATTR_VLM_REDUCTION_METHOD, SpanName } from '../names';
import type { SpanRecord } from './span-record';
import { summarise, type Summary } from './stats';
import { buildTraces, rpcSucceeded, type ClockOffset, type TimedSpan, type TraceTree } from './trace-tree';

/**
 * Where the time of a request goes, from its traces. All durations are milliseconds.
 * - A stage is a span name within a service (`vlm-vision vlm.vision.layer`).
 * - `latency` summarises single spans; `perTrace` the stage's total per trace (24 layers add up).
 * - `share` is the stage's total time over the total end-to-end time of all traces (so long requests
 *   weigh more); `selfShare` the same for its self time (its duration minus its children's), which adds
 *   up to about 1 over all stages when nothing runs concurrently.
 * - Transfer: `stream` is the time from the vision service starting to write the tensor
 *   (`vlm.stream.send` start) until the language service holds all of it (`vlm.stream.receive` end);
 *   `rpc` is, per client span, its duration minus its server span's: connection, queueing and
 *   serialisation outside the callee.
 * - Groups compare reduction methods and budgets by the attributes of each trace's request span.
 * - A trace whose root failed (an error status, a gRPC status other than OK) is listed (`ok` false)
 *   and counted in `failedTraces`, but left out of every figure of time (end to end, stages, shares,
 *   transfer, groups; if none succeeded, the stages, shares and transfer take them all and end to end
 *   and the groups are empty): a request refused in 2 ms would otherwise
 *   pull a method's times down, and one that ran to its deadline push them up.
 * - Every time is on the root service's clock: the other services' spans are shifted by their clock
 *   offset, estimated per trace from its RPC spans (trace-tree.ts). `clockOffsets` shows the estimates,
 *   per trace and summarised per service, so a large or wandering offset can be seen.
 * - `warnings` lists traces whose span graph was odd (parent cycles, several roots, repeated ids).
 */
export interface StageReport {
  key: string;
  name: string;
  service: string;
  spans: number;
  traces: number;
  latency: Summary;
  perTrace: Summary;
  share: number;
  selfShare: number;
  /** Mean start offset from the trace start: the stages' pipeline order. */
  meanOffset: number;
}

export interface GroupReport {
  method: string;
  budget: string;
  traces: number;
  endToEnd: Summary;
  /** Mean total and mean self time per trace, by stage key. */
  stageMean: Record<string, number>;
  stageSelfMean: Record<string, number>;
  /** Mean number of spans per trace, by stage key (e.g. the reduction steps of a method). */
  stageCountMean: Record<string, number>;
}

export interface TraceSummary {
  traceId: string;
  durationMs: number;
  spans: number;
  services: string[];
  method: string;
  budget: string;
  /** Whether the request succeeded (its root span's status); failed traces are not in endToEnd or the groups. */
  ok: boolean;
  /** The clock offsets estimated and removed in this trace, one per service reached by RPC. */
  clockOffsets: ClockOffset[];
}

/** The estimated clock offsets of one service over all traces that called it. */
export interface ClockOffsetReport {
  service: string;
  relativeTo: string;
  traces: number;
  offset: Summary;
  /** The per-trace offset largest in magnitude, with its sign (a skew behind shows here, not in `offset.max`). */
  largest: number;
}

export interface TraceReport {
  spans: number;
  traces: TraceSummary[];
  /** Traces whose request failed (listed in `traces`, left out of `endToEnd` and `groups`). */
  failedTraces: number;
  endToEnd: Summary;
  stages: StageReport[];
  transfer: { stream: Summary; rpc: { name: string; overhead: Summary }[] };
  groups: GroupReport[];
  clockOffsets: ClockOffsetReport[];
  slowestTraceId: string;
  warnings: string[];
}

export function stageKey(span: SpanRecord): string {
  return `${span.service} ${span.name}`;
}

export function analyseTraces(spans: readonly SpanRecord[]): { report: TraceReport; trees: TraceTree[] } {
  // In the order the requests started: each tree's times count from its own origin.
  const trees = buildTraces(spans).sort((a, b) => (a.originNs < b.originNs ? -1 : a.originNs > b.originNs ? 1 : a.traceId < b.traceId ? -1 : 1));
  const traceSummaries = trees.map((t): TraceSummary => {
    const { method, budget } = policyOf(t);
    return { traceId: t.traceId, durationMs: t.root.duration, spans: t.ordered.length, services: t.services, method, budget, ok: rpcSucceeded(t.root.span), clockOffsets: t.clockOffsets };
  });
  const succeeded = trees.filter((_, i) => traceSummaries[i]!.ok);
  // Every figure of time is over the requests that succeeded; the stages, shares and transfer fall
  // back to all of them if none did (end to end and the groups are then empty).
  const measuredTrees = succeeded.length > 0 ? succeeded : trees;
  const totalE2e = measuredTrees.reduce((sum, t) => sum + t.root.duration, 0);

  const stageAcc = new Map<string, { name: string; service: string; durations: number[]; perTrace: Map<string, number>; self: number; sharedTime: number; offsets: number[] }>();
  for (const tree of measuredTrees) {
    const rootStart = tree.root.start;
    // Shares are of the time the root measures: spans under another root (their parent missing) are
    // summarised but not shared out, or a trace with a dropped client span would add up past 100 %.
    const measured = underRoot(tree);
    for (const node of tree.ordered) {
      const key = stageKey(node.span);
      let acc = stageAcc.get(key);
      if (!acc) {
        acc = { name: node.span.name, service: node.span.service, durations: [], perTrace: new Map(), self: 0, sharedTime: 0, offsets: [] };
        stageAcc.set(key, acc);
      }
      acc.durations.push(node.duration);
      acc.perTrace.set(tree.traceId, (acc.perTrace.get(tree.traceId) ?? 0) + node.duration);
      if (measured.has(node)) {
        acc.self += node.self;
        acc.sharedTime += node.duration;
      }
      acc.offsets.push(node.start - rootStart);
    }
  }
  const stages: StageReport[] = [...stageAcc.entries()].map(([key, a]) => ({
    key,
    name: a.name,
    service: a.service,
    spans: a.durations.length,
    traces: a.perTrace.size,
    latency: summarise(a.durations),
    perTrace: summarise([...a.perTrace.values()]),
    share: totalE2e > 0 ? a.sharedTime / totalE2e : 0,
    selfShare: totalE2e > 0 ? a.self / totalE2e : 0,
    meanOffset: a.offsets.reduce((x, y) => x + y, 0) / a.offsets.length,
  }));
  stages.sort((a, b) => a.meanOffset - b.meanOffset || b.perTrace.mean - a.perTrace.mean || (a.key < b.key ? -1 : 1));

  const streamMs: number[] = [];
  const rpc = new Map<string, number[]>();
  for (const tree of measuredTrees) {
    // The latest of each: after a hop retry, the earlier pair is the attempt that failed (by time, not
    // by tree order, which puts a span whose parent is missing after the rest).
    const latest = (name: string) => tree.ordered.filter((n) => n.span.name === name).reduce<TimedSpan | undefined>((l, n) => (!l || n.start >= l.start ? n : l), undefined);
    const send = latest(SpanName.StreamSend);
    const receive = latest(SpanName.StreamReceive);
    if (send && receive) streamMs.push(receive.end - send.start);
    for (const node of tree.ordered) {
      if (node.span.kind !== 'CLIENT') continue;
      const server = node.children.find((c) => c.span.kind === 'SERVER');
      // A failed call's sides end apart (the client at its deadline or cancel, the server later).
      if (!server || !rpcSucceeded(node.span) || !rpcSucceeded(server.span)) continue;
      const list = rpc.get(node.span.name) ?? [];
      list.push(node.duration - server.duration);
      rpc.set(node.span.name, list);
    }
  }

  const groupAcc = new Map<string, { method: string; budget: string; trees: TraceTree[] }>();
  for (const [i, tree] of trees.entries()) {
    const { method, budget, ok } = traceSummaries[i]!;
    if (!ok) continue;
    const key = `${method}\u0000${budget}`;
    const g = groupAcc.get(key) ?? { method, budget, trees: [] };
    g.trees.push(tree);
    groupAcc.set(key, g);
  }
  const groups = [...groupAcc.values()]
    .map((g): GroupReport => {
      const stageMean: Record<string, number> = {};
      const stageSelfMean: Record<string, number> = {};
      const stageCountMean: Record<string, number> = {};
      for (const tree of g.trees) {
        for (const node of tree.ordered) {
          const key = stageKey(node.span);
          stageMean[key] = (stageMean[key] ?? 0) + node.duration / g.trees.length;
          stageSelfMean[key] = (stageSelfMean[key] ?? 0) + node.self / g.trees.length;
          stageCountMean[key] = (stageCountMean[key] ?? 0) + 1 / g.trees.length;
        }
      }
      return { method: g.method, budget: g.budget, traces: g.trees.length, endToEnd: summarise(g.trees.map((t) => t.root.duration)), stageMean, stageSelfMean, stageCountMean };
    })
    .sort((a, b) => (a.method < b.method ? -1 : a.method > b.method ? 1 : budgetOrder(a.budget) - budgetOrder(b.budget)));

  const slowest = measuredTrees.reduce<TraceTree | undefined>((best, t) => (!best || t.root.duration > best.root.duration ? t : best), undefined);
  return {
    trees,
    report: {
      spans: spans.length,
      traces: traceSummaries,
      failedTraces: trees.length - succeeded.length,
      endToEnd: summarise(succeeded.map((t) => t.root.duration)),
      stages,
      transfer: { stream: summarise(streamMs), rpc: [...rpc.entries()].map(([name, v]) => ({ name, overhead: summarise(v) })) },
      groups,
      clockOffsets: clockOffsetsOf(trees),
      slowestTraceId: slowest?.traceId ?? '',
      warnings: trees.flatMap((t) => t.warnings),
    },
  };
}

/** The root and every span below it. */
function underRoot(tree: TraceTree): Set<TimedSpan> {
  const seen = new Set<TimedSpan>();
  const stack = [tree.root];
  while (stack.length > 0) {
    const node = stack.pop()!;
    seen.add(node);
    stack.push(...node.children);
  }
  return seen;
}

/** Per service and reference service, the per-trace offsets summarised (in order of first appearance). */
function clockOffsetsOf(trees: readonly TraceTree[]): ClockOffsetReport[] {
  const acc = new Map<string, { service: string; relativeTo: string; offsets: number[] }>();
  for (const tree of trees) {
    for (const c of tree.clockOffsets) {
      const key = `${c.service}\u0000${c.relativeTo}`;
      const entry = acc.get(key) ?? { service: c.service, relativeTo: c.relativeTo, offsets: [] };
      entry.offsets.push(c.offsetMs);
      acc.set(key, entry);
    }
  }
  return [...acc.values()].map((e) => ({
    service: e.service,
    relativeTo: e.relativeTo,
    traces: e.offsets.length,
    offset: summarise(e.offsets),
    largest: e.offsets.reduce((l, o) => (Math.abs(o) > Math.abs(l) ? o : l), 0),
  }));
}

/** The policy of a trace: from the root if it carries one, else from the first request span that does. */
function policyOf(tree: TraceTree): { method: string; budget: string } {
  const carries = (n: TimedSpan) => n.span.attributes[ATTR_VLM_REDUCTION_METHOD] !== undefined;
  const node = carries(tree.root)
    ? tree.root
    : tree.ordered.find((n) => n.span.name === SpanName.Request && carries(n)) ?? tree.ordered.find(carries);
  const attrs = node?.span.attributes ?? {};
  const method = attrs[ATTR_VLM_REDUCTION_METHOD];
  const budget = attrs[ATTR_VLM_REDUCTION_BUDGET];
  // Every request span carries a budget (unreduced: `default`); none means the attributes are missing.
  return { method: method === undefined ? 'unknown' : String(method), budget: budget === undefined ? 'unknown' : String(budget) };
}

/** Absolute budgets ascending, then percentages ascending, then `default`, then anything else. */
function budgetOrder(b: string): number {
  const n = Number(b);
  if (Number.isFinite(n)) return n;
  const pct = /^(\d+(?:\.\d+)?)%$/.exec(b);
  if (pct) return 1e9 + Number(pct[1]);
  return b === 'default' ? 2e9 : 3e9;
}
