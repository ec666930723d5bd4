import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EVENT_TOKEN, MetricName, SPAN_DOCS, SpanName } from '../shared/telemetry/names';
import { ask, request, shapesImage } from './reliability-helpers';
import { startTracedPair, type TracedPair } from './trace-helpers';

const doc = readFileSync(join(__dirname, '..', 'docs', 'telemetry.md'), 'utf8');
const tableRows = doc.split('\n').filter((l) => l.startsWith('| `'));

/** docs/telemetry.md is the README's span and metric table: it must name everything we emit. */
describe('docs/telemetry.md', () => {
  it.each(Object.values(SpanName))('has a span table row for %s', (name) => {
    expect(tableRows.some((row) => row.startsWith(`| \`${name}\``))).toBe(true);
  });

  it('documents the per-token event', () => {
    expect(doc).toContain(`\`${EVENT_TOKEN}\``);
  });

  it.each(Object.values(MetricName))('has a metric row for %s (Prometheus spelling; counters end in _total)', (name) => {
    const counters: readonly string[] = [MetricName.AuthCalls];
    const prometheus = `${name.replace(/\./g, '_')}${counters.includes(name) ? '_total' : ''}`;
    expect(tableRows.some((row) => row.startsWith(`| \`${prometheus}\``))).toBe(true);
  });
});

/**
 * The table is a promise about real spans: a Generate through the service pair (in this process, its
 * spans in memory) must set every attribute SPAN_DOCS lists on the span it lists it for, and the
 * docs' row must name them.
 */
describe('the spans of a real Generate carry the attributes the table lists', () => {
  let pair: TracedPair;
  beforeAll(async () => {
    pair = await startTracedPair();
    const outcome = await ask(pair.client, request(await shapesImage(), { policy: { preset: 'ficoco-vl', budget: { $case: 'budgetPercent', budgetPercent: 50 } } }));
    expect(outcome.error).toBeNull();
  });
  afterAll(() => pair?.stop());

  it.each(SPAN_DOCS.map((d) => [d.name, d.attributes] as const))('%s has %j', (name, attributes) => {
    const spans = pair.spans().filter((s) => s.name === name);
    expect(spans.length, name).toBeGreaterThan(0);
    const missing = attributes.filter((key) => !spans.some((s) => s.attributes[key] !== undefined));
    expect(missing).toEqual([]);
  });

  it.each(SPAN_DOCS.map((d) => [d.name, d.attributes] as const))("the docs' row for %s names %j", (name, attributes) => {
    const row = tableRows.find((r) => r.startsWith(`| \`${name}\``))!;
    expect(attributes.filter((key) => !row.includes(`\`${key}\``))).toEqual([]);
  });
});
