/**
 * Every call on a service's main port is counted in `rpc_server_call_duration` by method and status,
 * those refused before any handler runs included (no request duration sees them): an operator can
 * alert on the rate of refusals at the door. Methods are the service's own, never a caller's string.
 */
import { connect } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { credentials, status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { startVisionService } from '../services/vision/server';
import { VisionServiceClient } from '../gen/vlm/v1/vision_service';
import { shutdownTelemetry, startTelemetry } from '../shared/telemetry/sdk';
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
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const count = (code: string) =>
      Number(new RegExp(`^rpc_server_call_duration_count\\{(?=[^}]*rpc_method="vlm\\.v1\\.VisionService/GetModelInfo")(?=[^}]*rpc_response_status_code="${code}")[^}]*\\} (\\S+)`, 'm').exec(text)?.[1]);
    expect(count('OK')).toBe(2);
    expect(count('UNAUTHENTICATED')).toBe(1);
    expect(text).toMatch(/^rpc_server_call_duration_count\{[^}]*rpc_system_name="grpc"/m);
    expect(text).not.toMatch(/Invented/);
  });
});
