/**
 * TLS for both services from PEM files, reloaded without a restart (certificate rotation by
 * cert-manager or a Secret update): the files are re-read every `reloadIntervalMs` and on SIGHUP, and
 * a new set is applied only when it is complete and consistent (the key matches the certificate, the
 * CA parses) and every certificate in it is within its validity window; a half-written rotation keeps
 * the previous set and logs a warning, an expired or not-yet-valid one keeps it and logs an error. New
 * handshakes use the new set; connections already open keep theirs.
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
import { experimental, ServerCredentials, type ChannelCredentials, type ChannelOptions } from '@grpc/grpc-js';
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
  /** When the set stops working (ms since the epoch): see lastValidMoment. Null: nothing expires. */
  readonly expiresAt: number | null;
}

/** How the set in use stands against the clock; each state but `valid` is logged once per set. */
export type ExpiryState = 'valid' | 'expiring' | 'expired';

/**
 * A week before the set in use expires the service warns. cert-manager renews a certificate when a
 * third of its life is left (30 days of 90), so a week left means renewal has been failing for three
 * weeks, and a week is still time to fix it by hand.
 */
export const EXPIRY_WARNING_MS = 7 * 24 * 3600_000;

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

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/**
 * A certificate issued moments ago by a host whose clock runs ahead is still accepted: peers allow
 * for such skew too, and refusing it would fail a pod started right after a rotation.
 */
const CLOCK_SKEW_MS = 5 * 60_000;

/**
 * Refuses a file holding a certificate outside its validity window. Parsing and the key match let an
 * expired certificate through, and every peer would then fail the handshake: at start-up that is a
 * service reporting SERVING that nobody can reach, at reload a working set replaced by a dead one.
 * A certificate file (leaf and chain) must be valid throughout; a CA file is a set of trust anchors,
 * refused only when none of them is valid (a bundle may still carry a root on its way out).
 */
function certificatesIn(pem: Buffer): X509Certificate[] {
  return (pem.toString('latin1').match(PEM_CERTIFICATE) ?? []).map((block) => new X509Certificate(block));
}

function checkValidity(blocks: readonly X509Certificate[], file: string, what: string, now: number, need: 'every' | 'some'): void {
  const problems: string[] = [];
  for (const c of blocks) {
    const from = Date.parse(c.validFrom) - CLOCK_SKEW_MS;
    const to = Date.parse(c.validTo);
    if (now >= from && now <= to) continue;
    const state = now > to ? `expired on ${c.validTo}` : `is not valid until ${c.validFrom}`;
    problems.push(`the ${what} ${c.subject.replace(/\n/g, ', ')} in ${file} ${state} (valid from ${c.validFrom} to ${c.validTo}; now ${new Date(now).toUTCString()})`);
  }
  const refused = need === 'every' ? problems.length > 0 : blocks.length > 0 && problems.length === blocks.length;
  if (refused) throw new VlmError('FAILED_PRECONDITION', `${problems.join('; ')}; replace the file or fix the clock`);
}

/**
 * The last moment a set verifies, by the same rule as checkValidity: the certificate chain expires
 * with its first certificate to expire, a CA bundle with its last anchor.
 */
function lastValidMoment(cert: readonly X509Certificate[], ca: readonly X509Certificate[]): number | null {
  const certEnds = cert.map((c) => Date.parse(c.validTo));
  const caEnds = ca.map((c) => Date.parse(c.validTo));
  const limits = [...(certEnds.length > 0 ? [Math.min(...certEnds)] : []), ...(caEnds.length > 0 ? [Math.max(...caEnds)] : [])];
  return limits.length > 0 ? Math.min(...limits) : null;
}

/**
 * A set of PEM files, read now (missing or inconsistent files fail the start with INVALID_ARGUMENT
 * naming the file, a certificate outside its validity window with FAILED_PRECONDITION naming the file
 * and the dates) and re-read on `reload()`. Implements grpc-js's CertificateProvider so channel
 * credentials can follow it; servers follow it through `reloadingServerCredentials`.
 */
export class CertificateFiles implements experimental.CertificateProvider {
  private current: PemSet;
  /** The expiry state last logged for the set in use (a new set starts again at `valid`). */
  private reportedExpiry: ExpiryState = 'valid';
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
    this.checkExpiry();
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
    const now = Date.now();
    // Parsed once for both the validity check and the expiry: a set is re-read at every poll.
    const certChain = cert === null ? [] : certificatesIn(cert);
    const caAnchors = ca === null ? [] : certificatesIn(ca);
    if (cert !== null) checkValidity(certChain, files.cert!, 'certificate', now, 'every');
    if (ca !== null) checkValidity(caAnchors, files.ca!, 'CA certificate', now, 'some');
    const digest = createHash('sha256')
      .update(cert ?? '')
      .update('\0')
      .update(key ?? '')
      .update('\0')
      .update(ca ?? '')
      .digest('hex');
    return { cert, key, ca, digest, expiresAt: lastValidMoment(certChain, caAnchors) };
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
      // A half-written rotation completes by the next poll: a warning. A certificate outside its
      // validity window is a rotation gone wrong (an expired one never becomes usable): an error. One
      // not yet valid is applied by the first poll after its window opens.
      if (err instanceof VlmError && err.code === 'FAILED_PRECONDITION') {
        this.log.error('tls reload refused: a certificate is outside its validity window; keeping the certificates in use', { error: err.message });
      } else {
        this.log.warn('tls reload skipped; keeping the certificates in use', { error: (err as Error).message });
      }
      return false;
    }
    if (next.digest === this.current.digest) return false;
    this.current = next;
    this.reportedExpiry = 'valid';
    this.log.info('tls certificates reloaded', this.describe());
    this.checkExpiry();
    for (const l of this.changeListeners) l();
    for (const l of this.identityListeners) l(this.identityUpdate());
    for (const l of this.caListeners) l(this.caUpdate());
    return true;
  }

  /** When the set in use stops verifying (ms since the epoch), or null if nothing in it expires. */
  expiresAt(): number | null {
    return this.current.expiresAt;
  }

  /**
   * Where the set in use stands at `now`. A set valid at load can expire while the service runs,
   * and then every new handshake fails while the service still reports SERVING: the first poll
   * that finds it expiring logs a warning, the first that finds it expired an error (once each per
   * set; the `vlm.tls.expiry` gauge carries the countdown for alerts).
   */
  checkExpiry(now: number = Date.now()): ExpiryState {
    const at = this.current.expiresAt;
    const state: ExpiryState = at === null || at - now > EXPIRY_WARNING_MS ? 'valid' : now > at ? 'expired' : 'expiring';
    if (state !== this.reportedExpiry && state !== 'valid') {
      const details = { ...this.describe(), expiresAt: new Date(at!).toISOString() };
      if (state === 'expired') this.log.error('tls certificates in use have expired: new connections fail their handshake until the files are rotated', details);
      else this.log.warn(`tls certificates in use expire within ${EXPIRY_WARNING_MS / 86_400_000} days: rotate the files`, details);
    }
    this.reportedExpiry = state;
    return state;
  }

  /** Polls the files every `intervalMs` (the timer does not keep the process alive). */
  watch(intervalMs: number): this {
    if (this.timer === null) {
      this.timer = setInterval(() => {
        this.reload();
        this.checkExpiry();
      }, intervalMs);
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

/** The server name bound to channel credentials by reloadingChannelCredentials. */
const serverNames = new WeakMap<ChannelCredentials, string>();

/**
 * TLS channel credentials that present `files.cert` (if any) and verify the server with `files.ca`,
 * and with `serverName`, verify every server's certificate against that name (serverNameOptions).
 */
export function reloadingChannelCredentials(files: CertificateFiles, serverName: string | null = null): ChannelCredentials {
  const credentials = experimental.createCertificateProviderChannelCredentials(files, files.files.cert !== null ? files : null);
  if (serverName !== null) serverNames.set(credentials, serverName);
  return credentials;
}

/**
 * The channel options a channel over `credentials` needs for their server name. grpc-js checks a
 * certificate against the channel's authority, which for a static list (ipv4:a,b) is the first
 * address, so every other replica's certificate would have to carry that address too. With the
 * name, each replica is verified against it (and gets it as SNI and :authority) whatever address it
 * was dialled at. The name travels with the credentials because it belongs to the identity the hop
 * verifies, configured where the credentials are (--vision-server-name beside --vision-ca).
 */
export function serverNameOptions(credentials: ChannelCredentials | undefined): ChannelOptions {
  const name = credentials === undefined ? undefined : serverNames.get(credentials);
  return name === undefined ? {} : { 'grpc.ssl_target_name_override': name, 'grpc.default_authority': name };
}
