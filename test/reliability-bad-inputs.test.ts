/**
 * No input takes the pair down. The committed corpus (test/fixtures/bad-inputs/index.json: broken,
 * hostile and merely unusual images, and out-of-range request fields) goes through Generate on the
 * real pair: every bad case gets its status with a message naming the problem, every unusual but
 * valid image is answered, and after each case both services are SERVING and answer the next
 * request exactly as before. Malformed tensor streams from a scripted vision server reach the
 * language service's stream handling and get DATA_LOSS / UNAVAILABLE (MODEL_MISMATCH). A seeded fuzz run
 * mutates valid encoded requests and randomises field values: never INTERNAL, never a hang. Per
 * connection: the advertised stream limit, and vision's connection age (GOAWAY) without failed calls.
 */
import { readFileSync } from 'node:fs';
import { connect } from 'node:http2';
import * as path from 'node:path';
import { credentials, Server, status as GrpcCode, type ServerWritableStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLanguageService } from '../services/language/server';
import { startVisionService } from '../services/vision/server';
import type { RunningService } from '../services/common/lifecycle';
import { decodeStatusDetails, decodeViolations } from '../services/common/status';
import { HOP_RETRIES } from '../services/language/vision-client';
import { ENVELOPE_BYTES, receiveLimit } from '../services/common/message-limits';
import { envelopeBytes } from '../services/common/lenient-decode';
import { ElementType, type ReductionPolicy as WirePolicy } from '../gen/vlm/v1/common';
import { GenerateRequest, LanguageServiceClient } from '../gen/vlm/v1/language_service';
import { VisionServiceClient, VisionServiceService, type EncodeRequest, type EncodeResponse, type EncodeSummary } from '../gen/vlm/v1/vision_service';
import { bindLoopback, collect, healthStatus } from './service-helpers';
import { ask, pairConfig, rawGenerate, recordingLogger, request, ROOT, shapesImage, type LogLine, type Outcome } from './reliability-helpers';
import { seededRandom } from '../shared/methods/numeric';

const CORPUS = path.join(ROOT, 'test/fixtures/bad-inputs');

interface CorpusCase {
  readonly name: string;
  readonly image: string;
  readonly request?: Record<string, unknown>;
  readonly expect: 'OK' | 'INVALID_ARGUMENT';
  readonly message?: string;
  readonly field?: string;
  readonly why?: string;
}

interface Corpus {
  readonly limits: { maxImageBytes: number; maxImagePixels: number; maxPromptChars: number; maxNewTokens: number; maxAspectRatio: number };
  readonly cases: readonly CorpusCase[];
}

const corpus = JSON.parse(readFileSync(path.join(CORPUS, 'index.json'), 'utf8')) as Corpus;

/** A valid PNG signature followed by zeros: one byte over the image limit. */
function oversize(limit: number): Buffer {
  const b = Buffer.alloc(limit + 1);
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]).copy(b);
  return b;
}

const UTF8_MARKER = '\u0001\u0002\u0003';

/** The case's request as encoded bytes: JSON fields over a valid request, with the corpus's raw forms. */
function encodeCase(c: CorpusCase, valid: Buffer): Buffer {
  const image = c.image === 'valid' ? valid : c.image === 'oversize' ? oversize(corpus.limits.maxImageBytes) : readFileSync(path.join(CORPUS, c.image));
  const fields = { ...(c.request ?? {}) };
  const appendHex = typeof fields['$appendHex'] === 'string' ? (fields['$appendHex'] as string) : '';
  delete fields['$appendHex'];
  let rawPrompt: Buffer | null = null;
  const p = fields['prompt'];
  if (typeof p === 'object' && p !== null) {
    const spec = p as { repeat?: string; times?: number; utf8Bytes?: string };
    if (spec.utf8Bytes !== undefined) {
      rawPrompt = Buffer.from(spec.utf8Bytes, 'hex');
      fields['prompt'] = UTF8_MARKER.repeat(Math.ceil(rawPrompt.length / 3)).slice(0, rawPrompt.length);
    } else fields['prompt'] = spec.repeat!.repeat(spec.times!);
  }
  const base = request(image, { maxTokens: 2 });
  const json = { prompt: base.prompt, sampling: { maxTokens: 2 }, ...fields };
  const message = { ...GenerateRequest.fromJSON(json), image };
  let bytes = Buffer.from(GenerateRequest.encode(message).finish());
  if (rawPrompt !== null) {
    const marker = Buffer.from(message.prompt, 'utf8');
    const at = bytes.indexOf(marker);
    rawPrompt.copy(bytes, at);
  }
  if (appendHex) bytes = Buffer.concat([bytes, Buffer.from(appendHex, 'hex')]);
  return bytes;
}

describe('bad and unusual inputs through the real pair', () => {
  let vision: RunningService;
  let language: RunningService;
  let client: LanguageServiceClient;
  let valid: Buffer;
  let reference: string;

  beforeAll(async () => {
    const limits = { maxImageBytes: corpus.limits.maxImageBytes };
    vision = await startVisionService(pairConfig(limits), { port: 0 });
    language = await startLanguageService(pairConfig({ ...limits, visionTarget: vision.address }), { port: 0 });
    client = new LanguageServiceClient(language.address, credentials.createInsecure());
    valid = await shapesImage();
    const first = await ask(client, request(valid, { maxTokens: 2 }));
    expect(first.error).toBeNull();
    reference = first.final!.text;
  });

  afterAll(async () => {
    client?.close();
    await language?.stop();
    await vision?.stop();
  });

  /** Both SERVING, and the reference question answered exactly as before. */
  async function stillHealthy(): Promise<void> {
    expect(await healthStatus(vision.address)).toBe('SERVING');
    expect(await healthStatus(language.address)).toBe('SERVING');
    const out: Outcome = await ask(client, request(valid, { maxTokens: 2 }));
    expect(out.error).toBeNull();
    expect(out.final?.text).toBe(reference);
  }

  it(`holds at least 50 cases covering every format, request field and unusual image kind`, () => {
    expect(corpus.cases.length).toBeGreaterThanOrEqual(50);
    const names = corpus.cases.map((c) => c.name).join(' ');
    for (const kind of ['png', 'jpeg', 'webp', 'gif', 'tiff']) {
      expect(names).toMatch(new RegExp(`${kind}-truncated`));
      expect(names).toMatch(new RegExp(`${kind}-(header-only|corrupt|bad|zero)`));
    }
    for (const kind of ['animated.gif', 'animated.webp', 'multipage.tiff', 'cmyk.jpeg', 'gray16.png', 'rgba.png', 'gray.jpeg', 'palette.png', 'exif-rotated.jpeg', 'tiny-1x1.png', 'declares-50000x50000', 'bomb', 'aspect-', 'prompt-oversized', 'prompt-invalid-utf8', 'image-oversize']) {
      expect(names).toContain(kind);
    }
  });

  const counts = { rejected: 0, answered: 0 };
  for (const c of corpus.cases) {
    it(`${c.name}: ${c.expect === 'OK' ? `answered (${c.why})` : `INVALID_ARGUMENT${c.message ? ` "${c.message}"` : ''}`}`, async () => {
      const out = await rawGenerate(language.address, encodeCase(c, valid));
      if (c.expect === 'OK') {
        expect(out.code, out.details).toBe(GrpcCode.OK);
        expect(out.text.length).toBeGreaterThan(0);
        counts.answered++;
      } else {
        expect(out.code, out.details).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(c.message, 'every refused case names what its message must say').toBeTruthy();
        expect(out.details).toContain(c.message);
        // Every message names what it judged.
        expect(out.details).toMatch(/image|prompt|sampling|policy|limits|request|budget|method/);
        if (c.field) expect(decodeViolations(out.metadata).map((v) => v.field)).toContain(c.field);
        counts.rejected++;
      }
      await stillHealthy();
    });
  }

  it('a misspelt method parameter is INVALID_ARGUMENT naming it, instead of running with the default', async () => {
    const policy = { visionMethod: 'ficoco-v', params: { lamda: { kind: { $case: 'number' as const, number: 0.9 } } } };
    const out = await ask(client, request(valid, { maxTokens: 2, policy }));
    expect(out.error?.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(decodeViolations(out.error!.metadata)).toEqual([{ field: 'policy.params[lamda]', description: expect.stringContaining('epsilon, lambda, penalty, start_layer, window') }]);
  });

  describe('caller strings far too long to repeat', () => {
    const long = 'x'.repeat(40_000);
    const cases: Array<[string, Partial<WirePolicy>]> = [
      ['policy.mode', { mode: long }],
      ['policy.preset', { preset: long }],
      ['policy.vision_method', { visionMethod: long }],
      ['policy.language_method', { languageMethod: long }],
      ['text value of a policy.params entry', { languageMethod: 'sparsevlm', params: { version: { kind: { $case: 'text', text: long } } } }],
      ['policy.params name', { params: { [long]: { kind: { $case: 'number', number: 1 } } } }],
    ];
    for (const [what, policy] of cases) {
      it(`a 40000-character ${what} is INVALID_ARGUMENT, repeating only a short prefix`, async () => {
        // A status too large for the client's trailers never arrives: the call would end at its
        // deadline as DEADLINE_EXCEEDED instead.
        const out = await ask(client, request(valid, { maxTokens: 2, policy }), { deadlineMs: 5000 });
        expect(out.error?.code, out.error?.details.slice(0, 200)).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(out.error!.details.length).toBeLessThan(1000);
        expect(out.error!.details).toContain('x'.repeat(64));
        expect(out.error!.details).not.toContain('x'.repeat(65));
        for (const v of decodeViolations(out.error!.metadata)) expect(v.field.length + v.description.length).toBeLessThan(1000);
      });
    }

    it('the echo says how long the value was', async () => {
      const out = await ask(client, request(valid, { maxTokens: 2, policy: { mode: long } }), { deadlineMs: 5000 });
      expect(out.error?.details).toContain("got 'xxxx");
      expect(out.error?.details).toContain('…\' (40000 characters)');
    });
  });

  // A report, not a test: each case is judged by its own test above.
  afterAll(() => console.log(`bad-input corpus: ${corpus.cases.length} cases, ${counts.rejected} rejected with INVALID_ARGUMENT, ${counts.answered} unusual images answered`));

  describe('malformed tensor streams from a scripted vision server', () => {
    let genuine: EncodeResponse[];
    let script: EncodeResponse[] = [];
    /** Encode calls the scripted vision received, and the model hash each named in its metadata. */
    let calls: Array<string | undefined> = [];
    let fake: Server;
    let front: RunningService;
    let frontClient: LanguageServiceClient;

    beforeAll(async () => {
      const visionClient = new VisionServiceClient(vision.address, credentials.createInsecure());
      const got = await collect<EncodeResponse>(visionClient.encode({ image: valid, policy: undefined, limits: { rowsPerChunk: 4 } }));
      visionClient.close();
      genuine = got.messages;
      expect(genuine.map((m) => m.part?.$case)).toEqual(['header', 'chunk', 'chunk', 'chunk', 'chunk', 'summary']);
      fake = new Server();
      fake.addService(VisionServiceService, {
        encode: (call: ServerWritableStream<EncodeRequest, EncodeResponse>) => {
          calls.push(call.metadata.get('x-vlm-expected-model')[0] as string | undefined);
          for (const m of script) call.write(m);
          call.end();
        },
        getModelInfo: (_call: unknown, cb: (e: null, r: object) => void) => cb(null, {}),
      });
      const port = await bindLoopback(fake);
      front = await startLanguageService(pairConfig({ visionTarget: `127.0.0.1:${port}` }), { port: 0 });
      frontClient = new LanguageServiceClient(front.address, credentials.createInsecure());
    });

    afterAll(async () => {
      frontClient?.close();
      await front?.stop();
      fake?.forceShutdown();
    });

    const header = (over: Record<string, unknown>): EncodeResponse => {
      const h = genuine[0]!.part!.$case === 'header' ? genuine[0]!.part!.header : undefined;
      return { part: { $case: 'header', header: { ...h!, ...over } } };
    };
    const chunks = (): EncodeResponse[] => genuine.slice(1, 5);
    const summary = (): EncodeResponse => genuine[5]!;

    /** A self-consistent header for the first `rows` rows of the genuine tensor, as a vision service that resolved `rows` would send. */
    const rowsHeader = (rows: number): EncodeResponse => {
      const h = genuine[0]!.part!.$case === 'header' ? genuine[0]!.part!.header : undefined;
      return header({ tokenCount: rows, shape: [rows, 48], origin: h!.origin.slice(0, rows), chunkCount: Math.ceil(rows / 4), schedule: { ...h!.schedule!, outputTokens: rows } });
    };
    const skew = /both services must resolve the same schedule .*rollout/;

    // The fifth entry is the request's policy (none: no reduction, 16 rows expected).
    const streams: Array<[string, () => EncodeResponse[], GrpcCode, RegExp, Partial<WirePolicy>?]> = [
      ['the genuine stream (control)', () => genuine, GrpcCode.OK, /.*/],
      ['wrong dtype (float16 for a float32 model)', () => [header({ dtype: ElementType.ELEMENT_TYPE_FLOAT16 }), ...chunks(), summary()], GrpcCode.UNAVAILABLE, /float16 tokens but this language service runs float32/],
      ['unknown dtype', () => [header({ dtype: 99 }), ...chunks(), summary()], GrpcCode.UNAVAILABLE, /element type 99/],
      ['wrong width', () => [header({ width: 32, shape: [16, 32] }), ...chunks(), summary()], GrpcCode.UNAVAILABLE, /width 32/],
      ['another bundle (content hash)', () => [header({ contentHash: 'sha256:0000' }), ...chunks(), summary()], GrpcCode.UNAVAILABLE, /sha256:0000/],
      ['shape disagreeing with token_count', () => [header({ shape: [15, 48] }), ...chunks(), summary()], GrpcCode.DATA_LOSS, /shape \[15, 48\]/],
      ['more rows than the model has patches', () => [header({ tokenCount: 40, shape: [40, 48], origin: [...Array(40).keys()], chunkCount: 10 }), ...chunks(), summary()], GrpcCode.DATA_LOSS, /more than the model's 16/],
      ['a missing chunk', () => [header({}), ...chunks().filter((_, i) => i !== 2), summary()], GrpcCode.DATA_LOSS, /chunk 3 where chunk 2 was due/],
      ['a repeated chunk', () => [header({}), ...chunks().slice(0, 2), chunks()[1]!, ...chunks().slice(2), summary()], GrpcCode.DATA_LOSS, /missing or repeated/],
      ['an extra chunk', () => [header({}), ...chunks(), { part: { $case: 'chunk', chunk: { index: 4, rowOffset: 16, rowCount: 1, data: Buffer.alloc(192) } } }, summary()], GrpcCode.DATA_LOSS, /beyond the 4/],
      ['a chunk with the wrong byte count', () => [header({}), ...chunks().slice(0, 3), { part: { $case: 'chunk', chunk: { index: 3, rowOffset: 12, rowCount: 4, data: Buffer.alloc(100) } } }, summary()], GrpcCode.DATA_LOSS, /100 bytes/],
      ['no summary', () => [header({}), ...chunks()], GrpcCode.DATA_LOSS, /without a summary/],
      ['chunks but no header', () => [...chunks(), summary()], GrpcCode.DATA_LOSS, /before the header/],
      ['two headers', () => [header({}), header({}), ...chunks(), summary()], GrpcCode.DATA_LOSS, /second header/],
      ['an empty stream', () => [], GrpcCode.DATA_LOSS, /without a header/],
      ['a message after the summary', () => [...genuine, chunks()[0]!], GrpcCode.DATA_LOSS, /after the summary/],
      ['an empty message', () => [header({}), { part: undefined }], GrpcCode.DATA_LOSS, /no header, chunk or summary/],
      ['a NaN timing in the summary', () => [header({}), ...chunks(), { part: { $case: 'summary', summary: { ...(summary().part as { summary: EncodeSummary }).summary, timingsMs: { vision: NaN } } } }], GrpcCode.DATA_LOSS, /timings_ms\["vision"\] is NaN/],
      ['negative FLOPs in the summary', () => [header({}), ...chunks(), { part: { $case: 'summary', summary: { ...(summary().part as { summary: EncodeSummary }).summary, flops: { vision: -1 } } } }], GrpcCode.DATA_LOSS, /flops\["vision"\] is -1/],
      // grpc-js's receive limit ends the hop first: a broken stream, not "your request was too large".
      ['a chunk over the hop\'s 4 MiB receive limit', () => [header({}), { part: { $case: 'chunk', chunk: { index: 0, rowOffset: 0, rowCount: 4, data: Buffer.alloc(5 << 20) } } }, ...chunks().slice(1), summary()], GrpcCode.DATA_LOSS, /vision stream: a message larger than this hop's receive limit \(\d+ vs 4194304\)/],
      // The row count is held to the schedule the language service resolved before the hop.
      ['fewer rows than resolved, consistently announced', () => [rowsHeader(12), ...chunks().slice(0, 3), summary()], GrpcCode.UNAVAILABLE, /ran none with 12 visual tokens but this language service resolved none with 16/],
      ['no rows at all, consistently announced', () => [rowsHeader(0), summary()], GrpcCode.UNAVAILABLE, skew],
      ['all 16 rows for a request resolved to 8', () => genuine, GrpcCode.UNAVAILABLE, /ran none with 16 visual tokens but this language service resolved random with 8/, { visionMethod: 'random', budget: { $case: 'budgetTokens', budgetTokens: 8 } }],
      ['a header without its schedule', () => [header({ schedule: undefined }), ...chunks(), summary()], GrpcCode.UNAVAILABLE, /without the schedule it ran/],
      ['token_count disagreeing with its own schedule', () => [header({ tokenCount: 12, shape: [12, 48], origin: [...Array(12).keys()], chunkCount: 3 }), ...chunks().slice(0, 3), summary()], GrpcCode.DATA_LOSS, /token_count 12 disagrees with the header's own schedule/],
    ];
    for (const [name, make, code, why, policy] of streams) {
      it(`${name}: ${GrpcCode[code]}`, async () => {
        script = make();
        calls = [];
        const out = await ask(frontClient, request(valid, { maxTokens: 2, ...(policy ? { policy } : {}) }));
        expect(out.error?.code ?? GrpcCode.OK, out.error?.details).toBe(code);
        if (code !== GrpcCode.OK) expect(out.error?.details).toMatch(why);
        // Another model or version is a rollout in progress: retryable later, with the reason to branch on.
        if (code === GrpcCode.UNAVAILABLE) {
          expect(decodeStatusDetails(out.error?.metadata)).toMatchObject({ reason: 'MODEL_MISMATCH', retryDelayMs: 1000 });
          // The hop tried again, twice (here on the same, only replica), then gave up.
          expect(calls).toHaveLength(1 + HOP_RETRIES);
        } else expect(calls).toHaveLength(1);
        // Every call named the model the language service runs, so a vision of another one can refuse it early.
        expect(new Set(calls)).toEqual(new Set([front.backend.model.manifest.content_hash]));
        expect(front.backend.pool.stats.busy).toBe(0);
        expect(front.activeCalls()).toBe(0);
        expect(await healthStatus(front.address)).toBe('SERVING');
      });
    }
  });

  describe('fuzzing Generate requests (seeded, bounded)', () => {
    const ALLOWED = new Set([GrpcCode.OK, GrpcCode.INVALID_ARGUMENT]);

    function mutate(bytes: Buffer, rand: () => number): Buffer {
      const b = Buffer.from(bytes);
      const op = Math.floor(rand() * 5);
      const at = Math.floor(rand() * b.length);
      if (op === 0) {
        for (let i = 0; i < 1 + Math.floor(rand() * 8); i++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
        return b;
      }
      if (op === 1) return b.subarray(0, at);
      if (op === 2) return Buffer.concat([b.subarray(0, at), Buffer.from(Array.from({ length: 1 + Math.floor(rand() * 16) }, () => Math.floor(rand() * 256))), b.subarray(at)]);
      if (op === 3) return Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + Math.floor(rand() * 32)))]);
      // Flip bits in the message's first bytes: tags and lengths.
      const head = Math.min(b.length, 24);
      b[Math.floor(rand() * head)] ^= 1 << Math.floor(rand() * 8);
      return b;
    }

    const uint32 = (x: number): number => (Number.isFinite(x) ? Math.abs(Math.floor(x)) % 2 ** 32 : 0);

    function randomFields(rand: () => number): Buffer {
      const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
      const num = (): number => pick([0, -1, 1, 0.5, 2, 3, 100, 1e9, -1e9, NaN, Infinity, -Infinity, 2 ** 31, Math.floor(rand() * 64)]);
      const req = GenerateRequest.fromPartial({
        image: valid,
        prompt: pick(['', 'What color?', 'x'.repeat(Math.floor(rand() * 6000)), '\u0000', 'é'.repeat(50), '🙂?']),
        sampling: { temperature: rand() < 0.5 ? num() : undefined, topP: rand() < 0.5 ? num() : undefined, maxTokens: rand() < 0.5 ? pick([0, 1, 2, 3, 257, 4e9]) : 2 },
        policy: {
          visionMethod: pick(['', 'none', 'ficoco-v', 'tome', 'random', 'nope']),
          languageMethod: pick(['', 'none', 'fastv', 'sparsevlm', 'ficoco-l', 'x']),
          mode: pick(['', 'clean', 'exact', '?']),
          preset: pick(['', '', 'ficoco-vl', 'bad']),
          budget: rand() < 0.3 ? undefined : rand() < 0.5 ? { $case: 'budgetTokens', budgetTokens: uint32(num()) } : { $case: 'budgetPercent', budgetPercent: num() },
        },
      });
      return Buffer.from(GenerateRequest.encode(req).finish());
    }

    it('answers every mutated or randomised request with OK or INVALID_ARGUMENT, and stays healthy', async () => {
      // Fuzz cases are reproducible from their seed (the same mulberry32 the methods use).
      const rand = seededRandom(20240611);
      const seedBytes = Buffer.from(GenerateRequest.encode(request(valid, { maxTokens: 2, policy: { visionMethod: 'ficoco-v', budget: { $case: 'budgetTokens', budgetTokens: 8 } } })).finish());
      const rest = { ...request(valid, { maxTokens: 2, policy: { visionMethod: 'ficoco-v', budget: { $case: 'budgetTokens', budgetTokens: 8 } } }), image: Buffer.alloc(0) };
      const restBytes = Buffer.from(GenerateRequest.encode(rest).finish());
      const imageField = Buffer.from(GenerateRequest.encode({ ...rest, prompt: '', sampling: undefined, policy: undefined, image: valid }).finish());
      const tally = new Map<string, number>();
      const N = 240;
      for (let i = 0; i < N; i++) {
        // Thirds: the whole message mutated (mostly the image), everything but the image mutated
        // (fields may come in any order, so the intact image field is prepended), random field values.
        const bytes = i % 3 === 0 ? mutate(seedBytes, rand) : i % 3 === 1 ? Buffer.concat([imageField, mutate(restBytes, rand)]) : randomFields(rand);
        const out = await rawGenerate(language.address, bytes, 10_000);
        const name = GrpcCode[out.code] ?? String(out.code);
        tally.set(name, (tally.get(name) ?? 0) + 1);
        expect(ALLOWED.has(out.code), `case ${i}: ${name} ${out.details}`).toBe(true);
      }
      console.log(`fuzz: ${N} requests -> ${JSON.stringify(Object.fromEntries(tally))}`);
      expect(language.backend.pool.stats.busy + vision.backend.pool.stats.busy).toBe(0);
      await stillHealthy();
    });
  });
});

describe('a request whose fields besides the image and prompt are huge (a policy of millions of params)', () => {
  it('is refused from its top-level field sizes before it is decoded, and the service answers others meanwhile', async () => {
    const language = await startLanguageService(pairConfig({ visionTarget: '127.0.0.1:1' }), { port: 0 });
    try {
      const params = Object.fromEntries(Array.from({ length: 200_000 }, (_, i) => [`p${i}`, { kind: { $case: 'number' as const, number: i } }]));
      const bytes = Buffer.from(GenerateRequest.encode({ ...request(Buffer.from([0x89, 0x50])), policy: { ...request(Buffer.alloc(0)).policy!, params } }).finish());
      expect(bytes.length).toBeGreaterThan(2 << 20);
      expect(envelopeBytes(bytes, new Set([1, 2]))).toBeGreaterThan(ENVELOPE_BYTES);
      // As sent, and behind what the walk cannot follow but the decoder reads past: an empty group
      // (field 15), and an image whose length is 2^32 (the decoder keeps its low 32 bits: 0).
      for (const prefix of [[], [0x7b, 0x7c], [0x0a, 0x80, 0x80, 0x80, 0x80, 0x10]]) {
        const started = performance.now();
        const out = await rawGenerate(language.address, Buffer.concat([Buffer.from(prefix), bytes]));
        expect(out.code, `prefix ${prefix.join(',')}`).toBe(GrpcCode.INVALID_ARGUMENT);
        expect(out.details).toBe(`the request's fields besides the image and the prompt hold more than ${ENVELOPE_BYTES} bytes; no valid vlm.v1.LanguageService.Generate request needs that many`);
        expect(performance.now() - started).toBeLessThan(5000);
      }
      expect(await healthStatus(language.address)).toBe('SERVING');
    } finally {
      await language.stop();
    }
  });

  it('counts only what is not bounded elsewhere: an image and a prompt of any size do not count', () => {
    const bytes = Buffer.from(GenerateRequest.encode({ ...request(Buffer.alloc(3 << 20, 7)), prompt: 'x'.repeat(100_000) }).finish());
    expect(envelopeBytes(bytes, new Set([1, 2]))).toBeLessThan(1024);
    expect(envelopeBytes(bytes, new Set())).toBeGreaterThan(3 << 20);
    // A malformed tail ends the walk and counts whole, in an exempt field too (it is not an image or
    // a prompt the decoder could bound); the decoder then says what is wrong.
    expect(envelopeBytes(Buffer.from([0x22, 0xff]), new Set())).toBe(2);
    expect(envelopeBytes(Buffer.from([0x08, 0x01, 0x22, 0x05, 0x01]), new Set([4]))).toBe(5);
  });
});

describe('images over the limit', () => {
  it('answers one up to twice the limit with INVALID_ARGUMENT naming the limit (not a retryable RESOURCE_EXHAUSTED); only a larger request meets the transport limit, and the log says which', async () => {
    const limit = 8 * 1024 * 1024;
    const lines: LogLine[] = [];
    // Validation comes before the hop: no vision service is needed to judge the image.
    const language = await startLanguageService(pairConfig({ maxImageBytes: limit, visionTarget: '127.0.0.1:1' }), { port: 0, log: recordingLogger(lines, 'language') });
    const client = new LanguageServiceClient(language.address, credentials.createInsecure());
    try {
      const twice = await ask(client, request(oversize(2 * limit), { maxTokens: 2 }));
      expect(twice.error?.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(twice.error?.details).toMatch(/over the \d+-byte .*image limit/);
      const huge = await ask(client, request(oversize(3 * limit), { maxTokens: 2 }));
      expect(huge.error?.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
      expect(huge.error?.details).toMatch(/larger than max/);
      expect(await healthStatus(language.address)).toBe('SERVING');
      // The transport's refusal is sent below the interceptors; the access log still names it, not CANCELLED.
      const calls = lines.filter((l) => l['msg'] === 'call' && l['method'] === '/vlm.v1.LanguageService/Generate');
      expect(calls.map((l) => l['code'])).toEqual(['INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED']);
      expect(String(calls[1]!['details'])).toMatch(/larger than max/);
    } finally {
      client.close();
      await language.stop();
    }
  });
});

describe('the receive limit at its edge', () => {
  it('still judges an image of twice the limit beside the longest prompt of 4-byte characters, and leaves only a message past the receive limit to the transport', async () => {
    const limit = 1024 * 1024;
    const config = pairConfig({ maxImageBytes: limit, visionTarget: '127.0.0.1:1' });
    const language = await startLanguageService(config, { port: 0 });
    const client = new LanguageServiceClient(language.address, credentials.createInsecure());
    const prompt = '\u{1F600}'.repeat(config.limits.maxPromptChars); // the most UTF-8 a prompt within the limit can take
    const withImageOf = (bytes: number): GenerateRequest => request(oversize(bytes - 1), { maxTokens: 2, prompt });
    try {
      const judged = withImageOf(2 * limit + 1);
      expect(Buffer.byteLength(prompt)).toBe(4 * config.limits.maxPromptChars);
      const edge = await ask(client, judged);
      expect(edge.error?.code).toBe(GrpcCode.INVALID_ARGUMENT);
      expect(decodeViolations(edge.error!.metadata).map((v) => v.field)).toContain('image');
      // One byte past the receive limit: the image grown until the encoded message is that size.
      const ceiling = receiveLimit(config.limits);
      let bytes = 2 * limit + 1;
      while (GenerateRequest.encode(withImageOf(bytes)).finish().length <= ceiling) bytes += ceiling + 1 - GenerateRequest.encode(withImageOf(bytes)).finish().length;
      expect(GenerateRequest.encode(withImageOf(bytes)).finish().length).toBe(ceiling + 1);
      const over = await ask(client, withImageOf(bytes));
      expect(over.error?.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
      expect(over.error?.details).toMatch(/larger than max/);
      expect(await healthStatus(language.address)).toBe('SERVING');
    } finally {
      client.close();
      await language.stop();
    }
  });
});

describe('limits per connection', () => {
  let vision: RunningService;
  let language: RunningService;
  beforeAll(async () => {
    const base = pairConfig();
    vision = await startVisionService({ ...base, rpc: { ...base.rpc, maxConnectionAgeMs: 300 } }, { port: 0 });
    language = await startLanguageService({ ...base, rpc: { ...base.rpc, visionTarget: vision.address, maxConcurrentStreams: 7, maxConnectionAgeMs: 300 } }, { port: 0 });
  });
  afterAll(async () => {
    await language?.stop();
    await vision?.stop();
  });

  it('advertises the configured max concurrent streams in its HTTP/2 settings', async () => {
    const session = connect(`http://${language.address}`);
    try {
      const settings = await new Promise<{ maxConcurrentStreams?: number }>((resolve) => session.once('remoteSettings', resolve));
      expect(settings.maxConcurrentStreams).toBe(7);
    } finally {
      session.close();
    }
  });

  it('lets a call on an aged-out connection run past the default deadline to its end (the transport never cuts it off)', async () => {
    // Connections age out after 60 ms and calls carrying no deadline get 40 ms, but this call carries
    // 10 s and the service allows up to 10 s: before, it was cut off 40 ms after its connection aged
    // out, and the client saw INTERNAL "Received RST_STREAM with code 0", a fault the service never sent.
    const base = pairConfig({ deadlineMs: 40 });
    const limits = { ...base.limits, maxDeadlineMs: 10_000 };
    const v = await startVisionService({ ...base, limits, rpc: { ...base.rpc, warmup: false, maxConnectionAgeMs: 60 } }, { port: 0 });
    const l = await startLanguageService({ ...base, limits, rpc: { ...base.rpc, warmup: false, visionTarget: v.address, maxConnectionAgeMs: 60 } }, { port: 0 });
    const client = new LanguageServiceClient(l.address, credentials.createInsecure());
    try {
      const image = await shapesImage();
      const started = performance.now();
      const out = await ask(client, request(image, { maxTokens: 200 }), { deadlineMs: 10_000 });
      expect(out.error).toBeNull();
      expect(out.final).toBeDefined();
      expect(performance.now() - started).toBeGreaterThan(100);
    } finally {
      client.close();
      await l.stop();
      await v.stop();
    }
  });

  it('both services age connections out (GOAWAY), and the language service keeps answering across reconnects', async () => {
    for (const service of [vision, language]) {
      const session = connect(`http://${service.address}`);
      const goaway = new Promise<number>((resolve) => session.once('goaway', (code: number) => resolve(code)));
      // A service that never ages the connection out fails here in 10 s, not at the test's timeout.
      const never = new Promise<'none'>((resolve) => setTimeout(() => resolve('none'), 10_000).unref());
      expect(await Promise.race([goaway, never])).toBe(0);
      session.destroy();
    }
    const client = new LanguageServiceClient(language.address, credentials.createInsecure());
    try {
      const image = await shapesImage();
      for (let i = 0; i < 5; i++) {
        expect((await ask(client, request(image, { maxTokens: 2 }))).error).toBeNull();
        await new Promise((r) => setTimeout(r, 150));
      }
    } finally {
      client.close();
    }
  });
});
