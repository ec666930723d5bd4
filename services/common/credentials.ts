/**
 * What a service proves and checks identities with, from config: its TLS certificates
 * (services/common/tls.ts), the hop's client certificates (language), and the bearer tokens callers
 * must send (services/common/bearer-tokens.ts). All of them are files re-read while serving, every
 * VLM_TLS_RELOAD_MS and at once on SIGHUP, so certificates and tokens rotate without a restart.
 */
import type { ChannelCredentials, ServerCredentials } from '@grpc/grpc-js';
import type { Config } from '../../shared/config';
import { VlmError } from '../../shared/errors';
import type { Logger } from '../../shared/log';
import { observeTlsExpiry } from '../../shared/telemetry/metrics';
import { BearerTokens } from './bearer-tokens';
import { CertificateFiles, reloadingChannelCredentials, reloadingServerCredentials } from './tls';

export interface ServiceCredentials {
  /** TLS for the service's port (null: plaintext). */
  readonly server: ServerCredentials | null;
  /** Language only: credentials for the hop to vision (null: plaintext). */
  readonly visionChannel: ChannelCredentials | null;
  /** The bearer tokens callers must send (null: no authentication). */
  readonly tokens: BearerTokens | null;
  /** The token the language service sends to vision now: --vision-token-file's first, else the first of `tokens`. */
  readonly visionToken: (() => string) | null;
  /** Stops the file polling and the SIGHUP handler. */
  close(): void;
}

/**
 * The server side of TLS when VLM_TLS_CERT/KEY are set; the vision hop when `withVisionClient` and
 * VLM_VISION_CA or VLM_VISION_CLIENT_CERT are set (verified against VLM_VISION_SERVER_NAME when
 * given); the bearer tokens when configured. Watches the files and re-reads them on SIGHUP.
 */
export function serviceCredentials(config: Pick<Config, 'tls' | 'rpc'>, log: Logger, withVisionClient: boolean): ServiceCredentials {
  const tls = config.tls;
  const hopTls = tls.visionCaFile !== null || tls.visionClientCertFile !== null;
  if (withVisionClient && tls.visionServerName !== null && !hopTls) {
    throw VlmError.invalid('--vision-server-name', "names the certificate vision must present, but the hop is plaintext: set VLM_VISION_CA (or a client certificate) for TLS, or unset VLM_VISION_SERVER_NAME");
  }
  const sets: Array<{ files: CertificateFiles; name: string }> = [];
  let server: ServerCredentials | null = null;
  let visionChannel: ChannelCredentials | null = null;
  if (tls.certFile !== null && tls.keyFile !== null) {
    const files = new CertificateFiles({ cert: tls.certFile, key: tls.keyFile, ca: tls.caFile }, log.child('tls.server'));
    sets.push({ files, name: 'server' });
    server = reloadingServerCredentials(files);
  }
  if (withVisionClient && hopTls) {
    const files = new CertificateFiles({ cert: tls.visionClientCertFile, key: tls.visionClientKeyFile, ca: tls.visionCaFile }, log.child('tls.vision-client'));
    sets.push({ files, name: 'vision-client' });
    visionChannel = reloadingChannelCredentials(files, tls.visionServerName);
  }
  const tokens = config.rpc.auth === null ? null : new BearerTokens(config.rpc.auth, log.child('auth')).watch(tls.reloadIntervalMs);
  const hopTokens = withVisionClient && config.rpc.visionAuth !== null ? new BearerTokens(config.rpc.visionAuth, log.child('auth.vision'), '--vision-token-file').watch(tls.reloadIntervalMs) : null;
  const hop = hopTokens ?? tokens;
  const unobserve = sets.map(({ files, name }) => {
    files.watch(tls.reloadIntervalMs);
    return observeTlsExpiry(() => files.expiresAt(), name);
  });
  const onHangup = (): void => {
    log.info('SIGHUP: re-reading the TLS and token files');
    for (const s of sets) s.files.reload();
    tokens?.reload();
    hopTokens?.reload();
  };
  const rereads = sets.length > 0 || config.rpc.auth?.file != null || hopTokens !== null;
  if (rereads) process.on('SIGHUP', onHangup);
  return {
    server,
    visionChannel,
    tokens,
    visionToken: hop === null ? null : () => hop.outgoing(),
    close: () => {
      process.removeListener('SIGHUP', onHangup);
      for (const stop of unobserve) stop();
      for (const s of sets) s.files.close();
      tokens?.close();
      hopTokens?.close();
    },
  };
}
