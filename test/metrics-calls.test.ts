/**
 * Every call on a service's main port is counted in `rpc_server_call_duration` by method and status,
 * those refused before any handler runs included (no request duration sees them): an operator can
 * alert on the rate of refusals at the door. Methods are the service's own, never a caller's string.
 * The alerts shipped in k8s/addons/monitoring read only what a service exports.
 */
import { readFileSync } from 'node:fs';
import { connect } from 'node:http2';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { credentials, status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { startVisionService } from '../services/vision/server';
import { VisionServiceClient } from '../gen/vlm/v1/vision_service';
import { shutdownTelemetry, startTelemetry } from '../shared/telemetry/sdk';
import { observeTlsExpiry } from '../shared/telemetry/metrics';
import { freePort } from '../cli/free-port';
import { pairConfig } from './reliability-helpers';
import { metadataWith, rawCall } from './service-helpers';

describe('rpc_server_call_duration on the Prometheus endpoint', () => {
  let metricsPort: number;
  let service: Awaited<ReturnType<typeof startVisionService>>;
  let client: VisionServiceClient;

  beforeAll(async () => {
    metricsPort = await freePort();
    Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: '', OTEL_METRICS_EXPORTER: '' });
    await startTelemetry({ serviceName: 'vlm-vision', metricsPort, metricsHost: '127.0.0.1' }).ready;
    service = await startVisionService(pairConfig({ authToken: 'calls-t0k3n-xxxxxxxxxx' }), { port: 0 });
    client = new VisionServiceClient(service.address, credentials.createInsecure());
  });
  afterAll(async () => {
    client.close();
    await service.stop();
    await shutdownTelemetry();
  });

  const getModelInfo = (token?: string) =>
    new Promise<ServiceError | null>((resolve) => client.getModelInfo({}, token ? metadataWith({ authorization: `Bearer ${token}` }) : metadataWith({}), (err) => resolve(err)));

  const scrape = async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();

  it('counts answered and refused calls apart, by method and status code name', async () => {
    expect(await getModelInfo('calls-t0k3n-xxxxxxxxxx')).toBeNull();
    expect(await getModelInfo('calls-t0k3n-xxxxxxxxxx')).toBeNull();
    expect((await getModelInfo())?.code).toBe(GrpcCode.UNAUTHENTICATED);
    // A method the service does not have: UNIMPLEMENTED, and no series named after the caller's path.
    const session = connect(`http://${service.address}`);
    try {
      expect((await rawCall(session, '/vlm.v1.VisionService/Invented', { headers: { authorization: 'Bearer calls-t0k3n-xxxxxxxxxx' }, write: Buffer.alloc(5) }).status).code).toBe(GrpcCode.UNIMPLEMENTED);
    } finally {
      session.close();
    }
    const text = await scrape();
    const count = (code: string) =>
      Number(new RegExp(`^rpc_server_call_duration_count\\{(?=[^}]*rpc_method="vlm\\.v1\\.VisionService/GetModelInfo")(?=[^}]*rpc_response_status_code="${code}")[^}]*\\} (\\S+)`, 'm').exec(text)?.[1]);
    expect(count('OK')).toBe(2);
    expect(count('UNAUTHENTICATED')).toBe(1);
    expect(text).toMatch(/^rpc_server_call_duration_count\{[^}]*rpc_system_name="grpc"/m);
    expect(text).not.toMatch(/Invented/);
  });

  it("reads, in every alert of k8s/addons/monitoring, only series this service exports, with the labels the alert groups and filters by", async () => {
    // The certificate countdown as a service with TLS publishes it (reliability-tls checks the wiring).
    observeTlsExpiry(() => Date.now() + 86_400_000, 'server');
    expect(await getModelInfo('calls-t0k3n-xxxxxxxxxx')).toBeNull();
    const exported = new Map<string, Set<string>>();
    for (const line of (await scrape()).split('\n')) {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? /.exec(line);
      if (m) exported.set(m[1]!, new Set([...(exported.get(m[1]!) ?? []), ...[...(m[2] ?? '').matchAll(/(\w+)="/g)].map((l) => l[1]!)]));
    }
    const rules = (parseYaml(readFileSync(path.join(__dirname, '..', 'k8s/addons/monitoring/alerts.yaml'), 'utf8')) as { spec: { groups: { rules: { alert: string; expr: string }[] }[] } }).spec.groups.flatMap((g) => g.rules);
    expect(rules.length).toBeGreaterThan(0);
    // Prometheus adds these at scrape; the rest must come from the service.
    const scrapeLabels = new Set(['namespace', 'pod']);
    for (const { alert, expr } of rules) {
      const grouped = [...expr.matchAll(/by \(([^)]*)\)/g)].flatMap((m) => m[1]!.split(',').map((l) => l.trim()));
      const series = [...expr.replace(/by \([^)]*\)/g, '').matchAll(/\b((?:vlm|rpc|gen_ai)_[a-z0-9_]+)(?:\{([^}]*)\})?/g)].map((m) => ({ name: m[1]!, matchers: m[2] ?? '' }));
      expect(series.length, alert).toBeGreaterThan(0);
      for (const { name, matchers } of series) {
        expect(exported.has(name), `${alert}: ${name}`).toBe(true);
        const labels = [...grouped, ...[...matchers.matchAll(/(\w+)\s*[=!]~?"/g)].map((m) => m[1]!)].filter((l) => !scrapeLabels.has(l));
        for (const l of labels) expect(exported.get(name)!.has(l), `${alert}: ${name} has no label ${l}`).toBe(true);
      }
    }
  });
});
