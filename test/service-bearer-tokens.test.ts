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
import type { Logger } from '../shared/log';
import { VisionServiceClient, VisionServiceService, type VisionServiceServer } from '../gen/vlm/v1/vision_service';
import { BearerTokens } from '../services/common/bearer-tokens';
import { serviceCredentials, type ServiceCredentials } from '../services/common/credentials';
import { GrpcServer } from '../services/common/grpc-server';
import { unary } from '../services/common/server-stream';
import { recordingLogger, type LogLine } from './core-helpers';
import { eventually, metadataWith } from './service-helpers';
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

/** A service whose GetModelInfo records the caller its handler was told (`ctx.caller`). */
function callerRecordingServer(auth: BearerTokens | null, callers: string[], log: Logger, acceptOnBehalfOf = false): GrpcServer {
  const implementation = {
    encode: () => undefined,
    getModelInfo: unary(async (_req, ctx) => (callers.push(ctx.caller), { model: undefined }), { log, defaultDeadlineMs: 5000 }),
  } as unknown as VisionServiceServer;
  return new GrpcServer({
    serviceName: 'vlm.v1.VisionService',
    definition: VisionServiceService,
    implementation,
    protoFiles: ['vlm/v1/vision_service.proto'],
    log,
    maxReceiveMessageBytes: 1 << 20,
    maxSendMessageBytes: 1 << 20,
    auth,
    acceptOnBehalfOf,
    shutdownGraceMs: 1000,
  });
}

/** The caller a fresh server's handler is told for one GetModelInfo carrying `headers`. */
async function callerSeen(auth: BearerTokens | null, headers: Record<string, string>): Promise<string | undefined> {
  const seen: string[] = [];
  const server = callerRecordingServer(auth, seen, recordingLogger([], 'service'));
  const client = new VisionServiceClient(`127.0.0.1:${await server.listen('127.0.0.1', 0)}`, credentials.createInsecure());
  try {
    await new Promise<void>((resolve, reject) => client.getModelInfo({}, metadataWith(headers), (err: ServiceError | null) => (err ? reject(err) : resolve())));
    expect(seen).toHaveLength(1);
    return seen[0];
  } finally {
    client.close();
    await server.stop();
  }
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
  it('reads a file holding one token alone, as a single-token file always was (named default; trailing newline and spaces dropped)', () => {
    expect(parseTokenFile('  s3cret-token-0123456789  \n', 'f')).toEqual([{ name: 'default', token: 's3cret-token-0123456789' }]);
  });

  it('reads named tokens in order, skipping blank lines and comments; the first is the one sent on', () => {
    const tokens = parseTokenFile('# rotation 2026-11\n\nnew   t0k3n-new-xxxxxxxx\r\nold\tt0k3n-old-xxxxxxxx\n', 'f');
    expect(tokens).toEqual([
      { name: 'new', token: 't0k3n-new-xxxxxxxx' },
      { name: 'old', token: 't0k3n-old-xxxxxxxx' },
    ]);
    expect(sentToken({ file: 'f', tokens })).toBe('t0k3n-new-xxxxxxxx');
  });

  it("reads a file of one token alone, the format before names, whatever the token's length", () => {
    expect(parseTokenFile('short\n', 'f')).toEqual([{ name: 'default', token: 'short' }]);
  });

  it.each([
    ['', 'holds no token'],
    ['# only a comment\n\n', 'holds no token'],
    ['a b c\n', 'line 1: expected NAME TOKEN, found 3 fields'],
    ['new t0k3n-new-xxxxxxxx\n\nt0k3n-unnamed-xxxxxxxx\n', 'line 3: a file of several tokens names each one'],
    ['x t0k3n-one-xxxxxxxx\n# x\nx t0k3n-two-xxxxxxxx\n', '/etc/vlm/tokens line 3: the same name as /etc/vlm/tokens line 1'],
    ['a t0k3n-one-xxxxxxxx\nb t0k3n-one-xxxxxxxx\n', 'line 2: the same token as /etc/vlm/tokens line 1'],
    ['a t0k3n-ünïcode-xxxxxxxx\n', 'line 1: a token is visible ASCII characters only'],
    ['-bad t0k3n-one-xxxxxxxx\n', 'line 1: a name is 1 to 63 letters'],
    // A token written before its name: the name would be accepted as a weak token and the token shown as a name.
    ['t0k3nXk3vQ9pLmN4rT7wZ2yB5cF8hJ1 dev\n', 'line 1: a token has at least 16 characters (are the name and the token swapped?)'],
    // So is a short token once it has a name (an old token moved into a file of several to rotate it).
    ['old short\nnew t0k3n-new-xxxxxxxx\n', 'line 1: a token has at least 16 characters'],
    // And a generated secret written before a readable name of 16 or more characters.
    ['t0k3nXk3vQ9pLmN4rT7wZ2yB5cF8hJ1aBcDeFgHiJkL analytics-backend-prod\n', 'line 1: a name of 43 characters beside a token of 22 (are the name and the token swapped?'],
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
    const file = tokenFile('ci t0k3n-from-file-xxxxxxxx\n');
    expect(path.isAbsolute(file)).toBe(true);
    expect(configFrom({ 'auth-token-file': file }, { VLM_AUTH_TOKEN: 'from-env' }).rpc.auth).toEqual({ file, tokens: [{ name: 'ci', token: 't0k3n-from-file-xxxxxxxx' }] });
    expect(configFrom({}, { VLM_AUTH_TOKEN: ' from-env\n' }).rpc.auth).toEqual({ file: null, tokens: [{ name: 'env', token: 'from-env' }] });
    expect(configFrom({}, {}).rpc.auth).toBeNull();
  });

  it('fails the start on a file it cannot read or parse', () => {
    expect(() => configFrom({ 'auth-token-file': path.join(dir, 'missing') }, {})).toThrow(/--auth-token-file: cannot read/);
    expect(() => configFrom({ 'auth-token-file': tokenFile('a b c\n') }, {})).toThrow(/line 1/);
    expect(() => configFrom({}, { VLM_AUTH_TOKEN: 'two words' })).toThrow(/VLM_AUTH_TOKEN: a token is visible ASCII characters only/);
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
    const { tokens } = load('new t0k3n-new-xxxxxxxx\nold t0k3n-old-xxxxxxxx\n');
    expect(tokens.match('t0k3n-old-xxxxxxxx')).toBe('old');
    expect(tokens.match('t0k3n-new-xxxxxxxx')).toBe('new');
    expect(tokens.match('t0k3n-ne-xxxxxxxx')).toBeNull();
    expect(tokens.match('')).toBeNull();
  });

  it('applies a changed file, and the token sent on follows its first line', () => {
    const { tokens, file } = load('old t0k3n-old-xxxxxxxx\n');
    expect(tokens.reload()).toBe(false);
    writeFileSync(file, 'new t0k3n-new-xxxxxxxx\nold t0k3n-old-xxxxxxxx\n');
    expect(tokens.reload()).toBe(true);
    expect(tokens.outgoing()).toBe('t0k3n-new-xxxxxxxx');
    expect(tokens.match('t0k3n-old-xxxxxxxx')).toBe('old');
    writeFileSync(file, 'new t0k3n-new-xxxxxxxx\n');
    expect(tokens.reload()).toBe(true);
    expect(tokens.match('t0k3n-old-xxxxxxxx')).toBeNull();
    expect(lines.map((l) => l.msg)).toEqual(['bearer tokens loaded', 'bearer tokens reloaded', 'bearer tokens reloaded']);
    expect(lines.at(-1)).toMatchObject({ names: ['new'], sends: 'new' });
  });

  it('keeps the tokens in use when the file is half-written, empty or gone, and says so without a token', () => {
    const { tokens, file } = load('old t0k3n-old-xxxxxxxx\n');
    for (const broken of ['new t0k3n-new-xxxxxxxx extra\n', '', null]) {
      if (broken === null) rmSync(file);
      else writeFileSync(file, broken);
      expect(tokens.reload()).toBe(false);
      expect(tokens.match('t0k3n-old-xxxxxxxx')).toBe('old');
    }
    const warnings = lines.filter((l) => l.level === 'warn');
    expect(warnings).toHaveLength(3);
    expect(warnings[0]!.msg).toBe('bearer token reload skipped; keeping the tokens in use');
    expect(JSON.stringify(lines)).not.toMatch(/t0k3n/);
  });

  it('follows the file by polling, without a signal (what a Kubernetes Secret update relies on)', async () => {
    const file = tokenFile('old t0k3n-old-xxxxxxxx\n');
    const config = testConfig({ rpc: { auth: { file, tokens: parseTokenFile('old t0k3n-old-xxxxxxxx\n', file) } }, tls: { reloadIntervalMs: 100 } });
    const creds = serviceCredentials(config, log, false);
    try {
      writeFileSync(file, 'new t0k3n-new-xxxxxxxx\n');
      await eventually(() => creds.tokens!.match('t0k3n-new-xxxxxxxx') === 'new', 5000);
      expect(creds.tokens!.match('t0k3n-old-xxxxxxxx')).toBeNull();
    } finally {
      creds.close();
    }
  });

  it('listens for SIGHUP only while a file is to be re-read, and stops on close', () => {
    const before = process.listenerCount('SIGHUP');
    const fromFile = serviceCredentials(testConfig({ rpc: { auth: { file: tokenFile('old t0k3n-old-xxxxxxxx\n'), tokens: [{ name: 'old', token: 't0k3n-old-xxxxxxxx' }] } } }), log, false);
    expect(process.listenerCount('SIGHUP')).toBe(before + 1);
    fromFile.close();
    const fromVariable = serviceCredentials(testConfig({ rpc: { auth: { file: null, tokens: [{ name: 'env', token: 't0k3n-env-xxxxxxxx' }] } } }), log, false);
    expect(process.listenerCount('SIGHUP')).toBe(before);
    fromVariable.close();
  });

  it('never re-reads a token given in VLM_AUTH_TOKEN', () => {
    const tokens = new BearerTokens({ file: null, tokens: [{ name: 'env', token: 't0k3n-env-xxxxxxxx' }] }, log);
    expect(tokens.reload()).toBe(false);
    expect(tokens.outgoing()).toBe('t0k3n-env-xxxxxxxx');
  });
});

describe('rotating a token on a serving service (SIGHUP)', () => {
  const file = tokenFile('old t0k3n-old-xxxxxxxx\n');
  const lines: LogLine[] = [];
  let creds: ServiceCredentials;
  let server: GrpcServer;
  let client: VisionServiceClient;
  const callers: string[] = [];

  beforeAll(async () => {
    const auth: AuthTokens = { file, tokens: parseTokenFile('old t0k3n-old-xxxxxxxx\n', file) };
    // A long poll: only SIGHUP re-reads the file within this test.
    const config = testConfig({ rpc: { auth }, tls: { reloadIntervalMs: 3_600_000 } });
    creds = serviceCredentials(config, recordingLogger(lines, 'vision'), false);
    server = callerRecordingServer(creds.tokens, callers, recordingLogger(lines, 'vision'), true);
    client = new VisionServiceClient(`127.0.0.1:${await server.listen('127.0.0.1', 0)}`, credentials.createInsecure());
  });
  afterAll(async () => {
    client.close();
    await server.stop();
    creds.close();
  });

  function call(token: string, claimed?: string, onBehalfOf?: string): Promise<number> {
    const md = new Metadata();
    md.set('authorization', `Bearer ${token}`);
    if (claimed !== undefined) md.set('x-vlm-caller', claimed);
    if (onBehalfOf !== undefined) md.set('x-vlm-on-behalf-of', onBehalfOf);
    return new Promise((resolve) => client.getModelInfo({}, md, (err: ServiceError | null) => resolve(err?.code ?? GrpcCode.OK)));
  }

  it('accepts the old token, then both, then only the new one, with no restart', async () => {
    expect([await call('t0k3n-old-xxxxxxxx'), await call('t0k3n-new-xxxxxxxx')]).toEqual([GrpcCode.OK, GrpcCode.UNAUTHENTICATED]);
    writeFileSync(file, 'new t0k3n-new-xxxxxxxx\nold t0k3n-old-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect([await call('t0k3n-old-xxxxxxxx'), await call('t0k3n-new-xxxxxxxx')]).toEqual([GrpcCode.OK, GrpcCode.OK]);
    writeFileSync(file, 'new t0k3n-new-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect([await call('t0k3n-old-xxxxxxxx'), await call('t0k3n-new-xxxxxxxx')]).toEqual([GrpcCode.UNAUTHENTICATED, GrpcCode.OK]);
    expect(lines.filter((l) => l.msg === 'bearer tokens reloaded')).toHaveLength(2);
    expect(JSON.stringify(lines)).not.toMatch(/t0k3n/);
  });

  it("tells the handler the accepted token's name as the caller (the fair queue's key), whatever the client claims", async () => {
    callers.splice(0);
    const token = creds.tokens!.outgoing();
    expect(await call(token, 'someone-else')).toBe(GrpcCode.OK);
    expect(callers).toEqual([creds.tokens!.match(token)]);
    expect(callers).not.toEqual(['someone-else']);
  });

  it("names a forwarded caller (the language service's own, on the hop) under the token that sent it, and ignores one that is not a name", async () => {
    callers.splice(0);
    const token = creds.tokens!.outgoing();
    const name = creds.tokens!.match(token)!;
    expect(await call(token, undefined, 'light')).toBe(GrpcCode.OK);
    expect(await call(token, undefined, 'not a name!')).toBe(GrpcCode.OK);
    // Under the token that sent it: never another token's.
    expect(callers).toEqual([`${name}/light`, name]);
  });
});

describe('a forwarded caller at the front door', () => {
  it('is ignored by a service that does not accept it (the language service): a client cannot take a turn per sub-name', async () => {
    const tokens = new BearerTokens({ file: null, tokens: [{ name: 'app', token: 't0k3n-app-xxxxxxxx' }] }, recordingLogger([], 'language'));
    expect(await callerSeen(tokens, { authorization: 'Bearer t0k3n-app-xxxxxxxx', 'x-vlm-on-behalf-of': 'sub-1' })).toBe('app');
  });
});

describe('callers without authentication', () => {
  it('are one anonymous caller: a caller named in the metadata is not believed', async () => {
    expect(await callerSeen(null, { 'x-vlm-caller': 'vip', 'x-vlm-on-behalf-of': 'vip' })).toBe('');
  });
});

describe('rotating the token across the vision hop', () => {
  const visionFile = tokenFile('old t0k3n-old-xxxxxxxx\n');
  const languageFile = tokenFile('old t0k3n-old-xxxxxxxx\n');
  const lines: LogLine[] = [];
  let vision: RunningService;
  let language: RunningService;

  const auth = (file: string): AuthTokens => ({ file, tokens: parseTokenFile('old t0k3n-old-xxxxxxxx\n', file) });

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
    expect(await generate('t0k3n-old-xxxxxxxx')).toBe(GrpcCode.OK);
    // 1. vision accepts both (language still sends the old one and accepts only it).
    writeFileSync(visionFile, 'new t0k3n-new-xxxxxxxx\nold t0k3n-old-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect([await generate('t0k3n-old-xxxxxxxx'), await generate('t0k3n-new-xxxxxxxx')]).toEqual([GrpcCode.OK, GrpcCode.UNAUTHENTICATED]);
    // 2. language sends the new one to vision and accepts both from callers.
    writeFileSync(languageFile, 'new t0k3n-new-xxxxxxxx\nold t0k3n-old-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect([await generate('t0k3n-old-xxxxxxxx'), await generate('t0k3n-new-xxxxxxxx')]).toEqual([GrpcCode.OK, GrpcCode.OK]);
    // 3. vision drops the old token: the hop already sends the new one.
    writeFileSync(visionFile, 'new t0k3n-new-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect(await generate('t0k3n-old-xxxxxxxx')).toBe(GrpcCode.OK);
    // 4. the callers have moved; language drops the old token too.
    writeFileSync(languageFile, 'new t0k3n-new-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect([await generate('t0k3n-old-xxxxxxxx'), await generate('t0k3n-new-xxxxxxxx')]).toEqual([GrpcCode.UNAUTHENTICATED, GrpcCode.OK]);
    expect(JSON.stringify(lines)).not.toMatch(/t0k3n/);
  });

  it('answers INTERNAL, not UNAUTHENTICATED, when vision is rotated ahead of language (the caller did nothing wrong)', async () => {
    writeFileSync(visionFile, 'newer t0k3n-newer-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect(await generate('t0k3n-new-xxxxxxxx')).toBe(GrpcCode.INTERNAL);
    expect(lines).toContainEqual(expect.objectContaining({ level: 'error', msg: 'internal error', error: expect.objectContaining({ chain: ["VlmError: the vision service refused this language service's credentials", 'gRPC status UNAUTHENTICATED: invalid bearer token'] }) }));
  });
});

describe('two callers sharing a language service', () => {
  const text = 'heavy t0k3n-heavy-xxxxxxxx\nlight t0k3n-light-xxxxxxxx\n';
  const languageLines: LogLine[] = [];
  const file = tokenFile(text);
  let vision: RunningService;
  let language: RunningService;

  beforeAll(async () => {
    const auth: AuthTokens = { file, tokens: parseTokenFile(text, file) };
    vision = await startVisionService(pairConfig({ auth }), { port: 0, log: recordingLogger([], 'vision') });
    language = await startLanguageService(pairConfig({ visionTarget: vision.address, auth, queueSize: 2 }), { port: 0, log: recordingLogger(languageLines, 'language') });
  });
  afterAll(async () => {
    await language?.stop();
    await vision?.stop();
  });

  it("answers the light caller while the heavy caller fills the queue: its token's name reaches the pool, which sheds the heavy caller's newest request", async () => {
    const client = languageClient(language.address);
    const as = (token: string): Metadata => {
      const md = new Metadata();
      md.set('authorization', `Bearer ${token}`);
      return md;
    };
    try {
      const image = await shapesImage();
      // One running and two waiting: the language pool is full, all of it the heavy caller's.
      const heavy = [0, 1, 2].map(() => ask(client, request(image, { maxTokens: 200 }), { metadata: as('t0k3n-heavy-xxxxxxxx') }));
      await eventually(() => language.backend.pool.stats.queued === 2, 10_000);
      const light = await ask(client, request(image, { maxTokens: 2 }), { metadata: as('t0k3n-light-xxxxxxxx') });
      expect(light.error).toBeNull();
      // The heavy caller's only failure is the shed request, and the pool names both callers: the
      // token names got there through the service. (The running request's 200 tokens outlast the
      // light request's arrival by far; the pool tests cover every order of events.)
      const failures = (await Promise.all(heavy)).flatMap((o) => (o.error ? [[o.error.code, o.error.details]] : []));
      expect(failures).toEqual([[GrpcCode.RESOURCE_EXHAUSTED, expect.stringMatching(/^shed from the full queue to admit another caller's request: this caller had 2 of the 2 waiting/)]]);
      expect(languageLines).toContainEqual(expect.objectContaining({ msg: 'shed a queued job to admit a lighter caller', caller: 'heavy', for: 'light' }));
    } finally {
      client.close();
    }
  });
});

describe('a hop token apart from the client tokens (--vision-token-file)', () => {
  const hopFile = tokenFile('hop t0k3n-hop-xxxxxxxx\n');
  const clientsFile = tokenFile('app t0k3n-app-xxxxxxxx\n');
  const lines: LogLine[] = [];
  let vision: RunningService;
  let language: RunningService;
  const auth = (file: string, text: string): AuthTokens => ({ file, tokens: parseTokenFile(text, file) });

  beforeAll(async () => {
    // As k8s/ mounts them: vision holds only the hop token; language accepts the clients' and sends the hop's.
    vision = await startVisionService(pairConfig({ auth: auth(hopFile, 'hop t0k3n-hop-xxxxxxxx\n'), tls: { reloadIntervalMs: 3_600_000 } }), { port: 0, log: recordingLogger(lines, 'vision') });
    const base = pairConfig({ visionTarget: vision.address, auth: auth(clientsFile, 'app t0k3n-app-xxxxxxxx\n'), tls: { reloadIntervalMs: 3_600_000 } });
    language = await startLanguageService({ ...base, rpc: { ...base.rpc, visionAuth: auth(hopFile, 'hop t0k3n-hop-xxxxxxxx\n') } }, { port: 0, log: recordingLogger(lines, 'language') });
  });
  afterAll(async () => {
    await language?.stop();
    await vision?.stop();
  });

  async function generate(token: string): Promise<number> {
    const client = languageClient(language.address);
    try {
      return (await ask(client, request(await shapesImage(), { maxTokens: 2 }), { metadata: metadataWith({ authorization: `Bearer ${token}` }) })).error?.code ?? GrpcCode.OK;
    } finally {
      client.close();
    }
  }

  it('is read from the file the flag names', () => {
    expect(configFrom({ 'vision-token-file': hopFile }, {}).rpc.visionAuth).toEqual({ file: hopFile, tokens: [{ name: 'hop', token: 't0k3n-hop-xxxxxxxx' }] });
    expect(configFrom({}, {}).rpc.visionAuth).toBeNull();
    expect(() => configFrom({ 'vision-token-file': path.join(dir, 'missing') }, {})).toThrow(/^--vision-token-file: cannot read /);
    expect(() => configFrom({ 'vision-token-file': tokenFile('a b c\n') }, {})).toThrow(/^--vision-token-file: .* line 1/);
  });

  it('answers a client with its own token across the hop; a client token opens nothing at vision, and the hop token nothing at language', async () => {
    expect(await generate('t0k3n-app-xxxxxxxx')).toBe(GrpcCode.OK);
    expect(await generate('t0k3n-hop-xxxxxxxx')).toBe(GrpcCode.UNAUTHENTICATED);
    const direct = new VisionServiceClient(vision.address, credentials.createInsecure());
    const code = await new Promise<number>((resolve) => direct.getModelInfo({}, metadataWith({ authorization: 'Bearer t0k3n-app-xxxxxxxx' }), (err: ServiceError | null) => resolve(err?.code ?? GrpcCode.OK)));
    direct.close();
    expect(code).toBe(GrpcCode.UNAUTHENTICATED);
  });

  it('rotates like the shared file did: both services re-read it, language sends its first line', async () => {
    writeFileSync(hopFile, 'hop2 t0k3n-hop2-xxxxxxxx\nhop t0k3n-hop-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect(await generate('t0k3n-app-xxxxxxxx')).toBe(GrpcCode.OK);
    writeFileSync(hopFile, 'hop2 t0k3n-hop2-xxxxxxxx\n');
    process.emit('SIGHUP');
    expect(await generate('t0k3n-app-xxxxxxxx')).toBe(GrpcCode.OK); // sent hop2, the only one vision holds now
    expect(JSON.stringify(lines)).not.toMatch(/t0k3n/);
  });
});
