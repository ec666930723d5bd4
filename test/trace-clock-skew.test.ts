import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { analyseTraces, formatReport, parseTraceText, renderHtml, type SpanRecord, type TraceReport } from '../shared/telemetry/analysis';

/**
 * The two services run on different nodes, each span stamped by its own node's clock. The report
 * estimates, per trace, how far the vision service's clock is off from the language service's by the
 * Encode RPC pair (the language CLIENT span and the vision SERVER span under it, NTP's symmetric-delay
 * estimate) and removes it where the server span sticks out of its client span. The fixture (make-fixtures.mjs) has the
 * server span exactly 1 ms inside each end of its client span, so the estimate is the skew itself.
 */
const fixture = parseTraceText(readFileSync(join(__dirname, 'fixtures', 'traces', 'pipeline.jsonl'), 'utf8')).spans;
const MS = 1_000_000n;

/** The fixture as if vlm-vision's clock ran `skewMs` ahead of vlm-language's. */
function withVisionClockOff(spans: readonly SpanRecord[], skewMs: number): SpanRecord[] {
  const shift = (t: string) => String(BigInt(t) + BigInt(skewMs) * MS);
  return spans.map((s) =>
    s.service !== 'vlm-vision'
      ? s
      : { ...s, startTimeUnixNano: shift(s.startTimeUnixNano), endTimeUnixNano: shift(s.endTimeUnixNano), events: s.events.map((e) => ({ ...e, timeUnixNano: shift(e.timeUnixNano) })) },
  );
}

/** Everything the breakdown shows, in milliseconds (shares as ms of the mean end-to-end time). */
function breakdown(r: TraceReport) {
  const e2e = r.endToEnd.mean;
  return {
    endToEnd: [r.endToEnd.p50, r.endToEnd.p95, r.endToEnd.mean],
    stages: r.stages.map((s) => ({ key: s.key, ms: [s.latency.p50, s.latency.p95, s.perTrace.mean, s.share * e2e, s.selfShare * e2e, s.meanOffset] })),
    transfer: [r.transfer.stream.p50, r.transfer.stream.p95, ...r.transfer.rpc.map((x) => x.overhead.p50)],
    groups: r.groups.map((g) => ({ group: `${g.method}@${g.budget}`, self: Object.entries(g.stageSelfMean).sort(([a], [b]) => (a < b ? -1 : 1)) })),
  };
}

function expectWithin(actual: unknown, expected: unknown, tol: number, path = ''): void {
  if (typeof expected === 'number') {
    expect(Math.abs((actual as number) - expected), `${path}: ${String(actual)} vs ${expected}`).toBeLessThanOrEqual(tol);
  } else if (Array.isArray(expected)) {
    expect((actual as unknown[]).length, path).toBe(expected.length);
    expected.forEach((e, i) => expectWithin((actual as unknown[])[i], e, tol, `${path}[${i}]`));
  } else if (typeof expected === 'object' && expected !== null) {
    for (const [k, v] of Object.entries(expected)) expectWithin((actual as Record<string, unknown>)[k], v, tol, `${path}.${k}`);
  } else expect(actual, path).toBe(expected);
}

describe('clock offset between the services', () => {
  const straight = analyseTraces(fixture).report;

  it('is estimated as 0 when both services share a clock', () => {
    expect(straight.traces.map((t) => t.clockOffsets)).toEqual(Array(5).fill([{ service: 'vlm-vision', relativeTo: 'vlm-language', offsetMs: 0, pairs: 1 }]));
    expect(straight.clockOffsets).toEqual([{ service: 'vlm-vision', relativeTo: 'vlm-language', traces: 5, offset: expect.objectContaining({ mean: 0, count: 5 }), largest: 0 }]);
  });

  it('leaves a server span inside its client span alone, however lopsided the wire times (a new connection)', () => {
    // The first call's request takes 9 ms longer to arrive than its response to return: the symmetric
    // estimate would say +4 ms of skew where there is none. Inside its client span, nothing is shifted.
    const encode = fixture.find((s) => s.service === 'vlm-language' && s.kind === 'CLIENT')!;
    const lopsided = fixture.map((s) => (s.spanId === encode.spanId ? { ...s, startTimeUnixNano: String(BigInt(s.startTimeUnixNano) - 9n * MS) } : s));
    const trace = analyseTraces(lopsided).report.traces.find((t) => t.traceId === encode.traceId)!;
    expect(trace.clockOffsets).toEqual([{ service: 'vlm-vision', relativeTo: 'vlm-language', offsetMs: 0, pairs: 1 }]);
  });

  it.each([
    ['past its deadline at the client (DEADLINE_EXCEEDED), the server running on', 'ERROR', 4],
    ['cancelled by the client, the server running on', 'UNSET', 1],
  ] as const)('takes no offset from a call %s: the server span outlasts the client span on any clocks', (_, status, grpcCode) => {
    // One shared clock, and the Encode's client span ends 30 ms into its server span.
    const encode = fixture.find((s) => s.service === 'vlm-language' && s.kind === 'CLIENT')!;
    const server = fixture.find((s) => s.parentSpanId === encode.spanId && s.kind === 'SERVER')!;
    const cut = String(BigInt(server.startTimeUnixNano) + 30n * MS);
    const failed = fixture.map((s) =>
      s.spanId === encode.spanId ? { ...s, endTimeUnixNano: cut, status: { code: status }, attributes: { ...s.attributes, 'rpc.grpc.status_code': grpcCode } } : s,
    );
    const { report, trees } = analyseTraces(failed);
    const trace = report.traces.find((t) => t.traceId === encode.traceId)!;
    expect(trace.clockOffsets).toEqual([]); // no pair that shows the clocks
    const tree = trees.find((t) => t.traceId === encode.traceId)!;
    for (const n of tree.ordered) expect(n.clockOffsetNs).toBe(0n); // nothing moved
    // ...and its client-minus-server time is no RPC overhead (it would be -30 ms or so)
    for (const r of report.transfer.rpc) expect(r.overhead.count).toBe(4);
  });

  it.each([20, -20, 50, -50])('with the vision clock %d ms off, gives the no-skew breakdown and reports the offset', (skew) => {
    const { report } = analyseTraces(withVisionClockOff(fixture, skew));
    expectWithin(breakdown(report), breakdown(straight), 1);
    // transfer is language's receive end minus vision's send start: S + 2 ms, never negative
    expect(report.transfer.stream.p50).toBeCloseTo(6, 6);
    expect(report.traces.map((t) => t.clockOffsets[0]!.offsetMs)).toEqual(Array(5).fill(skew));
    expect(report.clockOffsets[0]).toMatchObject({ service: 'vlm-vision', relativeTo: 'vlm-language', traces: 5, offset: { mean: skew }, largest: skew });
    // self time adds up to what it does on one clock (a little over 100 %: the language service's
    // receive overlaps the vision service's send), not more because vision spans slid out of place
    const selfSum = (r: TraceReport) => r.stages.reduce((sum, s) => sum + s.selfShare, 0);
    expect(selfSum(report)).toBeCloseTo(selfSum(straight), 9);
  });

  it('puts each vision span back inside its client span on the waterfall', () => {
    const { trees } = analyseTraces(withVisionClockOff(fixture, 50));
    for (const tree of trees) {
      const client = tree.ordered.find((n) => n.span.kind === 'CLIENT')!;
      const server = client.children.find((n) => n.span.kind === 'SERVER')!;
      expect(server.start).toBeCloseTo(client.start + 1, 6);
      expect(server.end).toBeCloseTo(client.end - 1, 6);
      // the trace starts at the root, not at the vision span that looked 50 ms earlier or later
      expect(tree.root.start).toBe(0);
    }
  });

  it('corrects each server span by its own client span (a retried Encode on another replica)', () => {
    const at = (ms: number) => String(1_700_000_000_000_000_000n + BigInt(ms) * MS);
    const rec = (id: string, parent: string, name: string, service: string, kind: SpanRecord['kind'], start: number, end: number): SpanRecord => ({
      traceId: '0000000000000000000000000000beef',
      spanId: id.padStart(16, '0'),
      parentSpanId: parent ? parent.padStart(16, '0') : '',
      name,
      service,
      kind,
      startTimeUnixNano: at(start),
      endTimeUnixNano: at(end),
      attributes: {},
      events: [],
      status: { code: 'UNSET' },
    });
    const E = 'grpc.vlm.v1.VisionService/Encode';
    // replica A runs 30 ms ahead and fails; replica B runs 40 ms behind and answers
    const spans = [
      rec('1', '', 'vlm.request', 'vlm-language', 'SERVER', 0, 100),
      rec('2', '1', E, 'vlm-language', 'CLIENT', 1, 11),
      rec('3', '2', E, 'vlm-vision', 'SERVER', 2 + 30, 10 + 30),
      rec('4', '1', E, 'vlm-language', 'CLIENT', 12, 40),
      rec('5', '4', E, 'vlm-vision', 'SERVER', 13 - 40, 39 - 40),
      rec('6', '5', 'vlm.stream.send', 'vlm-vision', 'INTERNAL', 30 - 40, 38 - 40),
      rec('7', '1', 'vlm.stream.receive', 'vlm-language', 'INTERNAL', 30, 40),
    ];
    const { report, trees } = analyseTraces(spans);
    const placed = Object.fromEntries(trees[0]!.ordered.map((n) => [n.span.spanId.replace(/^0+/, ''), [n.start, n.end]]));
    expect(placed).toEqual({ '1': [0, 100], '2': [1, 11], '3': [2, 10], '4': [12, 40], '5': [13, 39], '6': [30, 38], '7': [30, 40] });
    expect(report.transfer.stream.p50).toBe(10);
    // the trace's figure for the service is the mean over its RPC pairs
    expect(report.traces[0]!.clockOffsets).toEqual([{ service: 'vlm-vision', relativeTo: 'vlm-language', offsetMs: -5, pairs: 2 }]);
  });

  it('shows the offset in the text and HTML reports', () => {
    const { report, trees } = analyseTraces(withVisionClockOff(fixture, 20));
    expect(formatReport(report)).toMatch(/clock offset of vlm-vision relative to vlm-language \(estimated per trace, removed\): mean \+20\.0 ms/);
    const html = renderHtml(report, trees[0]);
    expect(html).toMatch(/Clock offset of vlm-vision relative to vlm-language \(estimated per trace, removed\): mean \+20\.0 ms/);
    expect(html).toMatch(/vlm-vision clock \+20\.0 ms, removed/);
  });
});

describe('the summary of clock offsets across traces', () => {
  it('reports the offset largest in magnitude with its sign: a clock behind is not hidden by a trace that needed no shift', () => {
    const skews = [-50, -40, -45];
    const spans = [...skews.flatMap((skew, i) => withVisionClockOff(fixture.filter((s) => s.traceId === fixture[0]!.traceId), skew).map((s) => ({ ...s, traceId: s.traceId.slice(0, -1) + 'abc'[i]! }))), ...fixture.filter((s) => s.traceId === fixture[0]!.traceId)];
    const { report } = analyseTraces(spans);
    expect(report.traces.map((t) => t.clockOffsets[0]!.offsetMs).sort((a, b) => a - b)).toEqual([-50, -45, -40, 0]);
    expect(report.clockOffsets[0]).toMatchObject({ traces: 4, largest: -50, offset: expect.objectContaining({ max: 0 }) });
    expect(formatReport(report)).toMatch(/largest -50\.0 ms \(n=4\)/);
  });
});
