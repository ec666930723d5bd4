/**
 * Where the language service finds vision, read once: the configured target, the gRPC channel target
 * it becomes, and whether the hop stays on this host. One parse, so the channel, the plaintext-token
 * warning and the logs all see the same addresses.
 */
import { isIP } from 'node:net';
import { type Config } from '../../shared/config';
import { isLoopbackAddress, localAddress } from '../../shared/net-address';
import { VlmError } from '../../shared/errors';

export interface VisionTarget {
  /** As configured: host:port, a comma-separated list of IP:port, or any gRPC target (dns:///name:port). */
  readonly configured: string;
  /**
   * What the channel dials. A list of addresses becomes grpc-js's static `ipv4:`/`ipv6:` target, so
   * one channel balances over all of them; a single name stays a DNS target (round-robin over its
   * A/AAAA records). With TLS, such a channel checks every replica's certificate against the first
   * address unless the credentials carry a server name (--vision-server-name; see serverNameOptions
   * in tls.ts).
   */
  readonly channel: string;
  /** Every address is a loopback one: the hop never leaves the host (a bearer token in plaintext stays on it). */
  readonly loopback: boolean;
}

/**
 * --vision-target, else vision on this host: where it listens (--host; a wildcard through loopback)
 * on --vision-port. Port 0 lets vision pick one, which this process cannot know: `serve all` passes
 * the bound address on; anyone else must name it.
 */
export function visionTargetOf(config: Config): VisionTarget {
  if (config.rpc.visionTarget) return parseVisionTarget(config.rpc.visionTarget);
  if (config.services.visionPort === 0) {
    throw VlmError.invalid('--vision-target', 'is required when --vision-port is 0 (vision picks a free port this service cannot know); name the address vision listens on');
  }
  return parseVisionTarget(localAddress(config.services.host, config.services.visionPort));
}

/** The resolver schemes grpc-js (1.14) registers: a target naming one is dialled as written. */
const SCHEME = /^(dns|ipv4|ipv6|unix):/;

export function parseVisionTarget(configured: string): VisionTarget {
  const trimmed = configured.trim();
  if (SCHEME.test(trimmed)) {
    // A port the channel could never dial fails every request later, with a service that reports SERVING.
    const port = /:(\d+)$/.exec(trimmed);
    if (port) checkPort(port[1]!, trimmed);
    return { configured, channel: trimmed, loopback: isLoopbackAddress(trimmed) };
  }
  const parts = trimmed.split(',').map((s) => s.trim()).filter(Boolean);
  if (parts.length === 0) throw VlmError.invalid('--vision-target', 'is empty');
  const hosts = parts.map(parseHostPort);
  return { configured, channel: parts.length === 1 ? parts[0]! : staticList(hosts), loopback: isLoopbackAddress(parts.join(',')) };
}

/** `host:port` or `[v6]:port`, its port dialable; checked here so that a typo fails the start, not every request. */
function parseHostPort(p: string): { raw: string; host: string } {
  const m = /^(?:\[([^\]]+)\]|([^:\s/[\]]+)):(\d+)$/.exec(p);
  if (m === null) throw VlmError.invalid('--vision-target', `'${p}' is not host:port ([address]:port for IPv6), a list of them, or a gRPC target such as dns:///vision.vlm.svc:50051`);
  checkPort(m[3]!, p);
  return { raw: p, host: m[1] ?? m[2]! };
}

function checkPort(port: string, target: string): void {
  const n = Number(port);
  if (!(n >= 1 && n <= 65535)) throw VlmError.invalid('--vision-target', `'${target}' has port ${port}; a port is 1 to 65535`);
}

function staticList(parts: readonly { raw: string; host: string }[]): string {
  const hosts = parts.map((p) => ({ raw: p.raw, family: isIP(p.host) }));
  const family = hosts[0]!.family;
  if (family === 0 || hosts.some((h) => h.family !== family)) {
    throw VlmError.invalid('--vision-target', 'a list must hold IP addresses of one family (ip:port,ip:port); for host names use one DNS name, e.g. dns:///vision.vlm.svc:50051');
  }
  return `${family === 4 ? 'ipv4' : 'ipv6'}:${hosts.map((h) => h.raw).join(',')}`;
}
