import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { traceReportMain } from '../cli/trace-report';

/** The report page rendered by `vlm trace report --html` and opened in Debian's headless Chromium. */
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const FIXTURE = join(__dirname, 'fixtures', 'traces', 'pipeline.jsonl');

describe('vlm trace report --html in a browser', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trace-html-'));
  let browser: Browser;
  beforeAll(async () => {
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
  });
  afterAll(async () => {
    await browser?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function render(extra: string[]): Promise<string> {
    const out = join(dir, `report-${extra.join('-') || 'default'}.html`);
    const write = process.stdout.write;
    process.stdout.write = (() => true) as typeof process.stdout.write;
    try {
      expect(await traceReportMain([FIXTURE, '--html', out, ...extra])).toBe(0);
    } finally {
      process.stdout.write = write;
    }
    return out;
  }

  it('is self-contained: no scripts, links or remote URLs', async () => {
    const html = readFileSync(await render([]), 'utf8');
    expect(html).not.toMatch(/<script|<link|src=|https?:\/\/(?!www\.w3\.org)/i);
  });

  it('draws the waterfall of the slowest trace and the breakdown chart', async () => {
    const page = await browser.newPage();
    const requests: string[] = [];
    page.on('request', (r) => requests.push(r.url()));
    await page.goto(pathToFileURL(await render([])).href);
    expect(requests.filter((u) => !u.startsWith('file:'))).toEqual([]);

    await expect(page.locator('h2', { hasText: 'Waterfall' }).textContent()).resolves.toContain('000000000000000000000000abc00004');
    const waterfall = await page.locator('#waterfall').boundingBox();
    expect(waterfall!.width).toBeGreaterThan(500);
    expect(waterfall!.height).toBeGreaterThan(100);
    // twelve spans in the fixture's trace, each a bar with real width, the root spanning the most
    const bars = page.locator('#waterfall rect.span-bar');
    expect(await bars.count()).toBe(12);
    const widths = await Promise.all((await bars.all()).map(async (b) => (await b.boundingBox())!.width));
    expect(Math.min(...widths)).toBeGreaterThan(0);
    expect(widths[0]).toBe(Math.max(...widths));
    // decode (60 ms in that trace) carries one tick per token event
    expect(await page.locator('#waterfall line.event').count()).toBe(6);

    // the breakdown: one stacked bar for all traces and one per method/budget group
    const groups = page.locator('#breakdown g.bar');
    expect(await groups.count()).toBe(3);
    for (const g of await groups.all()) {
      const box = await g.boundingBox();
      expect(box!.width).toBeGreaterThan(50);
      expect(await g.locator('rect.segment').count()).toBeGreaterThan(5);
    }
    await expect(page.locator('#stages tr').count()).resolves.toBe(1 + 11);
    await page.close();
  });

  it('shows the trace asked for with --trace', async () => {
    const page = await browser.newPage();
    await page.goto(pathToFileURL(await render(['--trace', '000000000000000000000000abc00001'])).href);
    await expect(page.locator('h2', { hasText: 'Waterfall' }).textContent()).resolves.toContain('abc00001');
    // trace 1 decodes for 40 ms: four tokens
    expect(await page.locator('#waterfall line.event').count()).toBe(4);
    await page.close();
  });

  it('names an unknown trace id', async () => {
    await expect(traceReportMain([FIXTURE, '--html', join(dir, 'x.html'), '--trace', 'ffff'])).rejects.toThrow(/trace ffff is not in/);
    writeFileSync(join(dir, 'empty.jsonl'), '');
    await expect(traceReportMain([join(dir, 'empty.jsonl')])).rejects.toThrow(/holds no spans/);
  });
});
