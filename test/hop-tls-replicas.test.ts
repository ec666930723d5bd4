/**
 * TLS to a list of vision replicas: with `--vision-target ip:port,ip:port`, grpc-js checks every
 * replica's certificate against the channel's authority, the first address. `--vision-server-name`
 * (VLM_VISION_SERVER_NAME) names what every vision certificate must carry instead, so replicas whose
 * certificates each carry their own address and one shared DNS name all serve through one channel.
 * Real certificates (openssl), real vision services on 127.0.0.1 and 127.0.0.2 (Linux routes all of
 * 127/8 to loopback), the language service started from config.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import type { RunningService } from '../services/common/lifecycle';
import { serviceCredentials } from '../services/common/credentials';
import { LanguageServiceClient } from '../gen/vlm/v1/language_service';
import { configFrom, type Config } from '../shared/config';
import { createLogger } from '../shared/log';
import { VlmError } from '../shared/errors';
import { ask, issueCertificate, makeCerts, pairConfig, recordingLogger, request, shapesImage, type LogLine } from './reliability-helpers';

const NAME = 'vision.vlm.test';

/** A CA and, per replica, a server certificate for its own IP and the shared name (as a per-pod certificate would be). */
function makeReplicaCerts(dir: string, ips: readonly string[]): { ca: string; replicas: Array<{ cert: string; key: string }> } {
  const { caCert } = makeCerts(dir, 'hop-test-ca');
  const replicas = ips.map((ip, i) => issueCertificate(dir, `vision-${i}`, `vision-${i}`, 'serverAuth', `IP:${ip},DNS:${NAME}`));
  return { ca: caCert, replicas };
}

function onHost(config: Config, host: string): Config {
  return { ...config, services: { ...config.services, host } };
}

describe('TLS over a list of vision replica IPs', () => {
  const IPS = ['127.0.0.1', '127.0.0.2'] as const;
  let dir: string;
  let ca: string;
  let target: string;
  const replicas: RunningService[] = [];
  /** Per replica: its log lines (the access line of every Encode it served). */
  const lines: LogLine[][] = [[], []];
  let image: Buffer;

  const encodesServed = (i: number): number => lines[i]!.filter((l) => l['msg'] === 'call' && String(l['method']).endsWith('/Encode')).length;

  /** Sends Generates through a language service with this TLS config until both replicas served one (or `max` calls). */
  async function spread(tls: Partial<Config['tls']>, max: number): Promise<{ served: number[]; failures: number }> {
    const before = [encodesServed(0), encodesServed(1)];
    const language = await startLanguageService(pairConfig({ visionTarget: target, tls }), { port: 0, log: createLogger('silent-test') });
    const client = new LanguageServiceClient(language.address, credentials.createInsecure());
    let failures = 0;
    try {
      for (let i = 0; i < max; i++) {
        const out = await ask(client, request(image, { maxTokens: 1 }), { deadlineMs: 10_000 });
        if (out.error !== null) failures++;
        if (encodesServed(0) > before[0]! && encodesServed(1) > before[1]!) break;
      }
    } finally {
      client.close();
      await language.stop();
    }
    return { served: [encodesServed(0) - before[0]!, encodesServed(1) - before[1]!], failures };
  }

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'vlm-hop-tls-'));
    const certs = makeReplicaCerts(dir, IPS);
    ca = certs.ca;
    image = await shapesImage();
    for (const [i, ip] of IPS.entries()) {
      const { cert, key } = certs.replicas[i]!;
      replicas.push(await startVisionService(onHost(pairConfig({ tls: { certFile: cert, keyFile: key } }), ip), { port: 0, log: recordingLogger(lines[i]!, `vision-${i}`) }));
    }
    target = replicas.map((r) => r.address).join(',');
    expect(target).toMatch(/^127\.0\.0\.1:\d+,127\.0\.0\.2:\d+$/);
  });

  afterAll(async () => {
    for (const r of replicas) await r.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('with --vision-server-name, every replica serves through the one channel', async () => {
    const { served, failures } = await spread({ visionCaFile: ca, visionServerName: NAME }, 12);
    expect(failures).toBe(0);
    expect(served[0]).toBeGreaterThan(0);
    expect(served[1]).toBeGreaterThan(0);
  });

  it('without it, the second replica is checked against the first address and never serves (why the option exists)', async () => {
    const { served, failures } = await spread({ visionCaFile: ca }, 6);
    expect(failures).toBe(0);
    expect(served).toEqual([6, 0]);
  });

  it('reads --vision-server-name and VLM_VISION_SERVER_NAME (the flag wins)', () => {
    expect(configFrom({}, {}).tls.visionServerName).toBeNull();
    expect(configFrom({}, { VLM_VISION_SERVER_NAME: NAME }).tls.visionServerName).toBe(NAME);
    expect(configFrom({ 'vision-server-name': 'flag.example' }, { VLM_VISION_SERVER_NAME: NAME }).tls.visionServerName).toBe('flag.example');
  });

  it('refuses a server name for a plaintext hop at start-up, naming the option', () => {
    const config = configFrom({ 'vision-server-name': NAME }, {});
    let error: unknown;
    try {
      serviceCredentials(config, createLogger('silent-test'), true).close();
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(VlmError);
    expect(error).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('--vision-server-name') as unknown });
    // The vision service reads the same config and ignores the hop's options.
    serviceCredentials(config, createLogger('silent-test'), false).close();
  });
});
