/**
 * `vlm ask` as a client: method parameters from --param, the language service found at
 * --language-port / VLM_LANGUAGE_PORT when no --target is given, and option errors that say what to do.
 */
import { createServer, type AddressInfo } from 'node:net';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { vlm } from './service-helpers';
import { paramsFromFlags, samplingFromFlags, withHint } from '../cli/ask';
import { VlmError } from '../shared/errors';

const ROOT = path.resolve(__dirname, '..');
const IMAGE = path.join(ROOT, 'models/tiny-llava-shapes/eval/images/0000.png');


describe('vlm ask', () => {
  it('reads --param name=value as numbers, flags or text', () => {
    expect(paramsFromFlags(['lambda=0.5', 'version=v1', 'penalty=true', 'start_layer=3', 'note='])).toEqual({ lambda: 0.5, version: 'v1', penalty: true, start_layer: 3, note: '' });
    expect(() => paramsFromFlags(['lambda'])).toThrow(VlmError);
    expect(() => paramsFromFlags(['=1'])).toThrow(/expected name=value/);
  });

  it('takes a --seed across the whole uint64 range the API takes, and nothing past it', () => {
    expect(samplingFromFlags({ seed: '18446744073709551615' }).seed).toBe(2n ** 64n - 1n);
    expect(samplingFromFlags({ seed: '0' }).seed).toBe(0n);
    expect(samplingFromFlags({}).seed).toBeUndefined();
    for (const bad of ['18446744073709551616', '-1', '1.5', 'x', '']) expect(() => samplingFromFlags({ seed: bad }), bad).toThrow(/--seed: expected an integer in \[0, 18446744073709551615\]/);
  });

  it('dials the language port from VLM_LANGUAGE_PORT (or --language-port) without --target', async () => {
    const port = 1; // nothing listens there (a privileged port no test binds)
    for (const [args, env] of [[['--language-port', String(port)], {}], [[], { VLM_LANGUAGE_PORT: String(port) }]] as const) {
      const r = vlm(['ask', '--image', IMAGE, '--question', 'what color?', ...args], env);
      expect(r.status).toBe(1);
      // Said for the person at the terminal: where it looked, and what to do.
      expect(r.stderr.trim()).toBe(`UNAVAILABLE: cannot reach the language service at 127.0.0.1:${port} (ECONNREFUSED); start it (npm start, or vlm serve all) or point --target / --language-port at it`);
    }
  });

  it('says which variables carry the token when the service refuses the call for it, and asks after vision when it is missing', () => {
    const refused = withHint(new VlmError('UNAUTHENTICATED', 'missing bearer token: send "authorization: Bearer <token>" metadata'), '127.0.0.1:50052') as VlmError;
    expect([refused.code, refused.message]).toEqual(['UNAUTHENTICATED', 'missing bearer token: send "authorization: Bearer <token>" metadata; set VLM_AUTH_TOKEN, or VLM_AUTH_TOKEN_FILE, to a token the service accepts']);
    const noVision = withHint(new VlmError('UNAVAILABLE', 'the vision service is unavailable (no replica answered); retry later', { reason: 'VISION_UNAVAILABLE', retryDelayMs: 1000 }), '127.0.0.1:50052') as VlmError;
    expect(noVision.message).toBe("the vision service is unavailable (no replica answered); retry later (is the vision service running? the language service's log names the address it tried)");
    const other = new VlmError('RESOURCE_EXHAUSTED', 'all 1 inference workers are busy', { reason: 'QUEUE_FULL' });
    expect(withHint(other, '127.0.0.1:50052')).toBe(other); // the service's own words, kept
  });

  it('says what a target that never completes a gRPC connection may be, instead of grpc-js\'s "Waiting for LB pick"', async () => {
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const target = `127.0.0.1:${(silent.address() as AddressInfo).port}`;
    try {
      const r = vlm(['ask', '--image', IMAGE, '--question', 'q', '--target', target, '--deadline-ms', '500']);
      expect(r.stderr.trim().split('\n').at(-1)).toBe(`DEADLINE_EXCEEDED: no gRPC connection to ${target} within the deadline: nothing answering there (a firewall dropping packets), something that is not a gRPC server, or TLS on one side only (--ca or --tls for a TLS service)`);
      expect(r.status).toBe(1);
    } finally {
      silent.close();
    }
  });

  it('warns before sending a token in plaintext off this host, and refuses --server-name without TLS', () => {
    // Nothing listens at 192.0.2.1 (TEST-NET-1): the call fails, after the warning, within its deadline.
    const remote = vlm(['ask', '--image', IMAGE, '--question', 'q', '--target', '192.0.2.1:50052', '--deadline-ms', '300'], { VLM_AUTH_TOKEN: 'a-token-of-16-chars-or-more' });
    expect(remote.stderr).toMatch(/^warning: sending the bearer token to 192\.0\.2\.1:50052 in plaintext; add --tls \(or --ca\) if the service speaks TLS\n/);
    const local = vlm(['ask', '--image', IMAGE, '--question', 'q', '--target', '127.0.0.1:1', '--deadline-ms', '300'], { VLM_AUTH_TOKEN: 'a-token-of-16-chars-or-more' });
    expect(local.stderr).not.toMatch(/warning/);
    const named = vlm(['ask', '--image', IMAGE, '--question', 'q', '--server-name', 'vlm.example']);
    expect(named.stderr.trim()).toBe('INVALID_ARGUMENT: --server-name: names the certificate to expect over TLS; add --tls (or --ca)');
  });

  it('names an unknown option and where the options are listed', () => {
    const r = vlm(['ask', '--image', IMAGE, '--question', 'q', '--lambda', '0.5']);
    expect(r.stderr.trim()).toBe("INVALID_ARGUMENT: unknown option --lambda; --help lists this command's options");
    expect(r.status).toBe(1);
  });

  it("refuses the services' settings it would take and ignore, and lists only its own config flags", () => {
    const r = vlm(['ask', '--image', IMAGE, '--question', 'q', '--provider', 'cuda:0']);
    expect(r.stderr.trim()).toBe("INVALID_ARGUMENT: --provider is a setting of the services (vlm serve), which this command does not take; --help lists its options");
    expect(r.status).toBe(1);
    const help = vlm(['ask', '--help']).stdout;
    const config = help.slice(help.indexOf('config flags')).split('\n').slice(1).filter((l) => l.startsWith('  --')).map((l) => l.trim().split(' ')[0]);
    expect(config.sort()).toEqual(['--auth-token-file', '--deadline-ms', '--language-port', '--log-level']);
  });

  it('names the TLS flag whose file it cannot read, before dialling anything', () => {
    const r = vlm(['ask', '--image', IMAGE, '--question', 'q', '--ca', '/nonexistent/ca.crt']);
    expect(r.stderr.trim()).toMatch(/^INVALID_ARGUMENT: --ca: cannot read \/nonexistent\/ca\.crt: /);
    expect(r.status).toBe(1);
  });

  it('explains how to give a value that starts with a dash', () => {
    const r = vlm(['serve', 'all', '--queue-size', '-1']);
    expect(r.stderr.trim()).toBe("INVALID_ARGUMENT: option --queue-size needs a value (one that starts with '-' is written --queue-size=VALUE)");
  });
});
