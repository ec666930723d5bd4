/**
 * The benchmark and demo commands judge their numeric flags before they start anything: a value the
 * engine would refuse used to mark every bench cell "infeasible" (exit 0), and a demo with no items
 * started both services, asked nothing and exited 0.
 */
import { createServer, type AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { vlm } from './service-helpers';
import { serveFlags } from '../cli/child-services';

describe('numeric flags of bench accuracy and demo', () => {
  it.each([
    [['bench', 'accuracy', '--limit', '0'], /--limit: expected an integer in \[1, /],
    [['bench', 'accuracy', '--limit', '2', '--max-new-tokens', '300'], /--max-new-tokens: expected an integer in \[1, 256\], got "300"/],
    [['bench', 'accuracy', '--limit', '2', '--seed', '1.5'], /--seed: expected an integer in \[0, /],
    [['demo', '--items', 'abc'], /--items: expected an integer in \[1, /],
    [['demo', '--items', '0'], /--items: expected an integer in \[1, /],
    // Output paths judged before the run, not after minutes of it.
    [['bench', 'accuracy', '--limit', '2', '--docs', '/dev/null'], /--docs: cannot write into \/dev\/null/],
    [['bench', 'latency', '--limit', '1', '--spans', '/tmp'], /--spans: cannot write \/tmp: it is a folder/],
  ])('vlm %j is INVALID_ARGUMENT, exit 1, with nothing on stdout', (args, message) => {
    const r = vlm(args);
    expect(r.stderr).toMatch(/^INVALID_ARGUMENT: /);
    expect(r.stderr).toMatch(message);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
  });
});

describe('settings these commands do not take', () => {
  it.each([
    // Each starts its services on free loopback ports: a port given here would be dropped.
    [['demo', '--vision-port', '6000'], '--vision-port is chosen by this command for the services it starts (plaintext, on free loopback ports)'],
    [['bench', 'load', '--health-port', '9000'], '--health-port is chosen by this command'],
    [['bench', 'latency', '--tls-cert', 'cert.pem'], '--tls-cert is chosen by this command'],
    // eval and bench accuracy run the model in their own process: there is no service to configure.
    [['bench', 'accuracy', '--metrics-port', '9000'], '--metrics-port is a setting of the services (vlm serve); this command runs the model in its own process'],
    [['eval', '--no-warmup'], '--no-warmup is a setting of the services (vlm serve); this command runs the model in its own process'],
  ])('vlm %j is refused, naming the flag and why', (args, message) => {
    const r = vlm(args);
    expect(r.stderr).toMatch(/^INVALID_ARGUMENT: /);
    expect(r.stderr).toContain(message);
    expect(r.status).toBe(1);
  });

  it('passes the services their own settings, a switch turned off included, and none of the command\'s flags', () => {
    const own = { items: { type: 'string' }, json: { type: 'boolean' } } as const;
    expect(serveFlags(['--items', '3', '--no-warmup', '--workers', '2', '--json', '--queue-size=4', '--model', 'm'], own)).toEqual(['--no-warmup', '--workers', '2', '--queue-size=4']);
  });
});

describe('serve all', () => {
  it.each([
    ['--metrics-port', 'VLM_METRICS_PORT'],
    ['--health-port', 'VLM_HEALTH_PORT'],
  ])('refuses %s 65535 before starting anything: language would take 65536', (flag, variable) => {
    const r = vlm(['serve', 'all', flag, '65535']);
    expect(r.stderr.trim()).toBe(`INVALID_ARGUMENT: ${flag} / ${variable}: serve all gives the language service the next port, so this must be at most 65534, got 65535`);
    expect(r.status).toBe(1);
  });

  it.each([
    [['--metrics-port', '46003', '--health-port', '46004'], /--metrics-port \+ 1 \(language\): is 46004, which --health-port \(vision\) already takes/],
    [['--vision-port', '46010', '--language-port', '46010'], /--language-port: is 46010, which --vision-port already takes/],
    [['--health-port', '46020', '--language-port', '46021'], /--health-port \+ 1 \(language\): is 46021, which --language-port already takes/],
  ])('refuses %j before starting anything: two services on one port would race for it', (flags, message) => {
    const r = vlm(['serve', 'all', ...flags]);
    expect(r.stderr.trim()).toMatch(new RegExp(`^INVALID_ARGUMENT: ${message.source}`));
    expect(r.status).toBe(1);
  });

  it('lets vision (on loopback) and language (on a specific other address) use one port number', () => {
    // 192.0.2.1 (TEST-NET-1) is no address of this host: language then fails to listen, which shows the check let it try.
    const r = vlm(['serve', 'all', '--model', 'test/fixtures/random-bundle', '--host', '192.0.2.1', '--vision-port', '46110', '--language-port', '46110', '--metrics-port', '0', '--health-port', '0']);
    expect(r.stderr).not.toMatch(/already takes/);
    expect(r.stderr).toMatch(/192\.0\.2\.1/);
    expect(r.status).toBe(1);
  });
});

describe('serve vision', () => {
  it('does not start when its /metrics port is taken: the autoscalers read the queue depth there', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as AddressInfo).port;
    try {
      const r = vlm(['serve', 'vision', '--model', 'test/fixtures/random-bundle', '--host', '127.0.0.1', '--vision-port', '0', '--health-port', '0', '--metrics-port', String(port)]);
      expect(r.stderr.trim().split('\n').at(-1)).toMatch(new RegExp(`^FAILED_PRECONDITION: --metrics-port ${port}: /metrics cannot listen \\(listen EADDRINUSE.*pick a free port, or 0 for no endpoint$`));
      expect(r.status).toBe(1);
    } finally {
      taken.close();
    }
  });
});
