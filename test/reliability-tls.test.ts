/**
 * Security of the pair: TLS for clients, mutual TLS between the services (only a holder of a client
 * certificate from the configured CA gets through vision's handshake), certificates reloaded from
 * their files without a restart, bearer-token authentication, a plaintext port for health probes
 * only, and no secret (token, key material) in any log line.
 */
import { ACCESS_LOG_REFUSALS_PER_SECOND } from '../services/common/interceptors';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, mkdirSync, copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { credentials, Metadata, status as GrpcCode, type ChannelCredentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import type { RunningService } from '../services/common/lifecycle';
import { CertificateFiles, reloadingChannelCredentials } from '../services/common/tls';
import { languageClient } from '../services/language/client';
import { LanguageServiceClient } from '../gen/vlm/v1/language_service';
import { VisionServiceClient, type EncodeResponse } from '../gen/vlm/v1/vision_service';
import { createLogger } from '../shared/log';
import { VlmError } from '../shared/errors';
import { configFrom } from '../shared/config';
import { collect, eventually, healthStatus, rateWindowsSince } from './service-helpers';
import { ask, issueCertificate, keyBody, makeCerts, pairConfig, pem, recordingLogger, request, shapesImage, type CertPaths, type LogLine } from './reliability-helpers';
import { freePort } from '../cli/free-port';

const TOKEN = 'test-token-7f3a9c51e2b84d06a1f5c9e3b7d2a8f4';

function tlsClient(address: string, creds: ChannelCredentials): LanguageServiceClient {
  return new LanguageServiceClient(address, creds);
}

function bearer(token: string): Metadata {
  const md = new Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}

/**
 * A key and a certificate valid from `start` to `end` (openssl's YYYYMMDDHHMMSSZ), issued by `issuer`
 * or, with none, self-signed as a CA. `openssl ca` because OpenSSL 3.0's `x509 -req` only counts
 * days forward from now (its -not_before/-not_after arrived in 3.4).
 */
function datedCert(dir: string, name: string, start: string, end: string, issuer: { cert: string; key: string } | null): { cert: string; key: string } {
  const work = path.join(dir, name);
  mkdirSync(work, { recursive: true });
  const run = (args: string[]): void => void execFileSync('openssl', args, { cwd: work, stdio: ['ignore', 'ignore', 'pipe'] });
  writeFileSync(path.join(work, 'index.txt'), '');
  writeFileSync(path.join(work, 'serial'), '01\n');
  writeFileSync(
    path.join(work, 'ca.cnf'),
    ['[ca]', 'default_ca = local', '[local]', 'database = index.txt', 'new_certs_dir = .', 'serial = serial', 'default_md = sha256', 'policy = any', 'unique_subject = no', '[any]', 'commonName = supplied', ''].join('\n'),
  );
  writeFileSync(
    path.join(work, 'ext'),
    issuer === null
      ? 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n'
      : 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n',
  );
  run(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${name}`, '-keyout', 'key.pem', '-out', 'csr.pem']);
  const signer = issuer === null ? ['-selfsign', '-keyfile', 'key.pem'] : ['-cert', issuer.cert, '-keyfile', issuer.key];
  run(['ca', '-batch', '-config', 'ca.cnf', ...signer, '-in', 'csr.pem', '-out', 'cert.pem', '-startdate', start, '-enddate', end, '-notext', '-extfile', 'ext']);
  return { cert: path.join(work, 'cert.pem'), key: path.join(work, 'key.pem') };
}

function errorOf(fn: () => unknown): VlmError | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof VlmError) return err;
    throw err;
  }
  return undefined;
}

async function encodeWith(address: string, creds: ChannelCredentials, image: Buffer): Promise<number | null> {
  const client = new VisionServiceClient(address, creds);
  try {
    const { error } = await collect<EncodeResponse>(client.encode({ image, policy: undefined, limits: undefined }, bearer(TOKEN), { deadline: Date.now() + 10_000 }));
    return error?.code ?? null;
  } finally {
    client.close();
  }
}

describe('TLS, mutual TLS and bearer tokens between client, language and vision', () => {
  let dir: string;
  let certs: CertPaths;
  /** A second CA: its certificates must be refused everywhere. */
  let rogue: CertPaths;
  /** The language service's live certificate files (the test rotates them). */
  let liveCert: string;
  let liveKey: string;
  const lines: LogLine[] = [];
  let vision: RunningService;
  let language: RunningService;
  let healthPort: number;
  let image: Buffer;

  /** A copy of the server certificate and key under `name`, which a test may overwrite (a rotation). */
  function rotatableServerPair(name: string): { cert: string; key: string } {
    const cert = path.join(dir, `${name}.crt`);
    const key = path.join(dir, `${name}.key`);
    copyFileSync(certs.serverCert, cert);
    copyFileSync(certs.serverKey, key);
    return { cert, key };
  }

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'vlm-tls-'));
    certs = makeCerts(path.join(dir, 'pki'));
    rogue = makeCerts(path.join(dir, 'rogue'), 'rogue-ca');
    ({ cert: liveCert, key: liveKey } = rotatableServerPair('language'));
    image = await shapesImage();
    vision = await startVisionService(pairConfig({ authToken: TOKEN, tls: { certFile: certs.serverCert, keyFile: certs.serverKey, caFile: certs.caCert, clientNames: ['vlm-language'] } }), {
      port: 0,
      log: recordingLogger(lines, 'vision'),
    });
    healthPort = await freePort();
    language = await startLanguageService(
      pairConfig({
        visionTarget: vision.address,
        authToken: TOKEN,
        healthPort,
        tls: { certFile: liveCert, keyFile: liveKey, visionClientCertFile: certs.clientCert, visionClientKeyFile: certs.clientKey, visionCaFile: certs.caCert, reloadIntervalMs: 60_000 },
      }),
      { port: 0, log: recordingLogger(lines, 'language') },
    );
  });

  afterAll(async () => {
    await language?.stop();
    await vision?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('answers a client that verifies the language service with the CA and sends the token', async () => {
    const client = tlsClient(language.address, credentials.createSsl(pem(certs.caCert)));
    try {
      const out = await ask(client, request(image), { metadata: bearer(TOKEN) });
      expect(out.error).toBeNull();
      expect(out.final?.text).toBe(out.deltas);
      expect(out.final?.tokens?.visualReceived).toBe(16);
    } finally {
      client.close();
    }
  });

  it("answers vlm ask's client: --ca with --server-name checks the certificate for that name", async () => {
    const port = language.address.split(':')[1];
    const named = languageClient(`127.0.0.1:${port}`, { caFile: certs.caCert, certFile: null, keyFile: null, serverName: 'localhost' });
    const wrongName = languageClient(`127.0.0.1:${port}`, { caFile: certs.caCert, certFile: null, keyFile: null, serverName: 'vlm-language.example' });
    try {
      expect((await ask(named, request(image), { metadata: bearer(TOKEN) })).error).toBeNull();
      expect((await ask(wrongName, request(image), { metadata: bearer(TOKEN), deadlineMs: 3000 })).error?.code).toBe(GrpcCode.UNAVAILABLE);
    } finally {
      named.close();
      wrongName.close();
    }
  });

  it('refuses a call without the token, or with a wrong one, with UNAUTHENTICATED', async () => {
    const client = tlsClient(language.address, credentials.createSsl(pem(certs.caCert)));
    try {
      const none = await ask(client, request(image));
      expect(none.error?.code).toBe(GrpcCode.UNAUTHENTICATED);
      expect(none.error?.details).toMatch(/missing bearer token/);
      const wrong = await ask(client, request(image), { metadata: bearer(`${TOKEN}x`) });
      expect(wrong.error?.code).toBe(GrpcCode.UNAUTHENTICATED);
      expect(wrong.error?.details).toBe('invalid bearer token');
    } finally {
      client.close();
    }
  });

  it('gives a plaintext client nothing: the connection fails (UNAVAILABLE)', async () => {
    const client = tlsClient(language.address, credentials.createInsecure());
    try {
      const out = await ask(client, request(image), { metadata: bearer(TOKEN), deadlineMs: 3000 });
      expect(out.error?.code).toBe(GrpcCode.UNAVAILABLE);
    } finally {
      client.close();
    }
  });

  it('lets only a holder of a client certificate from the CA reach vision (mutual TLS)', async () => {
    const ca = pem(certs.caCert);
    // No client certificate, a certificate from another CA, plaintext: refused in the handshake.
    expect(await encodeWith(vision.address, credentials.createSsl(ca), image)).toBe(GrpcCode.UNAVAILABLE);
    expect(await encodeWith(vision.address, credentials.createSsl(ca, pem(rogue.clientKey), pem(rogue.clientCert)), image)).toBe(GrpcCode.UNAVAILABLE);
    expect(await encodeWith(vision.address, credentials.createInsecure(), image)).toBe(GrpcCode.UNAVAILABLE);
    // The language service's certificate gets through.
    expect(await encodeWith(vision.address, credentials.createSsl(ca, pem(certs.clientKey), pem(certs.clientCert)), image)).toBeNull();
    // ...but a server certificate whose CA the client does not trust is refused by the client.
    expect(await encodeWith(vision.address, credentials.createSsl(pem(rogue.caCert), pem(certs.clientKey), pem(certs.clientCert)), image)).toBe(GrpcCode.UNAVAILABLE);
  });

  it('lets in only client certificates naming an allowed client (--tls-client-names), by DNS name, or by common name when it has no alternative names, when the CA issues to others too', async () => {
    const ca = pem(certs.caCert);
    const other = issueCertificate(certs.dir, 'other-workload', 'batch-job', 'clientAuth');
    const byDnsName = issueCertificate(certs.dir, 'by-dns-name', 'language-7f9c', 'clientAuth', 'DNS:vlm-language');
    const before = lines.length;
    expect(await encodeWith(vision.address, credentials.createSsl(ca, pem(other.key), pem(other.cert)), image)).toBe(GrpcCode.PERMISSION_DENIED);
    expect(lines.slice(before).find((l) => l.msg === 'client certificate not among --tls-client-names')).toMatchObject({ names: ['batch-job'] });
    expect(await encodeWith(vision.address, credentials.createSsl(ca, pem(byDnsName.key), pem(byDnsName.cert)), image)).toBeNull();
    // A common name counts only without DNS names: a CA checking the DNS names it issues may leave the CN to the requester.
    const cnBesideDns = issueCertificate(certs.dir, 'cn-beside-dns', 'vlm-language', 'clientAuth', 'DNS:batch-job');
    expect(await encodeWith(vision.address, credentials.createSsl(ca, pem(cnBesideDns.key), pem(cnBesideDns.cert)), image)).toBe(GrpcCode.PERMISSION_DENIED);
    // Nor beside alternative names of another kind (a SPIFFE URI).
    const cnBesideUri = issueCertificate(certs.dir, 'cn-beside-uri', 'vlm-language', 'clientAuth', 'URI:spiffe://cluster.local/ns/other/sa/batch');
    expect(await encodeWith(vision.address, credentials.createSsl(ca, pem(cnBesideUri.key), pem(cnBesideUri.cert)), image)).toBe(GrpcCode.PERMISSION_DENIED);
    expect(await encodeWith(vision.address, credentials.createSsl(ca, pem(certs.clientKey), pem(certs.clientCert)), image)).toBeNull();
    expect(await healthStatus(vision.address, '', credentials.createSsl(ca, pem(other.key), pem(other.cert)))).toBe('SERVING'); // probes are not callers
  });

  it('logs a refused certificate in a bounded form, at most as often as refusals are rated (another workload of the CA may call as fast and with as many names as it likes)', async () => {
    const ca = pem(certs.caCert);
    const names = Array.from({ length: 10 }, (_, i) => `DNS:n${i}-${'y'.repeat(150)}`).join(',');
    const many = issueCertificate(certs.dir, 'many-names', 'batch', 'clientAuth', names);
    const before = lines.length;
    const calls = 2 * ACCESS_LOG_REFUSALS_PER_SECOND;
    const started = performance.now();
    const codes = await Promise.all(Array.from({ length: calls }, () => encodeWith(vision.address, credentials.createSsl(ca, pem(many.key), pem(many.cert)), image)));
    const windows = rateWindowsSince(started);
    expect(codes.every((c) => c === GrpcCode.PERMISSION_DENIED)).toBe(true);
    const refused = () => lines.slice(before).filter((l) => l.msg === 'client certificate not among --tls-client-names');
    expect(refused().length).toBeGreaterThan(0);
    expect(refused().length).toBeLessThanOrEqual(Math.min(calls, windows * ACCESS_LOG_REFUSALS_PER_SECOND));
    const line = refused()[0]!;
    expect(line['names']).toHaveLength(4);
    expect((line['names'] as string[]).every((n) => n.length <= 101)).toBe(true);
    expect(line).toMatchObject({ names_total: 10, fingerprint256: expect.stringMatching(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/) });
  });

  it('a language service without the client certificate cannot use vision: UNAVAILABLE, the target in its log', async () => {
    const otherLog: LogLine[] = [];
    const other = await startLanguageService(pairConfig({ visionTarget: vision.address, authToken: TOKEN, tls: { visionCaFile: certs.caCert } }), { port: 0, log: recordingLogger(otherLog, 'language') });
    const client = tlsClient(other.address, credentials.createInsecure());
    try {
      const out = await ask(client, request(image), { metadata: bearer(TOKEN), deadlineMs: 5000 });
      expect(out.error?.code).toBe(GrpcCode.UNAVAILABLE);
      expect(out.error?.details).toBe('the vision service is unavailable (no replica answered); retry later');
      expect(otherLog.some((l) => l.msg === 'no vision replica answered' && l['target'] === vision.address)).toBe(true);
    } finally {
      client.close();
      await other.stop();
    }
  });

  it('serves grpc.health.v1 in plaintext on the health port, and nothing else there', async () => {
    const address = `127.0.0.1:${healthPort}`;
    expect(await healthStatus(address)).toBe('SERVING');
    expect(await healthStatus(address, 'vlm.v1.LanguageService')).toBe('SERVING');
    const client = tlsClient(address, credentials.createInsecure());
    try {
      const out = await ask(client, request(image), { metadata: bearer(TOKEN), deadlineMs: 3000 });
      expect(out.error?.code).toBe(GrpcCode.UNIMPLEMENTED);
    } finally {
      client.close();
    }
  });

  it('reloads rotated certificate files on SIGHUP: new connections get the new certificate', async () => {
    // Rotate to a certificate from another CA: clients trusting only the new CA can connect afterwards.
    const next = makeCerts(path.join(dir, 'next'), 'next-ca');
    const trustsNext = (): LanguageServiceClient => tlsClient(language.address, credentials.createSsl(pem(next.caCert)));
    const before = trustsNext();
    expect((await ask(before, request(image), { metadata: bearer(TOKEN), deadlineMs: 3000 })).error?.code).toBe(GrpcCode.UNAVAILABLE);
    before.close();

    // A half-written rotation (new certificate, old key) is not applied: the old set keeps serving.
    copyFileSync(next.serverCert, liveCert);
    process.kill(process.pid, 'SIGHUP');
    await eventually(() => lines.some((l) => l['msg'] === 'tls reload skipped; keeping the certificates in use'), 2000);
    const old = tlsClient(language.address, credentials.createSsl(pem(certs.caCert)));
    expect((await ask(old, request(image), { metadata: bearer(TOKEN) })).error).toBeNull();
    old.close();

    copyFileSync(next.serverKey, liveKey);
    process.kill(process.pid, 'SIGHUP');
    await eventually(() => lines.some((l) => l['msg'] === 'tls certificates reloaded' && String(l['component']).startsWith('language')), 2000);
    const after = trustsNext();
    try {
      const out = await ask(after, request(image), { metadata: bearer(TOKEN) });
      expect(out.error).toBeNull();
    } finally {
      after.close();
    }
  });

  it('polls the files too: channel credentials follow a rotated client certificate', async () => {
    // The client side on its own: a provider over files that change, read by every new connection.
    const clientCert = path.join(dir, 'hop.crt');
    const clientKey = path.join(dir, 'hop.key');
    copyFileSync(rogue.clientCert, clientCert);
    copyFileSync(rogue.clientKey, clientKey);
    const files = new CertificateFiles({ cert: clientCert, key: clientKey, ca: certs.caCert }, recordingLogger(lines, 'hop')).watch(100);
    try {
      expect(await encodeWith(vision.address, reloadingChannelCredentials(files), image)).toBe(GrpcCode.UNAVAILABLE);
      copyFileSync(certs.clientCert, clientCert);
      copyFileSync(certs.clientKey, clientKey);
      await eventually(() => lines.some((l) => l['component'] === 'hop' && l['msg'] === 'tls certificates reloaded'), 2000);
      expect(await encodeWith(vision.address, reloadingChannelCredentials(files), image)).toBeNull();
    } finally {
      files.close();
    }
  });

  it('never writes the token or key material into a log line', () => {
    expect(lines.filter((l) => l['msg'] === 'call').length).toBeGreaterThan(5);
    const text = lines.map((l) => JSON.stringify(l)).join('\n');
    expect(text).not.toContain(TOKEN);
    for (const key of [certs.serverKey, certs.clientKey, certs.caKey]) {
      expect(text).not.toContain(keyBody(key));
      expect(text).not.toContain(keyBody(key).slice(0, 24));
    }
    expect(text).not.toMatch(/PRIVATE KEY/);
    // What is logged instead: files, subjects, expiry and fingerprints.
    expect(lines.find((l) => l['msg'] === 'tls certificates loaded')).toMatchObject({ certificate: { subject: expect.stringContaining('CN=') as unknown } });
  });

  describe('certificates outside their validity window', () => {
    let expired: { cert: string; key: string };
    let early: { cert: string; key: string };
    let expiredCa: { cert: string; key: string };

    beforeAll(() => {
      const issuer = { cert: certs.caCert, key: certs.caKey };
      expired = datedCert(dir, 'expired', '20200101000000Z', '20210101000000Z', issuer);
      early = datedCert(dir, 'early', '20990101000000Z', '21000101000000Z', issuer);
      expiredCa = datedCert(dir, 'expired-ca', '20200101000000Z', '20210101000000Z', null);
    });

    it('refuses them at start-up with FAILED_PRECONDITION naming the file and the dates', () => {
      const log = createLogger('silent-test');
      const old = errorOf(() => new CertificateFiles({ cert: expired.cert, key: expired.key, ca: null }, log));
      expect(old?.code).toBe('FAILED_PRECONDITION');
      expect(old?.message).toContain(`CN=expired in ${expired.cert} expired on Jan  1 00:00:00 2021 GMT (valid from Jan  1 00:00:00 2020 GMT to Jan  1 00:00:00 2021 GMT;`);
      const notYet = errorOf(() => new CertificateFiles({ cert: early.cert, key: early.key, ca: null }, log));
      expect(notYet?.code).toBe('FAILED_PRECONDITION');
      expect(notYet?.message).toContain(`CN=early in ${early.cert} is not valid until Jan  1 00:00:00 2099 GMT`);
      // The CA file's certificates too: the client side of the hop with an expired CA.
      const ca = errorOf(() => new CertificateFiles({ cert: certs.clientCert, key: certs.clientKey, ca: expiredCa.cert }, log));
      expect(ca?.code).toBe('FAILED_PRECONDITION');
      expect(ca?.message).toContain(`CA certificate CN=expired-ca in ${expiredCa.cert} expired on Jan  1 00:00:00 2021 GMT`);
    });

    it('takes a CA bundle that still carries an expired root beside a valid one (trust anchors on their way out)', async () => {
      const bundle = path.join(dir, 'ca-bundle.pem');
      writeFileSync(bundle, readFileSync(expiredCa.cert, 'utf8') + readFileSync(certs.caCert, 'utf8'));
      const files = new CertificateFiles({ cert: certs.clientCert, key: certs.clientKey, ca: bundle }, createLogger('silent-test'));
      try {
        // The valid root in the bundle verifies vision's certificate.
        expect(await encodeWith(vision.address, reloadingChannelCredentials(files), image)).toBeNull();
      } finally {
        files.close();
      }
    });

    it('a service given an expired certificate does not start', async () => {
      const outcome = await startVisionService(pairConfig({ tls: { certFile: expired.cert, keyFile: expired.key } }), { port: 0, log: createLogger('silent-test') }).then(
        async (started) => (await started.stop(), 'started'),
        (err: unknown) => err,
      );
      expect(outcome).toMatchObject({ code: 'FAILED_PRECONDITION', message: expect.stringContaining(expired.cert) as unknown });
    });

    it('warns once a week before the set in use expires and errors once when it has; a rotated set starts over', () => {
      const { cert, key } = rotatableServerPair('expiry');
      const expiryLines: LogLine[] = [];
      const files = new CertificateFiles({ cert, key, ca: null }, recordingLogger(expiryLines, 'expiry'));
      const at = files.expiresAt()!;
      expect(at).toBe(Date.parse(new X509Certificate(readFileSync(cert)).validTo));
      const day = 86_400_000;
      const logged = () => expiryLines.filter((l) => l.level === 'warn' || l.level === 'error');
      expect(files.checkExpiry(at - 8 * day)).toBe('valid');
      expect(files.checkExpiry(at - 6 * day)).toBe('expiring');
      expect(files.checkExpiry(at - 5 * day)).toBe('expiring');
      expect(files.checkExpiry(at + 1000)).toBe('expired');
      expect(files.checkExpiry(at + 2000)).toBe('expired');
      expect(logged().map((l) => [l.level, l.msg])).toEqual([
        ['warn', 'tls certificates in use expire within 7 days: rotate the files'],
        ['error', 'tls certificates in use have expired: new connections fail their handshake until the files are rotated'],
      ]);
      expect(logged()[1]).toMatchObject({ expiresAt: new Date(at).toISOString() });
      // A rotation to another set: its own expiry is judged afresh.
      copyFileSync(certs.clientCert, cert);
      copyFileSync(certs.clientKey, key);
      expect(files.reload()).toBe(true);
      expect(files.checkExpiry(files.expiresAt()! - 6 * day)).toBe('expiring');
      expect(logged()).toHaveLength(3);
      // Without a certificate or CA, nothing expires.
      expect(new CertificateFiles({ cert: null, key: null, ca: null }, createLogger('silent-test')).expiresAt()).toBeNull();
    });

    it('at reload keeps the set in use and logs an error; a valid set is applied afterwards', () => {
      const { cert, key } = rotatableServerPair('reload');
      const reloadLines: LogLine[] = [];
      const files = new CertificateFiles({ cert, key, ca: null }, recordingLogger(reloadLines, 'reload'));
      const inUse = files.contextOptions().cert;
      for (const wrong of [expired, early]) {
        copyFileSync(wrong.cert, cert);
        copyFileSync(wrong.key, key);
        expect(files.reload()).toBe(false);
        expect(files.contextOptions().cert).toEqual(inUse);
        expect(reloadLines.at(-1)).toMatchObject({ level: 'error', msg: 'tls reload refused: a certificate is outside its validity window; keeping the certificates in use' });
        expect(String(reloadLines.at(-1)!['error'])).toContain(wrong.cert === expired.cert ? 'expired on' : 'is not valid until');
      }
      copyFileSync(certs.clientCert, cert);
      copyFileSync(certs.clientKey, key);
      expect(files.reload()).toBe(true);
      expect(files.contextOptions().cert).toEqual(readFileSync(certs.clientCert));
    });
  });

  it('rejects half a TLS configuration at start-up, naming the variables', () => {
    expect(() => configFrom({}, { VLM_TLS_CERT: certs.serverCert })).toThrow(/VLM_TLS_CERT and VLM_TLS_KEY/);
    expect(() => configFrom({}, { VLM_TLS_CA: certs.caCert })).toThrow(/needs TLS/);
    expect(() => configFrom({}, { VLM_VISION_CLIENT_KEY: certs.clientKey })).toThrow(/VLM_VISION_CLIENT_CERT and VLM_VISION_CLIENT_KEY/);
    expect(() => configFrom({}, { VLM_TLS_CERT: certs.serverCert, VLM_TLS_KEY: certs.serverKey, VLM_TLS_CLIENT_NAMES: 'vlm-language' })).toThrow(/--tls-client-names: .*set VLM_TLS_CA too/);
    expect(configFrom({}, { VLM_TLS_CERT: certs.serverCert, VLM_TLS_KEY: certs.serverKey, VLM_TLS_CA: certs.caCert, VLM_TLS_CLIENT_NAMES: ' vlm-language, other ,' }).tls.clientNames).toEqual(['vlm-language', 'other']);
    expect(() => new CertificateFiles({ cert: certs.serverCert, key: certs.clientKey, ca: null }, createLogger('t'))).toThrow(/not a usable set/);
    expect(() => new CertificateFiles({ cert: path.join(dir, 'nope.crt'), key: certs.serverKey, ca: null }, createLogger('t'))).toThrow(/cannot read the certificate file .*nope\.crt: ENOENT/);
  });
});

