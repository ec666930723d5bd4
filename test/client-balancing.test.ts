/**
 * A backend app's channel as docs/deploy.md configures it (backendChannelOptions) against a pool of
 * language pods: calls spread over every address the target resolves to, and a call one pod refuses
 * at its headers (its in-flight cap full) is answered by another, where a channel without those options
 * gets the refusal. Real services; two language replicas behind one target, as a headless Service gives.
 */
import { connect } from 'node:http2';
import { status as GrpcCode } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import { backendChannelOptions, languageClient } from '../services/language/client';
import type { RunningService } from '../services/common/lifecycle';
import { ask, pairConfig, recordingLogger, request, shapesImage, type LogLine } from './reliability-helpers';
import { eventually, partialMessage, rawCall } from './service-helpers';

describe('a backend app calling two language pods through one target', () => {
  let vision: RunningService;
  const replicas: { service: RunningService; lines: LogLine[] }[] = [];
  let target: string;

  beforeAll(async () => {
    vision = await startVisionService(pairConfig({}), { port: 0 });
    for (const name of ['a', 'b']) {
      const base = pairConfig({ visionTarget: vision.address });
      const lines: LogLine[] = [];
      const service = await startLanguageService({ ...base, rpc: { ...base.rpc, maxInFlightCalls: 1 } }, { port: 0, log: recordingLogger(lines, `language-${name}`) });
      replicas.push({ service, lines });
    }
    target = `ipv4:${replicas.map((r) => r.service.address).join(',')}`;
  });
  afterAll(async () => {
    for (const r of replicas) await r.service.stop();
    await vision.stop();
  });

  const answered = (r: { lines: LogLine[] }) => r.lines.filter((l) => l.msg === 'call' && l['method'] === '/vlm.v1.LanguageService/Generate' && l['code'] === 'OK').length;

  const refused = (r: { lines: LogLine[] }) => r.lines.filter((l) => l.msg === 'call' && l['code'] === 'RESOURCE_EXHAUSTED').length;

  it('spreads its calls over both pods, one connection each', async () => {
    const client = languageClient(target, null, backendChannelOptions());
    try {
      for (let i = 0; i < 6; i++) expect((await ask(client, request(await shapesImage(), { maxTokens: 2 }))).error).toBeNull();
    } finally {
      client.close();
    }
    // Not an even split: round-robin picks among the connections ready so far, and one is ready first.
    expect(replicas.map(answered).every((n) => n > 0)).toBe(true);
  });

  it('has a call refused by a full pod answered by the other; without the options the refusal reaches the app', async () => {
    // Pod a's one place is held by a call whose request never finishes arriving.
    const session = connect(`http://${replicas[0]!.service.address}`);
    rawCall(session, '/vlm.v1.LanguageService/Generate', { headers: { 'grpc-timeout': '60S' }, write: partialMessage(1000, 10) });
    await eventually(() => replicas[0]!.service.activeCalls() === 1);
    const balanced = languageClient(target, null, backendChannelOptions());
    const plain = languageClient(target, null, { 'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }) });
    try {
      const before = replicas.map(answered);
      const refusedBefore = refused(replicas[0]!);
      const outcomes = [];
      for (let i = 0; i < 6; i++) outcomes.push((await ask(balanced, request(await shapesImage(), { maxTokens: 2 }))).error);
      expect(outcomes).toEqual(new Array(6).fill(null));
      expect(replicas.map(answered)).toEqual([before[0], before[1]! + 6]);
      expect(refused(replicas[0]!)).toBeGreaterThan(refusedBefore); // pod a was tried, and refused

      const plainCodes = [];
      for (let i = 0; i < 6; i++) plainCodes.push((await ask(plain, request(await shapesImage(), { maxTokens: 2 }))).error?.code ?? GrpcCode.OK);
      expect(plainCodes).toContain(GrpcCode.RESOURCE_EXHAUSTED);
    } finally {
      balanced.close();
      plain.close();
      session.destroy();
    }
  });
});
