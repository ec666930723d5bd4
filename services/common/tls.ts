/**
 * TLS for both services from PEM files, reloaded without a restart (certificate rotation by
 * cert-manager or a Secret update): the files are re-read every `reloadIntervalMs` and on SIGHUP, and
 * a new set is applied only when it is complete and consistent (the key matches the certificate, the
 * CA parses); a half-written rotation keeps the previous set and logs a warning. New handshakes use
 * the new set; connections already open keep theirs.
 *
 * - Server: `reloadingServerCredentials` (a grpc-js ServerCredentials whose secure context is
 *   replaced in place). With a CA, client certificates are required and must chain to it: the
 *   handshake itself refuses everyone else, before any gRPC call is read.
 * - Client (language -> vision, load generators): grpc-js's certificate-provider channel
 *   credentials, fed by the same file reader, so every new connection reads the latest set.
 *
 * Logs name files, subjects, expiry dates and fingerprints, never key material.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, rootCertificates, type SecureContextOptions } from 'node:tls';
import { experimental, ServerCredentials, type ChannelCredentials } from '@grpc/grpc-js';
import type { TlsConfig } from '../../shared/config';
import { VlmError } from '../../shared/errors';
import type { Logger } from '../../shared/log';

export interface PemFiles {
  /** Certificate chain (leaf first) and its private key: both or neither. */
  readonly cert: string | null;
  readonly key: string | null;
  /** CA bundle: the server verifies client certificates with it, a client verifies the server. */
  readonly ca: string | null;
}

interface PemSet {
  readonly cert: Buffer | null;
  readonly key: Buffer | null;
  readonly ca: Buffer | null;
  readonly digest: string;
}

type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

function readPem(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `cannot read the ${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Subject, expiry and fingerprint of a chain's leaf: what an operator checks after a rotation. */
export function describeCertificate(pem: Buffer): Record<string, string> {
  const leaf = new X509Certificate(pem);
  return { subject: leaf.subject.replace(/\n/g, ', '), validTo: leaf.validTo, sha256: leaf.fingerprint256 };
}

/**
 * A set of PEM files, read now (missing or inconsistent files fail the start with INVALID_ARGUMENT
 * naming the file) and re-read on `reload()`. Implements grpc-js's CertificateProvider so channel
 * credentials can follow it; servers follow it through `reloadingServerCredentials`.
 */
export class CertificateFiles implements experimental.CertificateProvider {
  private current: PemSet;
  private timer: NodeJS.Timeout | null = null;
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();
  private readonly changeListeners = new Set<() => void>();

  constructor(
    readonly files: PemFiles,
    private readonly log: Logger,
  ) {
    if ((files.cert === null) !== (files.key === null)) throw VlmError.invalid('tls', 'a certificate needs its key and a key its certificate');
    this.current = this.read();
    log.info('tls certificates loaded', this.describe());
  }

  private read(): PemSet {
    const { files } = this;
    const cert = files.cert === null ? null : readPem(files.cert, 'certificate');
    const key = files.key === null ? null : readPem(files.key, 'private key');
    const ca = files.ca === null ? null : readPem(files.ca, 'CA certificate');
    try {
      // Parses everything and checks that the key belongs to the certificate.
      createSecureContext({ cert: cert ?? undefined, key: key ?? undefined, ca: ca ?? undefined });
      if (cert !== null) new X509Certificate(cert);
      if (ca !== null) new X509Certificate(ca);
    } catch (err) {
      const names = [files.cert, files.key, files.ca].filter((f) => f !== null).join(', ');
      throw new VlmError('INVALID_ARGUMENT', `TLS files ${names} are not a usable set: ${(err as Error).message}`);
    }
    const digest = createHash('sha256')
      .update(cert ?? '')
      .update('\0')
      .update(key ?? '')
      .update('\0')
      .update(ca ?? '')
      .digest('hex');
    return { cert, key, ca, digest };
  }

  private describe(): Record<string, unknown> {
    const { cert, ca } = this.current;
    return {
      files: this.files,
      ...(cert ? { certificate: describeCertificate(cert) } : {}),
      ...(ca ? { ca: describeCertificate(ca) } : {}),
    };
  }

  /** Re-reads the files; applies and announces a changed, consistent set. Returns whether it changed. */
  reload(): boolean {
    let next: PemSet;
    try {
      next = this.read();
    } catch (err) {
      this.log.warn('tls reload skipped; keeping the certificates in use', { error: (err as Error).message });
      return false;
    }
    if (next.digest === this.current.digest) return false;
    this.current = next;
    this.log.info('tls certificates reloaded', this.describe());
    for (const l of this.changeListeners) l();
    for (const l of this.identityListeners) l(this.identityUpdate());
    for (const l of this.caListeners) l(this.caUpdate());
    return true;
  }

  /** Polls the files every `intervalMs` (the timer does not keep the process alive). */
  watch(intervalMs: number): this {
    if (this.timer === null) {
      this.timer = setInterval(() => this.reload(), intervalMs);
      this.timer.unref();
    }
    return this;
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** The options a server's secure context is built from. */
  contextOptions(): SecureContextOptions {
    const { cert, key, ca } = this.current;
    return { cert: cert ?? undefined, key: key ?? undefined, ca: ca ?? undefined };
  }

  onChange(listener: () => void): void {
    this.changeListeners.add(listener);
  }

  private identityUpdate(): experimental.IdentityCertificateUpdate | null {
    const { cert, key } = this.current;
    return cert !== null && key !== null ? { certificate: cert, privateKey: key } : null;
  }

  /** Without a CA file a client verifies servers against Node's bundled public roots. */
  private caUpdate(): experimental.CaCertificateUpdate {
    return { caCertificate: this.current.ca ?? Buffer.from(rootCertificates.join('\n')) };
  }

  // grpc-js registers its listeners while it builds the credentials' state and expects the first
  // update afterwards (as its own FileWatcherCertificateProvider does): hence nextTick.
  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    process.nextTick(() => this.caListeners.has(listener) && listener(this.caUpdate()));
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    process.nextTick(() => this.identityListeners.has(listener) && listener(this.identityUpdate()));
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }
}

/**
 * Server credentials whose secure context follows `files`. The server starts with the current set
 * (no window in which connections are dropped for want of a context).
 */
class ReloadingServerCredentials extends ServerCredentials {
  constructor(files: CertificateFiles, requireClientCertificate: boolean) {
    super({ requestCert: requireClientCertificate, rejectUnauthorized: requireClientCertificate }, files.contextOptions());
    files.onChange(() => this.updateSecureContextOptions(files.contextOptions()));
  }

  _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

/** TLS server credentials; with `files.ca` set, client certificates from that CA are required. */
export function reloadingServerCredentials(files: CertificateFiles): ServerCredentials {
  if (files.files.cert === null) throw VlmError.invalid('tls', 'a TLS server needs a certificate and key');
  return new ReloadingServerCredentials(files, files.files.ca !== null);
}

/** TLS channel credentials that present `files.cert` (if any) and verify the server with `files.ca`. */
export function reloadingChannelCredentials(files: CertificateFiles): ChannelCredentials {
  return experimental.createCertificateProviderChannelCredentials(files, files.files.cert !== null ? files : null);
}

/** What a service runs with: server credentials (null: plaintext) and the files to watch. */
export interface ServiceTls {
  readonly server: ServerCredentials | null;
  /** Language only: credentials for the hop to vision (null: plaintext). */
  readonly visionChannel: ChannelCredentials | null;
  /** Stops the file polling and the SIGHUP handler. */
  close(): void;
}

/**
 * Builds a service's TLS from config: the server side when VLM_TLS_CERT/KEY are set, the vision hop
 * when `withVisionClient` and VLM_VISION_CA or VLM_VISION_CLIENT_CERT are set. Watches the files and
 * reloads on SIGHUP.
 */
export function serviceTls(config: TlsConfig, log: Logger, withVisionClient: boolean): ServiceTls {
  const sets: CertificateFiles[] = [];
  let server: ServerCredentials | null = null;
  let visionChannel: ChannelCredentials | null = null;
  if (config.certFile !== null && config.keyFile !== null) {
    const files = new CertificateFiles({ cert: config.certFile, key: config.keyFile, ca: config.caFile }, log.child('tls.server'));
    sets.push(files);
    server = reloadingServerCredentials(files);
  }
  if (withVisionClient && (config.visionCaFile !== null || config.visionClientCertFile !== null)) {
    const files = new CertificateFiles({ cert: config.visionClientCertFile, key: config.visionClientKeyFile, ca: config.visionCaFile }, log.child('tls.vision-client'));
    sets.push(files);
    visionChannel = reloadingChannelCredentials(files);
  }
  for (const s of sets) s.watch(config.reloadIntervalMs);
  const onHangup = (): void => {
    log.info('SIGHUP: re-reading TLS files');
    for (const s of sets) s.reload();
  };
  if (sets.length > 0) process.on('SIGHUP', onHangup);
  return {
    server,
    visionChannel,
    close: () => {
      process.removeListener('SIGHUP', onHangup);
      for (const s of sets) s.close();
    },
  };
}
