import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EVENT_TOKEN, MetricName, SpanName } from '../shared/telemetry/names';

/** docs/telemetry.md is the README's span and metric table: it must name everything we emit. */
describe('docs/telemetry.md', () => {
  const doc = readFileSync(join(__dirname, '..', 'docs', 'telemetry.md'), 'utf8');
  const tableRows = doc.split('\n').filter((l) => l.startsWith('| `'));

  it.each(Object.values(SpanName))('has a span table row for %s', (name) => {
    expect(tableRows.some((row) => row.startsWith(`| \`${name}\``))).toBe(true);
  });

  it('documents the per-token event', () => {
    expect(doc).toContain(`\`${EVENT_TOKEN}\``);
  });

  it.each(Object.values(MetricName))('has a metric row for %s (Prometheus spelling)', (name) => {
    expect(tableRows.some((row) => row.startsWith(`| \`${name.replace(/\./g, '_')}\``))).toBe(true);
  });
});
