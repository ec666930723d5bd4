/**
 * Start-up as Kubernetes' probes see it (services/common/lifecycle.ts): once the model is loaded the
 * service listens, and both its port and the plaintext health port answer NOT_SERVING until the
 * warm-up has passed, so no request reaches a replica that has not run the model end to end once; a
 * replica whose warm-up fails never serves and lets go of its ports and workers.
 */
import { credentials, Metadata, status as GrpcCode } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { GrpcServer } from '../services/common/grpc-server';
import { startInferenceBackend } from '../services/common/inference-backend';
import { serve } from '../services/common/lifecycle';
import { serverStream, unary } from '../services/common/server-stream';
import { VisionServiceClient, VisionServiceService } from '../gen/vlm/v1/vision_service';
import { freePort } from '../cli/free-port';
import { collect, eventually, healthStatus } from './service-helpers';
import { pairConfig, recordingLogger, type LogLine } from './reliability-helpers';

async function startingService(warmUp: () => Promise<void>, host = '127.0.0.1') {
  const lines: LogLine[] = [];
  const log = recordingLogger(lines, 'vision');
  const base = pairConfig({ healthPort: await freePort() });
  const config = { ...base, services: { ...base.services, host } };
  const backend = await startInferenceBackend(config, log, 'vision');
  const deps = { log, defaultDeadlineMs: 30_000 };
  const server = new GrpcServer({
    serviceName: 'vlm.v1.VisionService',
    definition: VisionServiceService,
    // Never reached while NOT_SERVING is all a probe sees; answers if a client calls anyway.
    implementation: { encode: serverStream(async function* () {}, deps), getModelInfo: unary(async () => ({ model: undefined }), deps) },
    protoFiles: ['vlm/v1/vision_service.proto'],
    log,
    maxReceiveMessageBytes: 1 << 20,
    maxSendMessageBytes: 1 << 20,
    auth: null,
    shutdownGraceMs: 1000,
  });
  const port = await freePort();
  return { lines, backend, healthAddress: `127.0.0.1:${config.services.healthPort}`, address: `127.0.0.1:${port}`, started: serve(server, backend, config, port, warmUp, log) };
}

describe('a service starting up', () => {
  it('answers NOT_SERVING on its port and its health port through the warm-up, and SERVING once it has passed', async () => {
    let pass: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (pass = resolve));
    let warmed = false;
    const s = await startingService(async () => {
      await gate;
      warmed = true;
    });
    await eventually(async () => (await healthStatus(s.healthAddress).catch(() => '')) !== '', 10_000, 20);
    expect(await healthStatus(s.healthAddress)).toBe('NOT_SERVING');
    expect(await healthStatus(s.address)).toBe('NOT_SERVING');
    expect(await healthStatus(s.address, 'vlm.v1.VisionService')).toBe('NOT_SERVING');
    pass();
    const service = await s.started;
    try {
      expect(warmed).toBe(true);
      expect(await healthStatus(s.healthAddress)).toBe('SERVING');
      expect(await healthStatus(s.address, 'vlm.v1.VisionService')).toBe('SERVING');
      expect(s.lines.map((l) => l.msg)).toEqual(expect.arrayContaining(['plaintext health checks', 'warm-up passed', 'serving']));
    } finally {
      await service.stop();
    }
  }, 30_000);

  it('warns when it listens beyond this host without authentication, and not on loopback', async () => {
    const warning = 'listening beyond this host without authentication: anyone who reaches the port may call it (set VLM_AUTH_TOKEN_FILE, or --host 127.0.0.1)';
    for (const [host, warned] of [['0.0.0.0', true], ['127.0.0.1', false]] as const) {
      const s = await startingService(async () => undefined, host);
      const service = await s.started;
      await service.stop();
      expect(s.lines.some((l) => l.level === 'warn' && l.msg === warning), host).toBe(warned);
    }
  }, 30_000);

  it('never serves when its warm-up fails: start-up rejects, the workers stop and both ports close', async () => {
    const s = await startingService(async () => {
      throw new Error('the warm-up request failed');
    });
    await expect(s.started).rejects.toThrow('the warm-up request failed');
    expect(s.lines.some((l) => l.level === 'error' && l.msg === 'warm-up failed; not serving')).toBe(true);
    expect(s.lines.some((l) => l.msg === 'serving')).toBe(false);
    expect(s.backend.pool.stats.workers).toBe(0);
    await expect(healthStatus(s.healthAddress)).rejects.toThrow();
    const client = new VisionServiceClient(s.address, credentials.createInsecure());
    try {
      const outcome = await collect(client.encode({ image: Buffer.from([1]), policy: undefined, limits: undefined }, new Metadata(), { deadline: Date.now() + 2000 }));
      expect(outcome.error?.code).toBe(GrpcCode.UNAVAILABLE); // nothing listens
    } finally {
      client.close();
    }
  }, 30_000);
});
