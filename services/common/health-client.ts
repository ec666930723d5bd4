/**
 * grpc.health.v1 Check from a client (the demo waiting for start-up, tests, operators' scripts),
 * loaded dynamically from grpc-health-check's own proto.
 */
import { credentials, loadPackageDefinition, type Client, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { protoPath } from 'grpc-health-check';

type HealthClient = Client & { check(req: { service: string }, options: { deadline: number }, cb: (err: ServiceError | null, res?: { status: string }) => void): void };
type HealthCtor = new (address: string, creds: ReturnType<typeof credentials.createInsecure>) => HealthClient;

let ctor: HealthCtor | undefined;

function healthCtor(): HealthCtor {
  if (ctor === undefined) {
    const pkg = loadPackageDefinition(loadSync(protoPath, { keepCase: true, enums: String })) as unknown as { grpc: { health: { v1: { Health: HealthCtor } } } };
    ctor = pkg.grpc.health.v1.Health;
  }
  return ctor;
}

/** "SERVING", "NOT_SERVING", ... for `service` ("" = the whole server); rejects if unreachable. */
export function healthOf(address: string, timeoutMs: number, service = ''): Promise<string> {
  const client = new (healthCtor())(address, credentials.createInsecure());
  return new Promise<string>((resolve, reject) => {
    client.check({ service }, { deadline: Date.now() + timeoutMs }, (err, res) => {
      client.close();
      if (err) reject(err);
      else resolve(res!.status);
    });
  });
}
