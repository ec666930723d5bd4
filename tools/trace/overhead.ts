/**
 * Tracing overhead, measured end to end and per span.
 *
 *   node --import tsx tools/trace/overhead.ts [--model DIR] [--requests 40] [--rounds 2] [--max-tokens 8] [--sampler always_off]
 *
 * End to end: `vlm serve all` (two processes) is started alternately without telemetry and with the
 * SDK exporting every span over OTLP/HTTP (protobuf) to an in-process receiver; the same Generate
 * (ficoco-vl at 50 %) is sent sequentially and the client-side latency compared (ABAB rounds, so
 * drift in a shared machine hits both). Micro: the cost of one withSpan with the SDK, while recording
 * in a worker, and of one per-token event, against the no-op API.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, BatchSpanProcessor, type ReadableSpan, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import { credentials, Metadata } from '@grpc/grpc-js';
import sharp from 'sharp';
import { LanguageServiceClient } from '../../gen/vlm/v1/language_service';
import { ReductionPolicy, SamplingParams } from '../../gen/vlm/v1/common';
import { freePort } from '../../cli/free-port';
import { healthOf } from '../../services/common/health-client';
import { startTraceReceiver } from '../../shared/telemetry/collector';
import { summarise, type Summary } from '../../shared/telemetry/analysis';
import { SpanRecorder } from '../../shared/telemetry/span-recorder';
import { withSpan } from '../../shared/telemetry/with-span';

const ROOT = path.resolve(__dirname, '..', '..');
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: path.join(ROOT, 'test/fixtures/random-bundle') },
    requests: { type: 'string', default: '40' },
    rounds: { type: 'string', default: '2' },
    'max-tokens': { type: 'string', default: '8' },
    /** OTEL_TRACES_SAMPLER of the traced runs (e.g. always_off: SDK and instrumentation, no spans recorded). */
    sampler: { type: 'string', default: 'parentbased_always_on' },
  },
});

async function until(check: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('services did not become healthy');
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** CPU milliseconds (user + system) used so far by the children of `pid` (the two services). */
function childrenCpuMs(pid: number): number {
  const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  let ticks = 0;
  for (const child of children) {
    const fields = readFileSync(`/proc/${child}/stat`, 'utf8').split(') ')[1]!.split(' ');
    ticks += Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15 of stat)
  }
  return ticks * 10; // USER_HZ = 100 on Linux
}

const cpuPerRequest: Record<'off' | 'on', number[]> = { off: [], on: [] };

async function endToEnd(traced: boolean, otlpUrl: string, image: Buffer): Promise<number[]> {
  const [vp, lp] = [await freePort(), await freePort()];
  const env: NodeJS.ProcessEnv = { ...process.env, VLM_LOG_LEVEL: 'error', OTEL_EXPORTER_OTLP_ENDPOINT: '', OTEL_TRACES_EXPORTER: '', OTEL_METRICS_EXPORTER: '' };
  if (traced) Object.assign(env, { OTEL_EXPORTER_OTLP_ENDPOINT: otlpUrl, OTEL_METRICS_EXPORTER: 'none', OTEL_TRACES_SAMPLER: values.sampler });
  const server: ChildProcess = spawn(process.execPath, [path.join(ROOT, 'bin/vlm.js'), 'serve', 'all', '--model', values.model!, '--host', '127.0.0.1', '--vision-port', String(vp), '--language-port', String(lp), '--metrics-port', '0'], { env, stdio: 'ignore' });
  try {
    const ok = async (a: string) => (await healthOf(a, 500).catch(() => '')) === 'SERVING';
    await until(async () => (await ok(`127.0.0.1:${lp}`)) && (await ok(`127.0.0.1:${vp}`)), 90_000);
    const client = new LanguageServiceClient(`127.0.0.1:${lp}`, credentials.createInsecure());
    const once = () =>
      new Promise<number>((resolve, reject) => {
        const t0 = performance.now();
        const call = client.generate(
          {
            image,
            prompt: 'What shape is it?',
            sampling: SamplingParams.fromPartial({ maxTokens: Number(values['max-tokens']), temperature: 0 }),
            policy: ReductionPolicy.fromPartial({ preset: 'ficoco-vl', budget: { $case: 'budgetPercent', budgetPercent: 50 } }),
            limits: undefined,
          },
          new Metadata(),
          { deadline: Date.now() + 60_000 },
        );
        call.on('data', () => undefined);
        call.on('error', reject);
        call.on('end', () => resolve(performance.now() - t0));
      });
    for (let i = 0; i < 5; i++) await once();
    const out: number[] = [];
    const cpu0 = childrenCpuMs(server.pid!);
    for (let i = 0; i < Number(values.requests); i++) out.push(await once());
    cpuPerRequest[traced ? 'on' : 'off'].push((childrenCpuMs(server.pid!) - cpu0) / out.length);
    client.close();
    return out;
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
}

/** Microseconds per call of fn, best of 5 batches. */
async function perCall(n: number, fn: () => Promise<unknown>): Promise<number> {
  let best = Infinity;
  for (let b = 0; b < 5; b++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await fn();
    best = Math.min(best, ((performance.now() - t0) * 1000) / n);
  }
  return best;
}

async function micro(): Promise<Record<string, number>> {
  const n = 20_000;
  const empty = async () => withSpan('vlm.prefill.layer', { 'vlm.layer': 1 }, () => 0);
  const noop = await perCall(n, empty);
  const recorder = new SpanRecorder();
  const recording = await recorder.run(() => perCall(n, empty));
  // The SDK with a batch processor and an exporter that drops: span creation and processing only.
  const dropped: SpanExporter = { export: (_s: ReadableSpan[], cb) => cb({ code: 0 }), shutdown: async () => undefined };
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  const provider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(dropped, { maxQueueSize: 100_000 })] });
  trace.setGlobalTracerProvider(provider);
  const sdk = await perCall(n, empty);
  const tracer = trace.getTracer('bench');
  const span = tracer.startSpan('vlm.decode');
  const t0 = performance.now();
  for (let i = 0; i < n; i++) span.addEvent('vlm.token', { 'vlm.token.index': i, 'vlm.token.id': 42 });
  const event = ((performance.now() - t0) * 1000) / n;
  span.end();
  await provider.shutdown();
  return { 'withSpan, no SDK (no-op API)': noop, 'withSpan, recording in a worker': recording, 'withSpan, SDK + batch processor': sdk, 'span.addEvent per token (SDK)': event };
}

async function main(): Promise<void> {
  let spans = 0;
  const receiver = await startTraceReceiver({ port: 0, onSpans: (s) => (spans += s.length) });
  const image = await sharp({ create: { width: 336, height: 336, channels: 3, background: '#3a7' } }).png().toBuffer();
  const runs: Record<'off' | 'on', number[]> = { off: [], on: [] };
  for (let r = 0; r < Number(values.rounds); r++) {
    runs.off.push(...(await endToEnd(false, receiver.url, image)));
    runs.on.push(...(await endToEnd(true, receiver.url, image)));
  }
  await receiver.close();
  const off: Summary = summarise(runs.off);
  const on: Summary = summarise(runs.on);
  const row = (name: string, s: Summary) => `| ${name} | ${s.count} | ${s.p50.toFixed(1)} | ${s.mean.toFixed(1)} | ${s.p95.toFixed(1)} |`;
  console.log('| telemetry | requests | p50 ms | mean ms | p95 ms |\n|---|---|---|---|---|');
  console.log(row('off (no OTEL_* set: no SDK)', off));
  console.log(row(`on (OTLP http/protobuf, sampler ${values.sampler})`, on));
  const cpu = (k: 'off' | 'on') => cpuPerRequest[k].reduce((a, b) => a + b, 0) / cpuPerRequest[k].length;
  console.log(`\nservice CPU per request (both processes, user+system): off ${cpu('off').toFixed(1)} ms, on ${cpu('on').toFixed(1)} ms`);
  console.log(`overhead: p50 ${(((on.p50 - off.p50) / off.p50) * 100).toFixed(1)} %, mean ${(((on.mean - off.mean) / off.mean) * 100).toFixed(1)} %; spans exported per request: ${(spans / (on.count + 5 * Number(values.rounds))).toFixed(1)}\n`);
  console.log('| operation | µs per call |\n|---|---|');
  for (const [k, v] of Object.entries(await micro())) console.log(`| ${k} | ${v.toFixed(2)} |`);
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
