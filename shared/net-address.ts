/** Addresses as the services listen on and dial them: host:port, loopback, and what stays on this host. */

/** `host:port`, an IPv6 host in brackets. */
export function hostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * The host a client on this host dials to reach a server listening on `host`: a wildcard listens on
 * every interface, loopback included; a specific address is the only one listening.
 */
export function loopbackFor(host: string): string {
  return host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' || host === '[::]' ? '::1' : host;
}

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
