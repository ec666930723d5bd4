/**
 * Bearer tokens: a file of several, any one accepted, the first sent on, re-read while serving so a
 * token rotates without a restart or a moment in which either the old or the new one is refused.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { credentials, Metadata, status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseTokenFile, sentToken, type AuthTokens } from '../shared/auth-tokens';
import { configFrom, testConfig } from '../shared/config';
import { VlmError } from '../shared/errors';
import { VisionServiceClient, VisionServiceService, type VisionServiceServer } from '../gen/vlm/v1/vision_service';
import { BearerTokens } from '../services/common/bearer-tokens';
import { serviceCredentials, type ServiceCredentials } from '../services/common/credentials';
import { GrpcServer } from '../services/common/grpc-server';
import { unary } from '../services/common/server-stream';
import { recordingLogger, type LogLine } from './core-helpers';
import { ask, pairConfig, request, shapesImage } from './reliability-helpers';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import { languageClient } from '../services/language/client';
import type { RunningService } from '../services/common/lifecycle';

const dir = mkdtempSync(path.join(tmpdir(), 'vlm-tokens-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCount = 0;
function tokenFile(text: string): string {
  const file = path.join(dir, `tokens-${fileCount++}`);
  writeFileSync(file, text);
  return file;
}

function refusal(text: string): VlmError {
  try {
    parseTokenFile(text, '/etc/vlm/tokens');
  } catch (err) {
    return err as VlmError;
  }
  throw new Error('expected the file to be refused');
}

describe('the token file', () => {
  it('reads a file holding one token, as a single-token file always was (trailing newline and spaces dropped)', () => {
    expect(parseTokenFile('  s3cret-token  \n', 'f')).toEqual([{ name: 'line-1', token: 's3cret-token' }]);
  });

  it('reads named tokens in order, skipping blank lines and comments; the first is the one sent on', () => {
    const tokens = parseTokenFile('# rotation 2026-11\n\nnew   t0k3n-new\r\nold\tt0k3n-old\nunnamed-ok\n', 'f');
    expect(tokens).toEqual([
      { name: 'new', token: 't0k3n-new' },
      { name: 'old', token: 't0k3n-old' },
      { name: 'line-5', token: 'unnamed-ok' },
    ]);
    expect(sentToken({ file: 'f', tokens })).toBe('t0k3n-new');
  });

  it.each([
    ['', 'holds no token'],
    ['# only a comment\n\n', 'holds no token'],
    ['a b c\n', 'line 1: expected TOKEN or NAME TOKEN, found 3 fields'],
    ['x t0k3n-one\nx t0k3n-two\n', 'line 2: the name x is used twice'],
    ['a t0k3n-one\nb t0k3n-one\n', 'line 2: the same token as an earlier line'],
    ['a t0k3n-ünïcode\n', 'line 1: a token is visible ASCII characters only'],
    ['-bad t0k3n-one\n', 'line 1: a name is 1 to 63 letters'],
  ])('refuses %j as INVALID_ARGUMENT naming the file and line, never a token', (text, message) => {
    const err = refusal(text);
    expect(err).toBeInstanceOf(VlmError);
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toContain('/etc/vlm/tokens');
    expect(err.message).toContain(message);
    expect(err.message).not.toMatch(/t0k3n/);
  });
});

describe('configuration', () => {
  it('takes the tokens from --auth-token-file over VLM_AUTH_TOKEN, and one token from the variable alone', () => {
    const file = tokenFile('ci t0k3n-from-file\n');
    expect(configFrom({ 'auth-token-file': file }, { VLM_AUTH_TOKEN: 'from-env' }).rpc.auth).toEqual({ file, tokens: [{ name: 'ci', token: 't0k3n-from-file' }] });
    expect(configFrom({}, { VLM_AUTH_TOKEN: ' from-env\n' }).rpc.auth).toEqual({ file: null, tokens: [{ name: 'env', token: 'from-env' }] });
    expect(configFrom({}, {}).rpc.auth).toBeNull();
  });

  it('fails the start on a file it cannot read or parse', () => {
    expect(() => configFrom({ 'auth-token-file': path.join(dir, 'missing') }, {})).toThrow(/--auth-token-file: cannot read/);
    expect(() => configFrom({ 'auth-token-file': tokenFile('a b c\n') }, {})).toThrow(/line 1/);
  });
});

describe('re-reading the file', () => {
  const lines: LogLine[] = [];
  const log = recordingLogger(lines, 'auth');
  afterEach(() => void lines.splice(0));

  function load(text: string): { tokens: BearerTokens; file: string } {
    const file = tokenFile(text);
    return { tokens: new BearerTokens({ file, tokens: parseTokenFile(text, file) }, log), file };
  }

  it('matches a presented token to its name, and nothing else', () => {
    const { tokens } = load('new t0k3n-new\nold t0k3n-old\n');
    expect(tokens.match('t0k3n-old')).toBe('old');
    expect(tokens.match('t0k3n-new')).toBe('new');
    expect(tokens.match('t0k3n-ne')).toBeNull();
    expect(tokens.match('')).toBeNull();
  });

  it('applies a changed file, and the token sent on follows its first line', () => {
    const { tokens, file } = load('old t0k3n-old\n');
    expect(tokens.reload()).toBe(false);
    writeFileSync(file, 'new t0k3n-new\nold t0k3n-old\n');
    expect(tokens.reload()).toBe(true);
    expect(tokens.outgoing()).toBe('t0k3n-new');
    expect(tokens.match('t0k3n-old')).toBe('old');
    writeFileSync(file, 'new t0k3n-new\n');
    expect(tokens.reload()).toBe(true);
    expect(tokens.match('t0k3n-old')).toBeNull();
    expect(lines.map((l) => l.msg)).toEqual(['bearer tokens loaded', 'bearer tokens reloaded', 'bearer tokens reloaded']);
    expect(lines.at(-1)).toMatchObject({ names: ['new'], sends: 'new' });
  });

  it('keeps the tokens in use when the file is half-written, empty or gone, and says so without a token', () => {
    const { tokens, file } = load('old t0k3n-old\n');
    for (const broken of ['new t0k3n-new extra\n', '', null]) {
      if (broken === null) rmSync(file);
      else writeFileSync(file, broken);
      expect(tokens.reload()).toBe(false);
      expect(tokens.match('t0k3n-old')).toBe('old');
    }
    const warnings = lines.filter((l) => l.level === 'warn');
    expect(warnings).toHaveLength(3);
    expect(warnings[0]!.msg).toBe('bearer token reload skipped; keeping the tokens in use');
    expect(JSON.stringify(lines)).not.toMatch(/t0k3n/);
  });

  it('never re-reads a token given in VLM_AUTH_TOKEN', () => {
    const tokens = new BearerTokens({ file: null, tokens: [{ name: 'env', token: 't0k3n-env' }] }, log);
    expect(tokens.reload()).toBe(false);
    expect(tokens.outgoing()).toBe('t0k3n-env');
  });
});

describe('rotating a token on a serving service (SIGHUP)', () => {
  const file = tokenFile('old t0k3n-old\n');
  const lines: LogLine[] = [];
  let creds: ServiceCredentials;
  let server: GrpcServer;
  let client: VisionServiceClient;

  beforeAll(async () => {
    const auth: AuthTokens = { file, tokens: parseTokenFile('old t0k3n-old\n', file) };
    // A long poll: only SIGHUP re-reads the file within this test.
    const config = testConfig({ rpc: { auth }, tls: { reloadIntervalMs: 3_600_000 } });
    creds = serviceCredentials(config, recordingLogger(lines, 'vision'), false);
    const log = recordingLogger(lines, 'vision');
    const implementation: VisionServiceServer = {
      encode: () => undefined,
      getModelInfo: unary(async () => ({ model: undefined }), { log, defaultDeadlineMs: 5000 }),
    } as unknown as VisionServiceServer;
    server = new GrpcServer({
      serviceName: 'vlm.v1.VisionService',
      definition: VisionServiceService,
      implementation,
      protoFiles: ['vlm/v1/vision_service.proto'],
      log,
      maxReceiveMessageBytes: 1 << 20,
      maxSendMessageBytes: 1 << 20,
      auth: creds.tokens,
      shutdownGraceMs: 1000,
    });
    client = new VisionServiceClient(`127.0.0.1:${await server.listen('127.0.0.1', 0)}`, credentials.createInsecure());
  });
  afterAll(async () => {
    client.close();
    await server.stop();
    creds.close();
  });

  function call(token: string): Promise<number> {
    const md = new Metadata();
    md.set('authorization', `Bearer ${token}`);
    return new Promise((resolve) => client.getModelInfo({}, md, (err: ServiceError | null) => resolve(err?.code ?? GrpcCode.OK)));
  }

  it('accepts the old token, then both, then only the new one, with no restart', async () => {
    expect([await call('t0k3n-old'), await call('t0k3n-new')]).toEqual([GrpcCode.OK, GrpcCode.UNAUTHENTICATED]);
    writeFileSync(file, 'new t0k3n-new\nold t0k3n-old\n');
    process.emit('SIGHUP');
    expect([await call('t0k3n-old'), await call('t0k3n-new')]).toEqual([GrpcCode.OK, GrpcCode.OK]);
    writeFileSync(file, 'new t0k3n-new\n');
    process.emit('SIGHUP');
    expect([await call('t0k3n-old'), await call('t0k3n-new')]).toEqual([GrpcCode.UNAUTHENTICATED, GrpcCode.OK]);
    expect(lines.filter((l) => l.msg === 'bearer tokens reloaded')).toHaveLength(2);
    expect(JSON.stringify(lines)).not.toMatch(/t0k3n/);
  });
});

describe('rotating the token across the vision hop', () => {
  const visionFile = tokenFile('old t0k3n-old\n');
  const languageFile = tokenFile('old t0k3n-old\n');
  const lines: LogLine[] = [];
  let vision: RunningService;
  let language: RunningService;

  const auth = (file: string): AuthTokens => ({ file, tokens: parseTokenFile('old t0k3n-old\n', file) });

  beforeAll(async () => {
    vision = await startVisionService(pairConfig({ auth: auth(visionFile), tls: { reloadIntervalMs: 3_600_000 } }), { port: 0, log: recordingLogger(lines, 'vision') });
    language = await startLanguageService(pairConfig({ visionTarget: vision.address, auth: auth(languageFile), tls: { reloadIntervalMs: 3_600_000 } }), { port: 0, log: recordingLogger(lines, 'language') });
  });
  afterAll(async () => {
    await language?.stop();
    await vision?.stop();
  });

  async function generate(token: string): Promise<number> {
    const client = languageClient(language.address);
    const md = new Metadata();
    md.set('authorization', `Bearer ${token}`);
    try {
      return (await ask(client, request(await shapesImage(), { maxTokens: 2 }), { metadata: md })).error?.code ?? GrpcCode.OK;
    } finally {
      client.close();
    }
  }

  it('keeps answering while vision, then language, then the callers move to the new token', async () => {
    expect(await generate('t0k3n-old')).toBe(GrpcCode.OK);
    // 1. vision accepts both; 2. language sends the new one to vision and accepts both from callers.
    writeFileSync(visionFile, 'new t0k3n-new\nold t0k3n-old\n');
    writeFileSync(languageFile, 'new t0k3n-new\nold t0k3n-old\n');
    process.emit('SIGHUP');
    expect([await generate('t0k3n-old'), await generate('t0k3n-new')]).toEqual([GrpcCode.OK, GrpcCode.OK]);
    // 3. vision drops the old token: the hop already sends the new one.
    writeFileSync(visionFile, 'new t0k3n-new\n');
    process.emit('SIGHUP');
    expect(await generate('t0k3n-old')).toBe(GrpcCode.OK);
    // 4. the callers have moved; language drops the old token too.
    writeFileSync(languageFile, 'new t0k3n-new\n');
    process.emit('SIGHUP');
    expect([await generate('t0k3n-old'), await generate('t0k3n-new')]).toEqual([GrpcCode.UNAUTHENTICATED, GrpcCode.OK]);
    expect(JSON.stringify(lines)).not.toMatch(/t0k3n/);
  });

  it('answers INTERNAL, not UNAUTHENTICATED, when vision is rotated ahead of language (the caller did nothing wrong)', async () => {
    writeFileSync(visionFile, 'newer t0k3n-newer\n');
    process.emit('SIGHUP');
    expect(await generate('t0k3n-new')).toBe(GrpcCode.INTERNAL);
    expect(lines).toContainEqual(expect.objectContaining({ level: 'error', msg: 'internal error', error: expect.objectContaining({ chain: ["VlmError: the vision service refused this language service's credentials", 'gRPC status UNAUTHENTICATED: invalid bearer token'] }) }));
  });
});
