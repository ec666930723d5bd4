/**
 * Must show: one Generate through both services, run as two processes (`vlm serve all`) with
 * OTEL_EXPORTER_OTLP_ENDPOINT pointing at a collector on loopback, gives ONE trace in the caller's
 * trace (it sends `traceparent`) with linked client and server spans of both services and every
 * stage span. Uses the random-weight bundle (three encoder layers, four decoder layers).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { credentials, Metadata } from '@grpc/grpc-js';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LanguageServiceClient, type GenerateResponse } from '../gen/vlm/v1/language_service';
import { ReductionPolicy, SamplingParams } from '../gen/vlm/v1/common';
import { analyseTraces, type SpanRecord } from '../shared/telemetry/analysis';
import { startTraceReceiver, type TraceReceiver } from '../shared/telemetry/collector';
import { collect, eventually, servingPort, stopServeAll } from './service-helpers';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'bin', 'vlm.js');
const BUNDLE = path.join(ROOT, 'test/fixtures/random-bundle');

describe('one trace across vlm-language and vlm-vision (two processes)', () => {
  let receiver: TraceReceiver;
  const spans: SpanRecord[] = [];
  let server: ChildProcess;
  let stderr = '';
  let target = '';
  const traceId = randomBytes(16).toString('hex');
  const callerSpanId = randomBytes(8).toString('hex');
  let answerMessages: GenerateResponse[] = [];

  beforeAll(async () => {
    receiver = await startTraceReceiver({ port: 0, onSpans: (s) => spans.push(...s) });
    const env = { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_METRICS_EXPORTER: 'none', OTEL_BSP_SCHEDULE_DELAY: '100' };
    // Ports of the kernel's choosing, read from the services' "serving" lines (language starts once vision serves).
    server = spawn(process.execPath, [BIN, 'serve', 'all', '--model', BUNDLE, '--host', '127.0.0.1', '--vision-port', '0', '--language-port', '0', '--metrics-port', '0', '--log-level', 'info'], { cwd: ROOT, env, stdio: ['ignore', 'ignore', 'pipe'] });
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await eventually(() => servingPort(stderr, 'language') !== undefined, 90_000, 100);
    target = `127.0.0.1:${servingPort(stderr, 'language')}`;

    const client = new LanguageServiceClient(target, credentials.createInsecure());
    const md = new Metadata();
    md.set('traceparent', `00-${traceId}-${callerSpanId}-01`);
    const image = await sharp({ create: { width: 48, height: 40, channels: 3, background: '#3a7' } }).png().toBuffer();
    const call = client.generate(
      {
        image,
        prompt: 'What shape is it?',
        sampling: SamplingParams.fromPartial({ maxTokens: 4, temperature: 0 }),
        policy: ReductionPolicy.fromPartial({ preset: 'ficoco-vl', budget: { $case: 'budgetPercent', budgetPercent: 50 } }),
        limits: undefined,
      },
      md,
      { deadline: Date.now() + 60_000 },
    );
    const { messages, error } = await collect(call);
    client.close();
    expect(error, stderr).toBeNull();
    answerMessages = messages;
    // SIGTERM: both services drain, then flush their spans before exiting.
    const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    expect(await exited).toBe(0);
  });

  afterAll(async () => {
    await stopServeAll(server); // only if the start-up above failed before its SIGTERM
    await receiver?.close();
  });

  const inTrace = () => spans.filter((s) => s.traceId === traceId);
  const one = (service: string, name: string) => {
    const found = inTrace().filter((s) => s.service === service && s.name === name);
    expect(found, `${service} ${name} in ${inTrace().map((s) => `${s.service}:${s.name}`).join(', ')}`).toHaveLength(1);
    return found[0]!;
  };
  const all = (service: string, name: string) => inTrace().filter((s) => s.service === service && s.name === name);

  it('answered, and exported every span of the request into the caller\'s trace', () => {
    expect(answerMessages.at(-1)?.part?.$case).toBe('final');
    expect(inTrace().length).toBeGreaterThan(20);
    // warm-up and health checks are not part of it; everything of this request is
    expect(new Set(inTrace().map((s) => s.service))).toEqual(new Set(['vlm-language', 'vlm-vision']));
  });

  it('links caller -> language server -> request -> vision client -> vision server -> request', () => {
    const languageServer = one('vlm-language', 'grpc.vlm.v1.LanguageService/Generate');
    expect(languageServer).toMatchObject({ kind: 'SERVER', parentSpanId: callerSpanId });
    const languageRequest = one('vlm-language', 'vlm.request');
    expect(languageRequest.parentSpanId).toBe(languageServer.spanId);
    const visionClient = one('vlm-language', 'grpc.vlm.v1.VisionService/Encode');
    expect(visionClient).toMatchObject({ kind: 'CLIENT', parentSpanId: languageRequest.spanId });
    const visionServer = one('vlm-vision', 'grpc.vlm.v1.VisionService/Encode');
    expect(visionServer).toMatchObject({ kind: 'SERVER', parentSpanId: visionClient.spanId });
    const visionRequest = one('vlm-vision', 'vlm.request');
    expect(visionRequest.parentSpanId).toBe(visionServer.spanId);
    expect(visionRequest.attributes).toMatchObject({ 'vlm.reduction.method': 'ficoco-vl', 'vlm.reduction.budget': '50%', 'vlm.provider': 'cpu', 'vlm.model.id': expect.any(String) });
    expect(languageRequest.attributes).toMatchObject({ 'gen_ai.operation.name': 'chat', 'vlm.reduction.method': 'ficoco-vl', 'gen_ai.usage.input_tokens': expect.any(Number), 'gen_ai.usage.output_tokens': expect.any(Number) });
  });

  it('has every vision stage: queue, preprocess, embed with each layer and reduction step, projection, stream send', () => {
    const request = one('vlm-vision', 'vlm.request');
    for (const name of ['vlm.queue', 'vlm.preprocess', 'vlm.vision.embed', 'vlm.project', 'vlm.stream.send']) {
      expect(one('vlm-vision', name).parentSpanId, name).toBe(request.spanId);
    }
    const embed = one('vlm-vision', 'vlm.vision.embed');
    const layers = all('vlm-vision', 'vlm.vision.layer');
    expect(layers.map((l) => l.attributes['vlm.layer']).sort()).toEqual([0, 1, 2]);
    expect(layers.every((l) => l.parentSpanId === embed.spanId)).toBe(true);
    const reduce = all('vlm-vision', 'vlm.reduce');
    expect(reduce.length).toBeGreaterThan(0);
    expect(reduce.every((r) => layers.some((l) => l.spanId === r.parentSpanId))).toBe(true);
    expect(Number(reduce[0]!.attributes['vlm.tokens.out'])).toBeLessThan(Number(reduce[0]!.attributes['vlm.tokens.in']));
    expect(Number(one('vlm-vision', 'vlm.stream.send').attributes['vlm.bytes'])).toBeGreaterThan(0);
  });

  it('has every language stage: stream receive, queue, prefill with layers and reduction steps, decode with token events', () => {
    const request = one('vlm-language', 'vlm.request');
    for (const name of ['vlm.stream.receive', 'vlm.queue', 'vlm.prefill', 'vlm.decode']) {
      expect(one('vlm-language', name).parentSpanId, name).toBe(request.spanId);
    }
    const receive = one('vlm-language', 'vlm.stream.receive');
    expect(receive.attributes['vlm.bytes']).toBe(one('vlm-vision', 'vlm.stream.send').attributes['vlm.bytes']);
    const prefill = one('vlm-language', 'vlm.prefill');
    const layers = all('vlm-language', 'vlm.prefill.layer');
    expect(layers).toHaveLength(4);
    expect(layers.every((l) => l.parentSpanId === prefill.spanId)).toBe(true);
    expect(all('vlm-language', 'vlm.reduce').some((r) => layers.some((l) => l.spanId === r.parentSpanId))).toBe(true);
    const decode = one('vlm-language', 'vlm.decode');
    const tokens = decode.events.filter((e) => e.name === 'vlm.token');
    expect(tokens).toHaveLength(Number(decode.attributes['vlm.tokens.out']));
    // Each token's index, not its id: ids decode back to the answer, and content capture is opt-in.
    expect(tokens.map((e) => e.attributes)).toEqual(tokens.map((_, i) => ({ 'vlm.token.index': i })));
    // the worker's spans keep their order on the time axis (every span is on the timeOrigin +
    // performance.now() clock, shared/telemetry/span-clock.ts; 2 ms allows for two threads' readings of it)
    const slack = 2_000_000n;
    expect(BigInt(prefill.endTimeUnixNano) <= BigInt(decode.startTimeUnixNano) + slack).toBe(true);
    expect(BigInt(receive.endTimeUnixNano) <= BigInt(prefill.startTimeUnixNano) + slack).toBe(true);
  });

  it('reads as one trace in the report, with the transfer measured and the method grouped', () => {
    const { report } = analyseTraces(inTrace());
    expect(report.traces).toHaveLength(1);
    expect(report.transfer.stream.count).toBe(1);
    expect(report.transfer.stream.p50).toBeGreaterThan(0);
    expect(report.groups.map((g) => [g.method, g.budget])).toEqual([['ficoco-vl', '50%']]);
  });
});
