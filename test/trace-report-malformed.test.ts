import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { traceReportMain } from '../cli/trace-report';
import { VlmError } from '../shared/errors';
import { analyseTraces, parseTraceText, renderHtml, type SpanRecord } from '../shared/telemetry/analysis';

/**
 * `vlm trace report` on files no collector of ours writes: every bad record is refused with
 * INVALID_ARGUMENT naming the file, the line and the field; structurally odd traces (parent cycles,
 * duplicate span ids, very deep chains) are analysed with a warning; and nothing from a span reaches
 * the HTML page unescaped.
 */
const fixtureLine = readFileSync(join(__dirname, 'fixtures', 'traces', 'pipeline.jsonl'), 'utf8').split('\n')[0]!;
const good = JSON.parse(fixtureLine) as Record<string, unknown>;
const withFields = (patch: Record<string, unknown>) => JSON.stringify({ ...good, spanId: '00000000000000ff', ...patch });

function span(id: number, parent: number | undefined, startMs: number, endMs: number, extra: Partial<SpanRecord> = {}): SpanRecord {
  const ns = (ms: number) => String(1_700_000_000_000_000_000n + BigInt(Math.round(ms * 1000)) * 1000n);
  const hex = (n: number) => n.toString(16).padStart(16, '0');
  return {
    traceId: '0000000000000000000000000000c1c1',
    spanId: hex(id),
    parentSpanId: parent === undefined ? '' : hex(parent),
    name: `span-${id}`,
    service: 'vlm-language',
    kind: 'INTERNAL',
    startTimeUnixNano: ns(startMs),
    endTimeUnixNano: ns(endMs),
    attributes: {},
    events: [],
    status: { code: 'UNSET' },
    ...extra,
  };
}

describe('loading span lines', () => {
  it.each([
    ['a time that is not a number', { startTimeUnixNano: 'soon' }, /spans\.jsonl line 2: startTimeUnixNano: "soon" is not a non-negative whole number of nanoseconds/],
    ['a negative time', { endTimeUnixNano: '-5' }, /line 2: endTimeUnixNano: "-5" is not a non-negative whole number/],
    ['a missing end time', { endTimeUnixNano: undefined }, /line 2: endTimeUnixNano: missing/],
    ['an end before the start', { endTimeUnixNano: '1' }, /line 2: ends \(1\) before it starts/],
    ['a trace id that is not hex', { traceId: 'xyz' }, /line 2: traceId: "xyz" is not 32 hex digits/],
    ['a span id that is a number', { spanId: 5 }, /line 2: spanId: 5 is not 16 hex digits/],
    ['a parent id that is not hex', { parentSpanId: 'nope' }, /line 2: parentSpanId: "nope" is neither empty nor 16 hex digits/],
    ['a missing name', { name: undefined }, /line 2: name: missing/],
    ['a service that is not text', { service: ['a'] }, /line 2: service: expected a string/],
    ['an unknown kind', { kind: 'SIDEWAYS' }, /line 2: kind: "SIDEWAYS" is not one of INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER, UNSPECIFIED/],
    ['attributes that are a list', { attributes: [1] }, /line 2: attributes: expected an object/],
    ['an attribute that is an object', { attributes: { a: { b: 1 } } }, /line 2: attributes\.a: expected a string, number, boolean or a list of them/],
    ['events that are not a list', { events: 'x' }, /line 2: events: expected an array/],
    ['an event without a time', { events: [{ name: 'vlm.token', attributes: {} }] }, /line 2: events\[0\]\.timeUnixNano: missing/],
    ['an unknown status', { status: { code: 'BROKEN' } }, /line 2: status\.code: "BROKEN" is not one of UNSET, OK, ERROR/],
  ])('refuses %s, naming file, line and field', (_what, patch, message) => {
    const text = `${fixtureLine}\n${withFields(patch)}\n`;
    let thrown: unknown;
    try {
      parseTraceText(text, 'spans.jsonl');
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(VlmError);
    expect((thrown as VlmError).code).toBe('INVALID_ARGUMENT');
    expect((thrown as VlmError).message).toMatch(message);
  });

  it('refuses malformed OTLP and Jaeger documents with the path of the bad field', () => {
    expect(() => parseTraceText('{"resourceSpans":[{"scopeSpans":5}]}', 'tempo.json')).toThrow(/tempo\.json: resourceSpans\[0\]\.scopeSpans: expected an array, got 5/);
    const otlpLine = JSON.stringify({ resourceSpans: [{ scopeSpans: [{ spans: [{ traceId: '5b8efff798038103d269b633813fc60c', spanId: 'eee19b7ec3c1b174', startTimeUnixNano: 'x', endTimeUnixNano: '1' }] }] }] });
    expect(() => parseTraceText(`${otlpLine}\n${otlpLine}`, 'export.jsonl')).toThrow(/export\.jsonl line 1: resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\]\.startTimeUnixNano: "x"/);
    const jaeger = { data: [{ traceID: 'abc', spans: [{ traceID: 'abc', spanID: '1', operationName: 'x', startTime: 'abc', duration: 5 }], processes: {} }] };
    expect(() => parseTraceText(JSON.stringify(jaeger), 'jaeger.json')).toThrow(/jaeger\.json: data\[0\]\.spans\[0\]\.startTime: "abc" is not a non-negative whole number of microseconds/);
    jaeger.data[0]!.spans[0]!.startTime = '1700000000000000';
    (jaeger.data[0]!.spans[0] as Record<string, unknown>).duration = -3;
    expect(() => parseTraceText(JSON.stringify(jaeger), 'jaeger.json')).toThrow(/data\[0\]\.spans\[0\]\.duration: -3/);
  });
});

describe('trace trees from odd span graphs', () => {
  it('breaks a parent cycle at its earliest span, which becomes the root, and warns', () => {
    const spans = [span(1, 2, 0, 10), span(2, 1, 2, 8), span(3, 2, 3, 4)];
    const { report, trees } = analyseTraces(spans);
    expect(trees).toHaveLength(1);
    expect(trees[0]!.root.span.spanId).toBe('0000000000000001');
    expect(trees[0]!.ordered.map((n) => [n.span.name, n.depth])).toEqual([['span-1', 0], ['span-2', 1], ['span-3', 2]]);
    expect(report.endToEnd.p50).toBe(10);
    expect(report.warnings).toEqual([expect.stringMatching(/trace 0+c1c1: spans 0+1, 0+2 are each other's ancestors; span 0+1 is taken as a root/)]);
  });

  it('keeps a span whose parent is missing as a root and measures the trace by the longest root', () => {
    const { report, trees } = analyseTraces([span(1, 99, 0, 10), span(2, 98, 1, 30), span(3, 2, 2, 4)]);
    expect(trees[0]!.root.span.spanId).toBe('0000000000000002');
    expect(report.traces[0]!.durationMs).toBe(29);
    expect(report.warnings).toEqual([expect.stringMatching(/trace 0+c1c1: 2 spans have no parent in the trace; measured by the longest, span-2/)]);
  });

  it('warns when the only root has a parent that is not in the trace (a lost parent)', () => {
    const { report, trees } = analyseTraces([span(2, 99, 0, 30), span(3, 2, 2, 4)]);
    expect(trees[0]!.root.span.spanId).toBe('0000000000000002');
    expect(report.warnings).toEqual([expect.stringMatching(/trace 0+c1c1: its root span-2 \(0+2\) has parent 0+63, which is not in the trace/)]);
    expect(analyseTraces([span(2, undefined, 0, 30), span(3, 2, 2, 4)]).report.warnings).toEqual([]);
  });

  it('keeps the first of two spans with one id and warns', () => {
    const { report, trees } = analyseTraces([span(1, undefined, 0, 10), span(1, undefined, 0, 50, { name: 'again' })]);
    expect(trees[0]!.ordered.map((n) => n.span.name)).toEqual(['span-1']);
    expect(report.warnings).toEqual([expect.stringMatching(/trace 0+c1c1: 1 span with a span id seen before ignored \(0+1\)/)]);
  });

  it('analyses a chain of 50 000 nested spans without running out of stack', () => {
    const chain = Array.from({ length: 50_000 }, (_, i) => span(i + 1, i === 0 ? undefined : i, i / 1000, 100 - i / 1000));
    const { report, trees } = analyseTraces(chain);
    expect(trees[0]!.ordered).toHaveLength(50_000);
    expect(trees[0]!.ordered.at(-1)!.depth).toBe(49_999);
    expect(report.endToEnd.p50).toBe(100);
    expect(renderHtml(report, trees[0]).length).toBeGreaterThan(0);
  });

  it('reports a file with a cycle through the CLI, with the warning on stderr', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'trace-malformed-'));
    try {
      const file = join(dir, 'cycle.jsonl');
      writeFileSync(file, [span(1, 2, 0, 10), span(2, 1, 2, 8)].map((s) => JSON.stringify(s)).join('\n'));
      const { code, stdout, stderr } = await captured(() => traceReportMain([file, '--json', '--html', join(dir, 'r.html')]));
      expect(code).toBe(0);
      expect((JSON.parse(stdout) as { traces: unknown[] }).traces).toHaveLength(1);
      expect(stderr).toMatch(/warning: trace 0+c1c1: spans .* are each other's ancestors/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bad file through the CLI as INVALID_ARGUMENT naming file, line and field', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'trace-malformed-'));
    try {
      const file = join(dir, 'bad.jsonl');
      writeFileSync(file, `${fixtureLine}\n${withFields({ startTimeUnixNano: 'later' })}\n`);
      await expect(traceReportMain([file])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining(`${file} line 2: startTimeUnixNano: "later"`) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the HTML page', () => {
  it('escapes everything a span brings into it', () => {
    const evil = '"><script>alert(1)</script><x y="';
    const spans = [
      span(1, undefined, 0, 10, { spanId: evil, name: evil, service: evil, attributes: { 'vlm.reduction.method': evil, 'vlm.reduction.budget': evil, 'vlm.layer': evil, [evil]: evil } }),
      span(2, undefined, 1, 5, { service: 'vlm-vision', traceId: evil }),
    ];
    const { report, trees } = analyseTraces(spans);
    for (const tree of trees) {
      const html = renderHtml(report, tree);
      expect(html).not.toContain('<script');
      expect(html).not.toContain('<x y=');
    }
    expect(renderHtml(report, trees.find((t) => t.root.span.spanId === evil))).toContain('data-span-id="&quot;&gt;&lt;script&gt;');
  });
});

async function captured(run: () => Promise<number>): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const out = process.stdout.write;
  const err = process.stderr.write;
  process.stdout.write = ((chunk: string) => ((stdout += chunk), true)) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string) => ((stderr += chunk), true)) as typeof process.stderr.write;
  try {
    return { code: await run(), stdout, stderr };
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
  }
}
