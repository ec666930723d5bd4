import { randomInt } from 'node:crypto';
import { createServer } from 'node:net';

/**
 * Ports below the kernel's ephemeral range (Linux: 32768-60999): the ones it hands out for port 0
 * and for outgoing connections (whose TIME_WAIT would block a later listen) never land here, so a
 * port found free stays free until the test binds it, unless another test picks the same one at
 * random (about one in 12,000 per pair of picks).
 */
const FROM = 20_000;
const TO = 32_000;

/**
 * A port that was free a moment ago on every local address, for what must be named before the
 * process that binds it starts: the vision port language is started with beside vision (child
 * services), a test's restart on the same address, the metrics and health ports (no port-0 form). A
 * process that can bind port 0 and report it should do that instead.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = randomInt(FROM, TO);
    if (await isFree(port)) return port;
  }
}

/** Whether `port` can be bound on every IPv4 address now. */
export function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '0.0.0.0', () => srv.close(() => resolve(true)));
  });
}
