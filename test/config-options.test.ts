/**
 * Config options as the operator sets them: every integer bounded on both sides (a timer past 2^31-1
 * ms fires at once), the model hash pinned in its one format, serve all's thread share per worker,
 * and the address language dials for vision on this host.
 */
import { describe, expect, it, vi } from 'vitest';
import { coLocatedServiceEnv, configFrom, parseCommandLine, testConfig } from '../shared/config';
import { localAddress } from '../shared/net-address';
import { parseVisionTarget, visionTargetOf } from '../services/language/vision-target';
import { transportOptions } from '../services/common/grpc-server';
import { receiveLimit } from '../services/common/message-limits';

// A 16-core host, so that a share per worker differs from a share per service.
vi.mock('node:os', async (importOriginal) => {
  const os = await importOriginal<typeof import('node:os')>();
  return { ...os, default: { ...os, availableParallelism: () => 16 }, availableParallelism: () => 16 };
});

const TIMER_MAX = 2 ** 31 - 1;

describe('integer options', () => {
  it('refuse a millisecond value a Node timer cannot hold, naming the flag or variable and the range', () => {
    expect(() => configFrom({ 'deadline-ms': '3000000000' }, {})).toThrow(/^--deadline-ms: expected an integer from 1 to 2147483647, got "3000000000"$/);
    expect(() => configFrom({}, { VLM_SHUTDOWN_GRACE_MS: String(TIMER_MAX + 1) })).toThrow(/^VLM_SHUTDOWN_GRACE_MS: expected an integer from 0 to 2147483647/);
    expect(() => configFrom({ 'tls-reload-ms': '1e10' }, {})).toThrow(/^--tls-reload-ms: expected an integer from 100 to 2147483647/);
    expect(() => configFrom({}, { VLM_MAX_CONNECTION_AGE_MS: '9007199254740991' })).toThrow(/^VLM_MAX_CONNECTION_AGE_MS: /);
    const c = configFrom({ 'deadline-ms': String(TIMER_MAX), 'shutdown-grace-ms': String(TIMER_MAX) }, {});
    expect(c.limits.deadlineMs).toBe(TIMER_MAX);
    expect(c.rpc.shutdownGraceMs).toBe(TIMER_MAX);
  });

  it.each([
    [{ 'queue-size': '' }, {}, '--queue-size'],
    [{ 'metrics-port': ' ' }, {}, '--metrics-port'],
    [{ 'max-inflight-calls': '0x10' }, {}, '--max-inflight-calls'],
    [{}, { VLM_QUEUE_SIZE: ' ' }, 'VLM_QUEUE_SIZE'],
    [{}, { VLM_WORKERS: '2.0' }, 'VLM_WORKERS'],
  ])('refuse what is not decimal digits instead of reading it as a number (%j %j): a blank is not 0', (flags, env, named) => {
    expect(() => configFrom(flags, env)).toThrow(new RegExp(`^${named}: expected an integer from`));
  });

  it('keep the transport\'s receive limit a 32-bit gRPC length at the image and prompt limits\' maxima, and refuse an image limit past them', () => {
    const c = configFrom({ 'max-image-bytes': String(1000 * 1024 * 1024), 'max-prompt-chars': '1000000' }, {});
    expect(receiveLimit(c.limits)).toBeLessThanOrEqual(TIMER_MAX);
    expect(() => configFrom({ 'max-image-bytes': String(1024 * 1024 * 1024) }, {})).toThrow(/^--max-image-bytes: expected an integer from 65536 to 1048576000/);
  });

  it('take --max-inflight-calls (0, the default: no limit) through to the servers both services build', () => {
    expect(configFrom({}, {}).rpc.maxInFlightCalls).toBe(0);
    const c = configFrom({}, { VLM_MAX_INFLIGHT_CALLS: '32' });
    expect(c.rpc.maxInFlightCalls).toBe(32);
    expect(transportOptions(c, { server: null, tokens: null }).maxInFlightCalls).toBe(32);
    expect(() => configFrom({ 'max-inflight-calls': '-1' }, {})).toThrow(/^--max-inflight-calls: expected an integer from 0 to /);
  });

  it('refuse ports past 65535 and thread counts past any machine as INVALID_ARGUMENT', () => {
    for (const flag of ['vision-port', 'language-port', 'health-port', 'metrics-port']) {
      expect(() => parseCommandLine([`--${flag}`, '65536'], {}, {})).toThrow(new RegExp(`^--${flag}: expected an integer from 0 to 65535`));
      expect(() => parseCommandLine([`--${flag}`, '65535'], {}, {})).not.toThrow();
    }
    expect(() => parseCommandLine(['--workers', '100000'], {}, {})).toThrow(/--workers: expected an integer from 1 to/);
    expect(() => parseCommandLine(['--intra-op-threads', '50051'], {}, {})).toThrow(/--intra-op-threads: expected an integer from 0 to/);
  });
});

describe('--model-hash / VLM_MODEL_HASH', () => {
  const hash = `sha256:${'ab'.repeat(32)}`;

  it('is read from the flag or the variable (case-insensitively), and absent means any bundle', () => {
    expect(configFrom({ 'model-hash': hash.toUpperCase().replace('SHA256', 'sha256') }, {}).model.expectedHash).toBe(hash);
    expect(configFrom({}, { VLM_MODEL_HASH: hash }).model.expectedHash).toBe(hash);
    expect(configFrom({}, {}).model.expectedHash).toBeNull();
  });

  it('must be sha256: and 64 hex digits, as a manifest writes content_hash', () => {
    expect(() => configFrom({}, { VLM_MODEL_HASH: 'abab' })).toThrow(/^VLM_MODEL_HASH: expected sha256:<64 hex digits>/);
    expect(() => configFrom({ 'model-hash': 'ab'.repeat(32) }, {})).toThrow(/^--model-hash: expected sha256:<64 hex digits>/);
  });
});

describe('serve all thread share', () => {
  it('gives each worker of each of the two services cores / 2 / workers intra-op threads, at least one', () => {
    expect(coLocatedServiceEnv({}, 2, {}).VLM_INTRA_OP_THREADS).toBe('8');
    expect(coLocatedServiceEnv({ workers: '4' }, 2, {}).VLM_INTRA_OP_THREADS).toBe('2');
    expect(coLocatedServiceEnv({}, 2, { VLM_WORKERS: '3' }).VLM_INTRA_OP_THREADS).toBe('2');
    expect(coLocatedServiceEnv({ workers: '64' }, 2, {}).VLM_INTRA_OP_THREADS).toBe('1');
    // A count the operator chose is the children's to read; serve all leaves it alone.
    expect(coLocatedServiceEnv({ workers: '4' }, 2, { VLM_INTRA_OP_THREADS: '6' }).VLM_INTRA_OP_THREADS).toBe('6');
  });
});

describe('the vision address language dials without --vision-target', () => {
  const target = (host: string, visionPort = 50051, visionTarget = '') => visionTargetOf(testConfig({ services: { host, visionPort }, rpc: { visionTarget } })).configured;

  it('is where vision listens: the given host, loopback for a wildcard', () => {
    expect(target('127.0.0.2')).toBe('127.0.0.2:50051');
    expect(target('0.0.0.0', 6000)).toBe('127.0.0.1:6000');
    expect(target('::')).toBe('[::1]:50051');
    expect(target('::1')).toBe('[::1]:50051');
    // Every spelling of a wildcard is one (vision bound to all interfaces while language dialled '::0').
    for (const any of ['::0', '[::]', '0:0:0:0:0:0:0:0']) expect(target(any)).toBe('[::1]:50051');
    for (const any of ['0', '', '00.0.0.0']) expect(target(any)).toBe('127.0.0.1:50051');
    expect(target('127.0.0.2', 50051, 'dns:///vision:50051')).toBe('dns:///vision:50051');
    expect(localAddress('vision.local', 7)).toBe('vision.local:7');
  });

  it('dials one name as given, and a list of IP addresses of one family as one balanced static target', () => {
    expect(parseVisionTarget('dns:///vision.vlm.svc:50051').channel).toBe('dns:///vision.vlm.svc:50051');
    expect(parseVisionTarget(' 10.0.0.1:1, 10.0.0.2:2 ').channel).toBe('ipv4:10.0.0.1:1,10.0.0.2:2');
    expect(parseVisionTarget('[fd00::1]:1,[fd00::2]:2').channel).toBe('ipv6:[fd00::1]:1,[fd00::2]:2');
    expect(parseVisionTarget('10.0.0.1:1,').channel).toBe('10.0.0.1:1');
    // a target naming a resolver scheme is grpc-js's to read, lists included
    expect(parseVisionTarget('ipv4:10.0.0.1:1,10.0.0.2:2').channel).toBe('ipv4:10.0.0.1:1,10.0.0.2:2');
    expect(parseVisionTarget('unix:/run/vlm/vision.sock')).toMatchObject({ channel: 'unix:/run/vlm/vision.sock', loopback: true });
  });

  it('refuses an empty target, a list entry without a port, a list of names and a list of mixed families, naming --vision-target', () => {
    for (const [t, why] of [
      [' , ', /is empty/],
      ['10.0.0.1:1,10.0.0.2', /'10.0.0.2' is not host:port/],
      ['a.svc:1,b.svc:2', /IP addresses of one family/],
      ['10.0.0.1:1,[fd00::2]:2', /IP addresses of one family/],
      // What would fail every request later, with the service reporting SERVING meanwhile.
      ['127.0.0.1:99999', /'127.0.0.1:99999' has port 99999; a port is 1 to 65535/],
      ['vision.vlm.svc:0', /has port 0/],
      ['dns:///vision.vlm.svc:70000', /has port 70000/],
      ['http://::::', /is not host:port/],
      ['vision.vlm.svc', /is not host:port/],
      ['fd00::1:50051', /is not host:port \(\[address\]:port for IPv6\)/],
    ] as const) {
      expect(() => parseVisionTarget(t)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/--vision-target/) }));
      expect(() => parseVisionTarget(t)).toThrow(why);
    }
  });

  it('cannot be guessed for vision port 0 (any free port), so that is INVALID_ARGUMENT asking for a target', () => {
    expect(() => target('127.0.0.1', 0)).toThrow(/--vision-target: is required when --vision-port is 0/);
  });
});
