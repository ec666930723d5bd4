/**
 * What the reliability tests share: certificates made with openssl the way k8s/tls/make-dev-certs.sh
 * makes them (plus a loopback SAN), a recording logger, the pair's config on the random bundle, and
 * request/answer helpers over real gRPC.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { Client, credentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import sharp from 'sharp';
import { testConfig, type Config } from '../shared/config';
import { singleToken, type AuthTokens } from '../shared/auth-tokens';
import { ReductionPolicy as WirePolicy, SamplingParams } from '../gen/vlm/v1/common';
import { GenerateResponse, type GenerateFinal, type GenerateRequest, type LanguageServiceClient } from '../gen/vlm/v1/language_service';
import { collect } from './service-helpers';

export const ROOT = path.resolve(__dirname, '..');
export const BUNDLE = path.join(ROOT, 'test/fixtures/random-bundle');
export const QUESTION = 'What color is the small circle?';

export interface CertPaths {
  readonly dir: string;
  readonly caCert: string;
  readonly caKey: string;
  /** Server certificate for 127.0.0.1 / localhost. */
  readonly serverCert: string;
  readonly serverKey: string;
  /** Client certificate (clientAuth) from the same CA. */
  readonly clientCert: string;
  readonly clientKey: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * A certificate `dir/NAME.crt` (key `dir/NAME.key`) for `cn`, issued by the CA makeCerts left in
 * `dir`, valid 30 days, with extended key usage `eku` and, if given, subject alternative names `san`.
 */
export function issueCertificate(dir: string, name: string, cn: string, eku: string, san?: string): { cert: string; key: string } {
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.csr`], dir);
  const ext = ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment', `extendedKeyUsage=${eku}`, ...(san ? [`subjectAltName=${san}`] : [])].join('\n');
  writeFileSync(path.join(dir, `${name}.ext`), `${ext}\n`);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '30', '-extfile', `${name}.ext`, '-out', `${name}.crt`], dir);
  return { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
}

/** A private CA and a server and a client certificate under `dir` (EC P-256, as the dev script). */
export function makeCerts(dir: string, caName = 'vlm-test-ca'): CertPaths {
  mkdirSync(dir, { recursive: true });
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30', '-subj', `/CN=${caName}`, '-keyout', 'ca.key', '-out', 'ca.crt', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  const server = issueCertificate(dir, 'server', 'vlm-test-server', 'serverAuth', 'IP:127.0.0.1,DNS:localhost');
  const client = issueCertificate(dir, 'client', 'vlm-language', 'clientAuth');
  return { dir, caCert: path.join(dir, 'ca.crt'), caKey: path.join(dir, 'ca.key'), serverCert: server.cert, serverKey: server.key, clientCert: client.cert, clientKey: client.key };
}

export function pem(file: string): Buffer {
  return readFileSync(file);
}

/** The base64 body of a PEM key: what must never appear in a log. */
export function keyBody(file: string): string {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('-----'))
    .join('');
}

export { recordingLogger, type LogLine } from './core-helpers';

export interface PairOverrides {
  readonly visionTarget?: string;
  readonly queueSize?: number;
  readonly maxImageBytes?: number;
  readonly deadlineMs?: number;
  readonly authToken?: string | null;
  /** Tokens as a file gives them (re-read while serving); wins over authToken. */
  readonly auth?: AuthTokens;
  readonly tls?: Partial<Config['tls']>;
  readonly healthPort?: number;
}

/** The random bundle on loopback with a small image limit; grace short so tests stop quickly. */
export function pairConfig(over: PairOverrides = {}): Config {
  return testConfig({
    model: { dir: BUNDLE },
    services: { host: '127.0.0.1', healthPort: over.healthPort ?? 0 },
    limits: { queueSize: over.queueSize ?? 4, maxImageBytes: over.maxImageBytes ?? 2 * 1024 * 1024, maxNewTokens: 256, ...(over.deadlineMs ? { deadlineMs: over.deadlineMs } : {}) },
    rpc: { visionTarget: over.visionTarget ?? '', shutdownGraceMs: 1000, auth: over.auth ?? singleToken(over.authToken ?? null) },
    tls: { ...(over.tls ?? {}) },
  });
}

let shapes: Promise<Buffer> | undefined;
/** The picture the shapes questions are about. */
export function shapesImage(): Promise<Buffer> {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="96" height="64"><rect width="96" height="64" fill="#fff"/><circle cx="30" cy="30" r="12" fill="#d22"/><rect x="55" y="20" width="25" height="25" fill="#22d"/></svg>`;
  return (shapes ??= sharp(Buffer.from(svg)).png().toBuffer());
}

export function request(image: Buffer, over: { policy?: Partial<WirePolicy>; maxTokens?: number; prompt?: string } = {}): GenerateRequest {
  return {
    image,
    prompt: over.prompt ?? QUESTION,
    sampling: SamplingParams.fromPartial({ maxTokens: over.maxTokens ?? 4 }),
    policy: over.policy ? WirePolicy.fromPartial(over.policy) : undefined,
    limits: undefined,
  };
}

export interface Outcome {
  readonly deltas: string;
  readonly final: GenerateFinal | undefined;
  readonly error: ServiceError | null;
}

export async function ask(client: LanguageServiceClient, req: GenerateRequest, options: { deadlineMs?: number; metadata?: Metadata } = {}): Promise<Outcome> {
  const call = client.generate(req, options.metadata ?? new Metadata(), { deadline: Date.now() + (options.deadlineMs ?? 30_000) });
  const { messages, error } = await collect<GenerateResponse>(call);
  const deltas = messages.flatMap((m) => (m.part?.$case === 'delta' ? [m.part.delta.text] : [])).join('');
  const final = messages.find((m) => m.part?.$case === 'final');
  return { deltas, final: final?.part?.$case === 'final' ? final.part.final : undefined, error };
}

/** Generate with the request given as encoded bytes (invalid UTF-8, mutated messages): the status and the answer text. */
export function rawGenerate(address: string, bytes: Buffer, deadlineMs = 15_000): Promise<{ code: number; details: string; text: string; metadata: Metadata | undefined }> {
  const client = new Client(address, credentials.createInsecure());
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest<Buffer, GenerateResponse>(
      '/vlm.v1.LanguageService/Generate',
      (b: Buffer) => b,
      (b: Buffer) => GenerateResponse.decode(b),
      bytes,
      new Metadata(),
      { deadline: Date.now() + deadlineMs },
    );
    let text = '';
    call.on('data', (m: GenerateResponse) => {
      if (m.part?.$case === 'final') text = m.part.final.text;
    });
    call.on('error', () => undefined);
    call.on('status', (s: { code: number; details: string; metadata: Metadata }) => {
      client.close();
      resolve({ code: s.code, details: s.details, text, metadata: s.metadata });
    });
  });
}
