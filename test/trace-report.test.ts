import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { analyseTraces, formatReport, parseTraceText, quantile, renderHtml, type SpanRecord, type TraceReport } from '../shared/telemetry/analysis';

/**
 * The fixture (test/fixtures/traces/make-fixtures.mjs) holds five hand-timed requests, ms:
 *
 *   trace  method     budget  P  M   J  S   F   D   V=P+M+J+S  e2e=V+5+F+D  transfer=S+2
 *   0      ficoco-vl  64      4  20  2  2   10  50  28         93           4
 *   1      ficoco-vl  64      4  22  2  4   12  40  32         89           6
 *   2      ficoco-vl  64      6  18  2  2   10  60  28         103          4
 *   3      none       576     4  30  4  8   40  50  46         141          10
 *   4      none       576     4  32  4  10  44  60  50         159          12
 *
 * Percentiles interpolate linearly between ranks: with n=5 sorted values x0..x4, p at h=4p.
 */
const fixture = (name: string) => readFileSync(join(__dirname, 'fixtures', 'traces', name), 'utf8');
const stage = (r: TraceReport, key: string) => {
  const s = r.stages.find((x) => x.key === key);
  if (!s) throw new Error(`no stage ${key} in ${r.stages.map((x) => x.key).join(', ')}`);
  return s;
};

describe('quantile', () => {
  it('interpolates between closest ranks', () => {
    // h = 3 * 0.5 = 1.5 -> 2 + 0.5 * (3 - 2)
    expect(quantile([1, 2, 3, 10], 0.5)).toBe(2.5);
    // h = 3 * 0.95 = 2.85 -> 3 + 0.85 * 7
    expect(quantile([1, 2, 3, 10], 0.95)).toBeCloseTo(8.95, 10);
    expect(quantile([7], 0.99)).toBe(7);
  });
});

describe('vlm trace report on the hand-made fixture', () => {
  const { format, spans } = parseTraceText(fixture('pipeline.jsonl'));
  const { report } = analyseTraces(spans);

  it('reads span lines and finds five traces of twelve spans', () => {
    expect(format).toBe('span-lines');
    expect(report.traces).toHaveLength(5);
    expect(report.traces.every((t) => t.spans === 12)).toBe(true);
    expect(report.traces.map((t) => t.services)).toEqual(Array(5).fill(['vlm-language', 'vlm-vision']));
  });

  it('measures end to end from the root span', () => {
    // sorted e2e [89, 93, 103, 141, 159]: p50 = x2 = 103; p95: h=3.8 -> 141 + 0.8*18 = 155.4;
    // p99: h=3.96 -> 141 + 0.96*18 = 158.28
    expect(report.endToEnd.p50).toBeCloseTo(103, 9);
    expect(report.endToEnd.p95).toBeCloseTo(155.4, 9);
    expect(report.endToEnd.p99).toBeCloseTo(158.28, 9);
    expect(report.endToEnd.mean).toBeCloseTo(585 / 5, 9);
    expect(report.slowestTraceId).toBe('000000000000000000000000abc00004');
  });

  it('gives per-stage percentiles of single spans', () => {
    // decode D sorted [40, 50, 50, 60, 60]: p50 50; p95 h=3.8 -> 60 + 0.8*0 = 60
    const decode = stage(report, 'vlm-language vlm.decode');
    expect([decode.latency.p50, decode.latency.p95, decode.latency.p99]).toEqual([50, 60, 60]);
    // prefill F sorted [10, 10, 12, 40, 44]: p50 12; p95 40 + 0.8*4 = 43.2; p99 40 + 0.96*4 = 43.84
    const prefill = stage(report, 'vlm-language vlm.prefill');
    expect(prefill.latency.p50).toBeCloseTo(12, 9);
    expect(prefill.latency.p95).toBeCloseTo(43.2, 9);
    expect(prefill.latency.p99).toBeCloseTo(43.84, 9);
    // vision embed M sorted [18, 20, 22, 30, 32]: p50 22; p95 30 + 0.8*2 = 31.6
    expect(stage(report, 'vlm-vision vlm.vision.embed').latency.p95).toBeCloseTo(31.6, 9);
  });

  it('summarises repeated spans singly and per trace', () => {
    // two layers of M/2 per trace: sorted [9,9,10,10,11,11,15,15,16,16]; p50 h=4.5 -> 11; p95 h=8.55 -> 16
    const layer = stage(report, 'vlm-vision vlm.vision.layer');
    expect(layer.spans).toBe(10);
    expect(layer.traces).toBe(5);
    expect(layer.latency.p50).toBeCloseTo(11, 9);
    expect(layer.latency.p95).toBeCloseTo(16, 9);
    // per trace they add up to M: mean (20+22+18+30+32)/5 = 24.4
    expect(layer.perTrace.mean).toBeCloseTo(24.4, 9);
  });

  it('gives each stage its share of end-to-end time, and its self share', () => {
    // total e2e 585 ms; decode total 260 ms -> 0.4444; prefill 116 -> 0.1983
    expect(stage(report, 'vlm-language vlm.decode').share).toBeCloseTo(260 / 585, 9);
    expect(stage(report, 'vlm-language vlm.prefill').share).toBeCloseTo(116 / 585, 9);
    // the embed span is covered by its layers: no self time; the root keeps [0,1) and its last 1 ms
    expect(stage(report, 'vlm-vision vlm.vision.embed').selfShare).toBe(0);
    expect(stage(report, 'vlm-language vlm.request').selfShare).toBeCloseTo(10 / 585, 9);
    // the client span [1, V+3] is 2 ms longer than the server span [2, V+2] it contains
    expect(stage(report, 'vlm-language grpc.vlm.v1.VisionService/Encode').selfShare).toBeCloseTo(10 / 585, 9);
  });

  it('orders stages along the pipeline', () => {
    const order = report.stages.map((s) => s.name);
    expect(order.indexOf('vlm.preprocess')).toBeLessThan(order.indexOf('vlm.vision.embed'));
    expect(order.indexOf('vlm.vision.embed')).toBeLessThan(order.indexOf('vlm.project'));
    expect(order.indexOf('vlm.project')).toBeLessThan(order.indexOf('vlm.prefill'));
    expect(order.indexOf('vlm.prefill')).toBeLessThan(order.indexOf('vlm.decode'));
  });

  it('measures the transfer between the services', () => {
    // receive end - send start = S + 2: sorted [4, 4, 6, 10, 12]; p50 6; p95 10 + 0.8*2 = 11.6; p99 11.92
    const t = report.transfer.stream;
    expect(t.count).toBe(5);
    expect(t.p50).toBeCloseTo(6, 9);
    expect(t.p95).toBeCloseTo(11.6, 9);
    expect(t.p99).toBeCloseTo(11.92, 9);
    // client span (V+2) minus server span (V): 2 ms in every trace
    expect(report.transfer.rpc).toHaveLength(1);
    expect(report.transfer.rpc[0]!.name).toBe('grpc.vlm.v1.VisionService/Encode');
    expect(report.transfer.rpc[0]!.overhead.p50).toBeCloseTo(2, 9);
  });

  it("measures a retried hop's transfer by its last attempt, not the one that failed", () => {
    const spans = parseTraceText(fixture('pipeline.jsonl')).spans;
    const traceId = spans[0]!.traceId;
    const one = spans.filter((s) => s.traceId === traceId);
    const before = analyseTraces(one).report.transfer.stream.p50;
    // An earlier attempt: a copy of the Encode client span's subtree and of the receive span, 50 ms
    // before the real one, with ids of their own (vision's send cut short by a lost replica).
    const client = one.find((s) => s.kind === 'CLIENT')!;
    const subtree = new Set([client.spanId]);
    for (let grew = true; grew; ) {
      grew = false;
      for (const s of one) if (subtree.has(s.parentSpanId) && !subtree.has(s.spanId)) (subtree.add(s.spanId), (grew = true));
    }
    const copied = one.filter((s) => subtree.has(s.spanId) || s.name === 'vlm.stream.receive');
    const id = (x: string) => `f${x.slice(1)}`;
    const earlier = (t: string) => String(BigInt(t) - 50_000_000n);
    const attempt = copied.map((s) => ({
      ...s,
      spanId: id(s.spanId),
      parentSpanId: subtree.has(s.parentSpanId) ? id(s.parentSpanId) : s.parentSpanId,
      startTimeUnixNano: earlier(s.startTimeUnixNano),
      // the receive ends where the stream broke, 1 ms in
      endTimeUnixNano: s.name === 'vlm.stream.receive' ? String(BigInt(earlier(s.startTimeUnixNano)) + 1_000_000n) : earlier(s.endTimeUnixNano),
      events: [],
    }));
    expect(new Set([...one, ...attempt].map((s) => s.spanId)).size).toBe(one.length + attempt.length);
    expect(analyseTraces([...one, ...attempt]).report.transfer.stream.p50).toBeCloseTo(before, 9);
  });

  it('compares methods and budgets', () => {
    expect(report.groups.map((g) => [g.method, g.budget, g.traces])).toEqual([
      ['ficoco-vl', '64', 3],
      ['none', '576', 2],
    ]);
    const [ficoco, none] = report.groups;
    // ficoco-vl e2e sorted [89, 93, 103]: p50 93; p95 h=1.9 -> 93 + 0.9*10 = 102
    expect(ficoco!.endToEnd.p50).toBeCloseTo(93, 9);
    expect(ficoco!.endToEnd.p95).toBeCloseTo(102, 9);
    // none e2e [141, 159]: p50 h=0.5 -> 150
    expect(none!.endToEnd.p50).toBeCloseTo(150, 9);
    // mean prefill per trace: (10+12+10)/3 and (40+44)/2
    expect(ficoco!.stageMean['vlm-language vlm.prefill']).toBeCloseTo(32 / 3, 9);
    expect(none!.stageMean['vlm-language vlm.prefill']).toBeCloseTo(42, 9);
    // and how many spans of a stage a trace has: one prefill and two vision layers each
    expect(ficoco!.stageCountMean['vlm-language vlm.prefill']).toBeCloseTo(1, 9);
    expect(none!.stageCountMean['vlm-vision vlm.vision.layer']).toBeCloseTo(2, 9);
  });
});

describe('other trace sources', () => {
  const ours = analyseTraces(parseTraceText(fixture('pipeline.jsonl')).spans).report;

  it.each([
    ['pipeline.jaeger.json', 'jaeger'],
    ['pipeline.tempo.json', 'otlp-json'],
  ])('%s is detected as %s and gives the same report', (file, expected) => {
    const { format, spans } = parseTraceText(fixture(file));
    expect(format).toBe(expected);
    const theirs = analyseTraces(spans).report;
    expect(theirs.traces.map((t) => [t.traceId, t.durationMs, t.method, t.budget])).toEqual(ours.traces.map((t) => [t.traceId, t.durationMs, t.method, t.budget]));
    expect(theirs.stages.map((s) => [s.key, s.spans, s.latency.p95])).toEqual(ours.stages.map((s) => [s.key, s.spans, s.latency.p95]));
    expect(theirs.transfer).toEqual(ours.transfer);
    const decode = spans.find((s) => s.name === 'vlm.decode')!;
    expect(decode.events.map((e) => e.name)).toEqual(Array(5).fill('vlm.token'));
    expect(decode.kind).toBe('INTERNAL');
    expect(spans.find((s) => s.kind === 'CLIENT')?.name).toBe('grpc.vlm.v1.VisionService/Encode');
  });

  it('names what it cannot read', () => {
    expect(() => parseTraceText('{"hello": 1}')).toThrow(/unrecognised trace JSON/);
    const line = fixture('pipeline.jsonl').split('\n')[0]!;
    expect(() => parseTraceText(`${line}\nnot json`)).toThrow(/line 2 is not JSON/);
    expect(() => parseTraceText(`${line}\n{"traceId":"x"}`)).toThrow(/line 2 is neither a span record/);
  });
});

describe('requests that failed, and traces missing their policy', () => {
  const MS = 1_000_000n;
  let next = 1;
  /** One request span of a trace starting at `startMs`, `ms` long, with the given policy and status. */
  const request = (startMs: number, ms: number, policy: { method?: string; budget?: string }, failed = false): SpanRecord => {
    const id = next++;
    const at = (t: number) => String(1_700_000_000_000_000_000n + BigInt(Math.round(t * 1000)) * (MS / 1000n));
    return {
      traceId: id.toString(16).padStart(32, '0'),
      spanId: id.toString(16).padStart(16, '0'),
      parentSpanId: '',
      name: 'vlm.request',
      service: 'vlm-language',
      kind: 'SERVER',
      startTimeUnixNano: at(startMs),
      endTimeUnixNano: at(startMs + ms),
      attributes: { ...(policy.method ? { 'vlm.reduction.method': policy.method } : {}), ...(policy.budget ? { 'vlm.reduction.budget': policy.budget } : {}), ...(failed ? { 'rpc.grpc.status_code': 9 } : {}) },
      events: [],
      status: { code: failed ? 'ERROR' : 'UNSET' },
    };
  };

  it('lists a failed request but leaves it out of the end-to-end times and the groups, and says how many', () => {
    const spans = [request(0, 100, { method: 'ficoco-vl', budget: '25%' }), request(200, 100, { method: 'ficoco-vl', budget: '25%' }), request(400, 2, { method: 'ficoco-vl', budget: '25%' }, true)];
    const { report, trees } = analyseTraces(spans);
    expect(report.traces.map((t) => t.ok)).toEqual([true, true, false]);
    expect(report.failedTraces).toBe(1);
    expect(report.endToEnd).toMatchObject({ count: 2, p50: 100, mean: 100 });
    expect(report.groups).toEqual([expect.objectContaining({ method: 'ficoco-vl', budget: '25%', traces: 2, endToEnd: expect.objectContaining({ p50: 100 }) })]);
    expect(formatReport(report)).toMatch(/^3 traces \(1 failed, left out of every figure of time\)/);
    expect(renderHtml(report, trees[0])).toMatch(/3 traces \(1 failed, left out of every figure of time\)/);
    // Nor in the stages: the failed request's 2 ms are not in the request span's latency or its share.
    expect(report.stages[0]).toMatchObject({ key: 'vlm-language vlm.request', spans: 2, share: 1 });
  });

  it('labels a trace without policy attributes unknown, not as an unreduced request', () => {
    const { report } = analyseTraces([request(0, 10, {})]);
    expect(report.groups.map((g) => `${g.method}@${g.budget}`)).toEqual(['unknown@unknown']);
  });

  it('orders traces by when they started and budgets absolute, then percentages, then default', () => {
    const budgets = ['default', '50%', '192', '10%', '64', '25%'];
    const spans = budgets.map((budget, i) => request(1000 - i * 100, 5, { method: 'm', budget }));
    const { report } = analyseTraces(spans);
    expect(report.traces.map((t) => t.budget)).toEqual([...budgets].reverse());
    expect(report.groups.map((g) => g.budget)).toEqual(['64', '192', '10%', '25%', '50%', 'default']);
  });
});

describe('a trace missing a span', () => {
  it('summarises the spans left without their parent but does not share them out on top of the root\'s time', () => {
    const { spans } = parseTraceText(fixture('pipeline.jsonl'));
    const selfSum = (r: TraceReport) => r.stages.reduce((sum, s) => sum + s.selfShare, 0);
    const whole = analyseTraces(spans).report;
    // The Encode client spans dropped: vision's server span and all below it become a second root.
    const dropped = analyseTraces(spans.filter((s) => !(s.kind === 'CLIENT' && s.service === 'vlm-language'))).report;
    expect(dropped.warnings.length).toBeGreaterThan(0);
    expect(selfSum(dropped)).toBeLessThanOrEqual(selfSum(whole) + 1e-9);
    for (const s of dropped.stages.filter((x) => x.service === 'vlm-vision')) {
      expect(s.share).toBe(0);
      expect(s.latency.count).toBeGreaterThan(0); // still summarised
    }
  });
});
