/** Addresses as the services listen on and dial them: host:port, loopback, and what stays on this host. */
import { BlockList, isIPv6 } from 'node:net';

/** `host:port`, an IPv6 host in brackets. */
export function hostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * The host a client on this host dials to reach a server listening on `host`: a wildcard listens on
 * every interface, loopback included; a specific address is the only one listening.
 */
export function loopbackFor(host: string): string {
  const wildcard = wildcardFamily(host);
  return wildcard === 'ipv4' ? '127.0.0.1' : wildcard === 'ipv6' ? '::1' : host;
}

/** A host without the brackets of an IPv6 literal ("[::1]" -> "::1"). */
export function unbracketed(host: string): string {
  return host.replace(/^\[(.*)\]$/, '$1');
}

/** Whether `host` means every interface ('', 0.0.0.0, ::, ::0, [::]...). */
export function isWildcard(host: string): boolean {
  return wildcardFamily(host) !== null;
}

/**
 * Where `serve all` has vision listen: loopback whatever --host is (only language, on this host,
 * dials it), IPv6 only for an IPv6 loopback host (a host with IPv6 off may have no ::1).
 */
export function visionListenHost(host: string): string {
  return unbracketed(host) === '::1' ? '::1' : '127.0.0.1';
}

/** Every spelling of "all interfaces": '', 0.0.0.0, ::, ::0, [::]... */
function wildcardFamily(host: string): 'ipv4' | 'ipv6' | null {
  const address = unbracketed(host);
  // The resolver reads 0, 0.0 and 00.0.0.0 as 0.0.0.0 too (inet_aton's forms).
  if (address === '' || /^0+(\.0+){0,3}$/.test(address)) return 'ipv4';
  if (isIPv6(address)) return ANY_IPV6.check(address, 'ipv6') ? 'ipv6' : null;
  return null;
}

const ANY_IPV6 = new BlockList();
ANY_IPV6.addAddress('::', 'ipv6');

/**
 * Whether every address of `target` stays on this host: a gRPC target (a scheme, a list, ports), or a
 * listen host. Loopback addresses, `localhost` and unix sockets; a wildcard is not one.
 */
export function isLoopbackAddress(target: string): boolean {
  if (target.startsWith('unix:')) return true;
  const addresses = target.replace(/^(dns|ipv4|ipv6):(\/\/[^/]*\/)?/i, '').split(',');
  return addresses.every((a) => /^(localhost|127\.\d+\.\d+\.\d+|\[?::1\]?)(:\d+)?$/i.test(a.trim()));
}

/** The address a client on this host dials to reach a server listening on `host`:`port`. */
export function localAddress(host: string, port: number): string {
  return hostPort(loopbackFor(host), port);
}
