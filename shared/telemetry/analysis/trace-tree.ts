import type { SpanEventRecord, SpanRecord } from './span-record';
import { coveredLength } from './stats';

/**
 * Spans grouped into traces and placed on one time axis per trace.
 *
 * Clocks: every span is stamped by the clock of the node its service runs on, and the services of a
 * trace run on different nodes. Each RPC pair (a CLIENT span and a SERVER span of another service
 * directly under it) gives NTP's symmetric-delay estimate of how far the server's clock is ahead of
 * the client's: ((server.start - client.start) + (server.end - client.end)) / 2. A server span that
 * sticks out of its client span (only a skew does that) is shifted back by that much, with its
 * descendants (plus whatever the client's own spans were shifted by), which centres it in its client
 * span. One inside is left alone: the estimate is exact only when the request and the response take
 * equally long on the wire and off by half their difference otherwise, which a new connection makes
 * large. The reference clock is that of the root's service.
 *
 * Malformed graphs are analysed rather than refused: a span whose parent is not in the trace becomes
 * a root (the trace is measured by its longest root), a parent cycle is broken at its earliest span,
 * which becomes a root, and a second span with an id already seen is ignored; each is a warning, and
 * so is a lone root whose parent is missing.
 */

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
  /** Nanoseconds taken off this span's recorded times to put it on the trace's reference clock. */
  clockOffsetNs: bigint;
}

/** The estimated clock offset of one service in one trace: how far its clock is ahead of `relativeTo`'s. */
export interface ClockOffset {
  service: string;
  relativeTo: string;
  offsetMs: number;
  /** RPC pairs the estimate is the mean of. */
  pairs: number;
}

export interface TraceTree {
  traceId: string;
  /** The earliest start on the reference clock, in recorded nanoseconds. */
  originNs: bigint;
  /** The span the trace is measured by: the longest span whose parent is not in the trace. */
  root: TimedSpan;
  /** Depth-first, children by start time: the waterfall's row order. */
  ordered: TimedSpan[];
  services: string[];
  /** One entry per service other than the root's that is reached through an RPC pair. */
  clockOffsets: ClockOffset[];
  /** What was odd about the trace's span graph (see above); empty for a well-formed trace. */
  warnings: string[];
}

/** A span while the trace is assembled: recorded times and the parent link, before placement. */
interface Draft {
  span: SpanRecord;
  startNs: bigint;
  endNs: bigint;
  parent: Draft | undefined;
  children: Draft[];
  offsetNs: bigint;
}

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

/** An event's time on the tree's axis, shifted with the span that carries it. */
export function eventMillis(tree: TraceTree, node: TimedSpan, event: SpanEventRecord): number {
  return Number(BigInt(event.timeUnixNano) - node.clockOffsetNs - tree.originNs) / 1e6;
}

function buildOne(traceId: string, list: SpanRecord[]): TraceTree {
  const warnings: string[] = [];
  const warn = (text: string) => warnings.push(`trace ${traceId}: ${text}`);
  const drafts = draftsById(list, warn);
  linkParents(drafts);
  breakParentCycles(drafts, warn);
  const roots = [...drafts.values()].filter((d) => d.parent === undefined);
  for (const d of drafts.values()) d.parent?.children.push(d);
  const main = longestRoot(roots);
  if (roots.length > 1) warn(`${roots.length} spans have no parent in the trace; measured by the longest, ${main.span.name} (${main.span.spanId})`);
  else if (main.span.parentSpanId !== '' && !drafts.has(main.span.parentSpanId)) {
    // A lone root can still be a fragment: its parent was lost (a span never ended is never exported)
    // or lives elsewhere (a caller exporting to another backend), so it may not measure the request.
    warn(`its root ${main.span.name} (${main.span.spanId}) has parent ${main.span.parentSpanId}, which is not in the trace`);
  }

  const pairs = estimateClockOffsets(main, roots);
  let originNs = main.startNs - main.offsetNs;
  for (const d of drafts.values()) if (d.startNs - d.offsetNs < originNs) originNs = d.startNs - d.offsetNs;
  const timed = new Map<Draft, TimedSpan>();
  for (const d of drafts.values()) timed.set(d, place(d, originNs));
  for (const d of drafts.values()) if (d.parent) timed.get(d.parent)!.children.push(timed.get(d)!);

  const timedRoots = roots.map((r) => timed.get(r)!);
  const ordered = depthFirst(timedRoots);
  const services = [...new Set(list.map((s) => s.service))].sort();
  return { traceId, originNs, root: timed.get(main)!, ordered, services, clockOffsets: clockOffsetsOf(pairs, main.span.service), warnings };
}

/** One draft per span id; a repeated id (a span exported twice, or a broken producer) keeps the first. */
function draftsById(list: SpanRecord[], warn: (text: string) => void): Map<string, Draft> {
  const drafts = new Map<string, Draft>();
  const repeated: string[] = [];
  for (const span of list) {
    if (drafts.has(span.spanId)) {
      repeated.push(span.spanId);
      continue;
    }
    drafts.set(span.spanId, { span, startNs: BigInt(span.startTimeUnixNano), endNs: BigInt(span.endTimeUnixNano), parent: undefined, children: [], offsetNs: 0n });
  }
  if (repeated.length > 0) {
    const ids = repeated.length > 3 ? `${repeated.slice(0, 3).join(', ')}, ...` : repeated.join(', ');
    warn(`${repeated.length} ${repeated.length === 1 ? 'span' : 'spans'} with a span id seen before ignored (${ids})`);
  }
  return drafts;
}

function linkParents(drafts: Map<string, Draft>): void {
  for (const d of drafts.values()) {
    const parent = d.span.parentSpanId === '' ? undefined : drafts.get(d.span.parentSpanId);
    d.parent = parent === d ? undefined : parent;
  }
}

/**
 * Follows each span's parent chain; a chain that comes back to itself is a cycle, and its earliest
 * span loses its parent: the span that started first is the likeliest caller of the others.
 */
function breakParentCycles(drafts: Map<string, Draft>, warn: (text: string) => void): void {
  const ON_PATH = 1;
  const DONE = 2;
  const state = new Map<Draft, number>();
  for (const first of drafts.values()) {
    const path: Draft[] = [];
    let cur: Draft | undefined = first;
    while (cur !== undefined && !state.has(cur)) {
      state.set(cur, ON_PATH);
      path.push(cur);
      cur = cur.parent;
    }
    if (cur !== undefined && state.get(cur) === ON_PATH) {
      const cycle = path.slice(path.indexOf(cur)).sort(byRecordedStart);
      cycle[0]!.parent = undefined;
      warn(`spans ${cycle.map((d) => d.span.spanId).join(', ')} are each other's ancestors; span ${cycle[0]!.span.spanId} is taken as a root`);
    }
    for (const d of path) state.set(d, DONE);
  }
}

function byRecordedStart(a: Draft, b: Draft): number {
  return a.startNs < b.startNs ? -1 : a.startNs > b.startNs ? 1 : a.span.spanId < b.span.spanId ? -1 : 1;
}

/** The longest root, the earliest of equals. */
function longestRoot(roots: Draft[]): Draft {
  return [...roots].sort(byRecordedStart).reduce((best, r) => (r.endNs - r.startNs > best.endNs - best.startNs ? r : best));
}

/**
 * Sets each draft's offsetNs, walking down from the main root (on the reference clock, offset 0):
 * a span inherits its parent's offset unless it is the server half of an RPC pair that sticks out of
 * its client span, which is then centred in it (the pair's estimate is added). Other roots start from
 * their service's mean estimate in this trace, if any. Returns every pair's applied offset (0 for a
 * pair that needed none) as the offset of the server's service from the reference clock.
 */
function estimateClockOffsets(main: Draft, roots: Draft[]): { service: string; offsetNs: bigint }[] {
  const pairs: { service: string; offsetNs: bigint }[] = [];
  const walk = (root: Draft, offsetNs: bigint) => {
    root.offsetNs = offsetNs;
    const stack = [root];
    while (stack.length > 0) {
      const node = stack.pop()!;
      for (const child of node.children) {
        child.offsetNs = node.offsetNs;
        if (isRpcPair(node, child) && showsClocks(node, child)) {
          if (!within(child, node)) child.offsetNs += symmetricOffsetNs(node, child);
          pairs.push({ service: child.span.service, offsetNs: child.offsetNs });
        }
        stack.push(child);
      }
    }
  };
  walk(main, 0n);
  for (const r of roots) {
    if (r === main) continue;
    const known = pairs.filter((p) => p.service === r.span.service);
    walk(r, known.length === 0 ? 0n : known.reduce((sum, p) => sum + p.offsetNs, 0n) / BigInt(known.length));
  }
  return pairs;
}

/** A CLIENT span with a SERVER span of another service directly under it: one call across nodes. */
function isRpcPair(client: Draft, server: Draft): boolean {
  return client.span.kind === 'CLIENT' && server.span.kind === 'SERVER' && server.span.service !== client.span.service;
}

/**
 * Whether an RPC pair can show the clocks' offset at all: only a call that succeeded on both sides,
 * with the server span no longer than the client's. A cancelled call or one past its deadline ends
 * at the client while the server's handler runs on, so its server span sticks out on any clocks;
 * centring it would invent a skew (27 ms measured on one host) and move the server's spans before the
 * call that made them.
 */
function showsClocks(client: Draft, server: Draft): boolean {
  return rpcSucceeded(client.span) && rpcSucceeded(server.span) && server.endNs - server.startNs <= client.endNs - client.startNs;
}

/** Neither an ERROR status nor a gRPC status other than OK: a call whose timing is the call's own. */
export function rpcSucceeded(span: SpanRecord): boolean {
  const code = span.attributes['rpc.grpc.status_code'];
  return span.status.code !== 'ERROR' && (code === undefined || Number(code) === 0);
}

/**
 * Whether the server span lies inside its client span on the recorded clocks. Then nothing shows a
 * skew, and none is assumed: the symmetric estimate is off by half the difference between the
 * request's and the response's time on the wire, which a new connection's set-up makes large (an
 * estimate of +9 ms measured for the first call on one machine, where the true offset is 0).
 */
function within(server: Draft, client: Draft): boolean {
  return server.startNs >= client.startNs && server.endNs <= client.endNs;
}

/** NTP's estimate of how far the server's clock is ahead of the client's, assuming equal wire delays. */
function symmetricOffsetNs(client: Draft, server: Draft): bigint {
  return (server.startNs - client.startNs + (server.endNs - client.endNs)) / 2n;
}

function place(d: Draft, originNs: bigint): TimedSpan {
  const start = Number(d.startNs - d.offsetNs - originNs) / 1e6;
  const end = Number(d.endNs - d.offsetNs - originNs) / 1e6;
  return { span: d.span, start, end, duration: end - start, self: 0, depth: 0, children: [], clockOffsetNs: d.offsetNs };
}

/**
 * Sorts children by start, sets depth and self time, and lists the spans depth-first from the roots
 * in start order. Iterative: a malformed trace may nest spans deeper than the call stack.
 */
function depthFirst(roots: TimedSpan[]): TimedSpan[] {
  const byStart = (a: TimedSpan, b: TimedSpan) => a.start - b.start || b.duration - a.duration;
  const ordered: TimedSpan[] = [];
  const stack = [...roots].sort(byStart).reverse();
  for (const r of stack) r.depth = 0;
  while (stack.length > 0) {
    const node = stack.pop()!;
    node.children.sort(byStart);
    node.self = Math.max(0, node.duration - coveredLength(node.children, node.start, node.end));
    ordered.push(node);
    for (let i = node.children.length - 1; i >= 0; i--) {
      node.children[i]!.depth = node.depth + 1;
      stack.push(node.children[i]!);
    }
  }
  return ordered;
}

/** Per service, the mean of its pairs' estimates, in milliseconds; the reference service is left out. */
function clockOffsetsOf(pairs: { service: string; offsetNs: bigint }[], reference: string): ClockOffset[] {
  const byService = new Map<string, bigint[]>();
  for (const p of pairs) {
    if (p.service === reference) continue;
    const list = byService.get(p.service);
    if (list) list.push(p.offsetNs);
    else byService.set(p.service, [p.offsetNs]);
  }
  return [...byService.entries()]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([service, offsets]) => ({ service, relativeTo: reference, offsetMs: Number(offsets.reduce((a, b) => a + b, 0n)) / offsets.length / 1e6, pairs: offsets.length }));
}
