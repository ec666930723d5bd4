/**
 * `vlm ask --image FILE --question TEXT [--target HOST:PORT] [--vision-method M] [--language-method M]
 *          [--preset P] [--budget N|P%] [--mode clean|exact] [--param NAME=VALUE ...] [--max-tokens N] [--temperature T]
 *          [--top-p P] [--seed N] [--deadline-ms N] [--json]
 *          [--tls] [--ca FILE] [--cert FILE --key FILE] [--server-name NAME]`
 *
 * TLS: --ca (the CA the service's certificate chains to) or --tls (public roots) turns it on; --cert
 * and --key present a client certificate; --server-name checks the certificate for that name when
 * the target is an IP address or a tunnel.
 *
 * A gRPC client of the language service. The image file's bytes are sent as they are: judging them
 * is the service's job. Prints the answer as it streams (with --json: one JSON line with `answer` and
 * the final stats); an error prints `CODE: message` on stderr and exits 1.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { parseCommandLine, type ConfigSubset } from '../shared/config';
import type { CommandFlags } from './help';
import { VlmError } from '../shared/errors';
import { setLogLevel } from '../shared/log';
import { ReductionPolicy, SamplingParams } from '../gen/vlm/v1/common';
import { languageMethodNames, visionMethodNames } from '../shared/methods/registry';
import { METHOD_PRESETS } from '../shared/methods/policy';
import { GenerateFinal, type GenerateRequest } from '../gen/vlm/v1/language_service';
import { generateOnce, languageClient } from '../services/language/client';
import { budgetToWire, paramsToWire } from '../services/common/wire';
import { integerFlag, numberFlag, parseBudgetFlag, UINT32_MAX, wireSeedFlag } from './numeric-flags';
import { sentToken } from '../shared/auth-tokens';
import { isLoopbackAddress } from '../shared/net-address';

/**
 * The config flags a client reads: where the service is, how long to wait, the token to send, and its
 * log level. The services' others (--provider, --workers, ...) would be taken and do nothing here.
 */
const ASK_CONFIG: ConfigSubset = {
  keys: ['language-port', 'deadline-ms', 'auth-token-file', 'log-level'],
  othersAre: 'is a setting of the services (vlm serve), which this command does not take',
};

const FLAGS = {
  image: { type: 'string', arg: 'FILE', help: 'the image (required); its bytes are sent as they are' },
  question: { type: 'string', arg: 'TEXT', help: 'the question (required); the service applies the prompt template' },
  target: { type: 'string', arg: 'HOST:PORT', help: 'the language service [default: 127.0.0.1 at --language-port]' },
  'vision-method': { type: 'string', arg: 'NAME', help: `${visionMethodNames().join(', ')} [default: none]` },
  'language-method': { type: 'string', arg: 'NAME', help: `${languageMethodNames().join(', ')} [default: none]` },
  preset: { type: 'string', arg: 'NAME', help: `${Object.entries(METHOD_PRESETS).map(([name, p]) => `${name}: ${p.vision} + ${p.language}`).join('; ')}, under one budget (instead of the two methods)` },
  budget: { type: 'string', arg: 'N|P%', help: 'mean visual tokens per decoder layer, absolute or a percentage of the unreduced count [default: the method\'s own]' },
  mode: { type: 'string', arg: 'MODE', help: 'clean or exact (the official code\'s behaviour) [default: clean]' },
  param: { type: 'string', multiple: true, arg: 'NAME=VALUE', help: 'a method parameter, e.g. lambda=0.5 (shared/methods/README.md lists them)' },
  'max-tokens': { type: 'string', arg: 'N', help: 'most answer tokens [default: the model\'s]' },
  temperature: { type: 'string', arg: 'T', help: 'sampling temperature; 0 is greedy [default: 0]' },
  'top-p': { type: 'string', arg: 'P', help: 'nucleus sampling mass, (0, 1] [default: 1]' },
  seed: { type: 'string', arg: 'N', help: 'sampler seed, 0 to 2^64-1, to replay a sampled answer [default: drawn per request and reported]' },
  json: { type: 'boolean', help: 'print one JSON line with the answer and the final stats instead of streaming the text' },
  tls: { type: 'boolean', help: 'use TLS with the public roots' },
  ca: { type: 'string', arg: 'FILE', help: 'use TLS, trusting this CA' },
  cert: { type: 'string', arg: 'FILE', help: 'client certificate (with --key)' },
  key: { type: 'string', arg: 'FILE', help: 'client private key (with --cert)' },
  'server-name': { type: 'string', arg: 'NAME', help: 'the name the service\'s certificate must carry, when --target is an IP address or a tunnel' },
} as const satisfies CommandFlags;

/**
 * `--param name=value` (repeatable): a method parameter; the value is a number when it reads as one,
 * a flag for true/false, text otherwise (the service judges names and types).
 */
export function paramsFromFlags(raw: readonly string[] | undefined): Record<string, number | string | boolean> {
  const params: Record<string, number | string | boolean> = {};
  for (const p of raw ?? []) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw VlmError.invalid('--param', `expected name=value, got "${p}"`);
    const name = p.slice(0, eq);
    const text = p.slice(eq + 1);
    params[name] = text === 'true' ? true : text === 'false' ? false : text.trim() !== '' && Number.isFinite(Number(text)) ? Number(text) : text;
  }
  return params;
}

/** Sampling from the flags; unset flags stay unset, so the service's defaults apply. */
export function samplingFromFlags(values: Record<string, unknown>): SamplingParams {
  return SamplingParams.fromPartial({
    // sampling.max_tokens is a uint32; the service judges it against its own limit.
    maxTokens: integerFlag(values, 'max-tokens', 1, UINT32_MAX),
    temperature: numberFlag(values, 'temperature'),
    topP: numberFlag(values, 'top-p'),
    seed: wireSeedFlag(values),
  });
}

function policyFromFlags(values: Record<string, unknown>): ReductionPolicy {
  const budget = parseBudgetFlag(values['budget'] as string | undefined);
  return ReductionPolicy.fromPartial({
    visionMethod: (values['vision-method'] as string | undefined) ?? '',
    languageMethod: (values['language-method'] as string | undefined) ?? '',
    preset: (values['preset'] as string | undefined) ?? '',
    mode: (values['mode'] as string | undefined) ?? '',
    budget: budgetToWire(budget),
    params: paramsToWire(paramsFromFlags(values['param'] as string[] | undefined)),
  });
}

/** The final stats as printed by --json: the proto's JSON mapping (lowerCamelCase) plus answer and latency. */
function finalJson(answer: string, final: GenerateFinal, latencyMs: number): Record<string, unknown> {
  const f = GenerateFinal.toJSON(final) as Record<string, unknown>;
  return { answer, latencyMs: Math.round(latencyMs * 10) / 10, ...f };
}

export async function run(argv: string[]): Promise<number> {
  const { config, values } = parseCommandLine(argv, FLAGS, process.env, ASK_CONFIG);
  setLogLevel(config.logLevel);
  if (typeof values['image'] !== 'string') throw VlmError.invalid('--image', 'is required (a file path)');
  if (typeof values['question'] !== 'string') throw VlmError.invalid('--question', 'is required');
  const sampling = samplingFromFlags(values);
  const policy = policyFromFlags(values);
  let image: Buffer;
  try {
    image = await readFile(values['image']);
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `--image: cannot read ${values['image']}: ${(err as Error).message}`);
  }
  const request: GenerateRequest = {
    image,
    prompt: values['question'],
    sampling,
    policy,
    limits: undefined,
  };
  const json = values['json'] === true;
  const str = (k: string): string | null => (typeof values[k] === 'string' ? (values[k] as string) : null);
  if ((str('cert') === null) !== (str('key') === null)) throw VlmError.invalid('--cert/--key', 'a client certificate needs both --cert and --key');
  // Read here so that a missing or unreadable file is the flag's error, not an INTERNAL from the channel.
  for (const flag of ['ca', 'cert', 'key'] as const) {
    const file = str(flag);
    if (file === null) continue;
    try {
      accessSync(file, constants.R_OK);
      if (!statSync(file).isFile()) throw new Error('not a file');
    } catch (err) {
      throw new VlmError('INVALID_ARGUMENT', `--${flag}: cannot read ${file}: ${(err as Error).message}`);
    }
  }
  const useTls = values['tls'] === true || str('ca') !== null || str('cert') !== null;
  if (!useTls && str('server-name') !== null) throw VlmError.invalid('--server-name', 'names the certificate to expect over TLS; add --tls (or --ca)');
  const tls = useTls ? { caFile: str('ca'), certFile: str('cert'), keyFile: str('key'), serverName: str('server-name') } : null;
  // Without --target: the language service on this host, at --language-port / VLM_LANGUAGE_PORT.
  const target = (values['target'] as string | undefined) ?? `127.0.0.1:${config.services.languagePort}`;
  const token = sentToken(config.rpc.auth);
  // The service warns of its own plaintext hop off the host; a token a person sends that way is theirs to know of.
  if (!useTls && token !== null && !isLoopbackAddress(target)) {
    process.stderr.write(`warning: sending the bearer token to ${target} in plaintext; add --tls (or --ca) if the service speaks TLS\n`);
  }
  const client = languageClient(target, tls);
  try {
    const out = await generateOnce(client, request, {
      deadline: Date.now() + config.limits.deadlineMs,
      authToken: token,
      onDelta: json ? undefined : (text) => process.stdout.write(text),
    }).catch((err: unknown) => {
      throw withHint(err, target);
    });
    process.stdout.write(json ? `${JSON.stringify(finalJson(out.answer, out.final, out.latencyMs))}\n` : '\n');
    return 0;
  } finally {
    client.close();
  }
}

/**
 * What a person at the terminal can do about errors the service words for API clients: nothing
 * listening at the target (gRPC's text names only the socket error), no vision service behind it, and
 * a missing or refused token.
 */
export function withHint(err: unknown, target: string): unknown {
  if (!(err instanceof VlmError)) return err;
  if (err.code === 'UNAVAILABLE' && /ECONNREFUSED|ENOTFOUND|EAI_AGAIN|No connection established/.test(err.message)) {
    const cause = /(ECONNREFUSED|ENOTFOUND|EAI_AGAIN)/.exec(err.message)?.[1] ?? 'no connection';
    return new VlmError('UNAVAILABLE', `cannot reach the language service at ${target} (${cause}); start it (npm start, or vlm serve all) or point --target / --language-port at it`, { cause: err });
  }
  if (err.code === 'DEADLINE_EXCEEDED' && /Waiting for LB pick|waiting for (the )?connection/i.test(err.message)) {
    // The call never left this process: no gRPC connection was made before the deadline.
    return new VlmError('DEADLINE_EXCEEDED', `no gRPC connection to ${target} within the deadline: nothing answering there (a firewall dropping packets), something that is not a gRPC server, or TLS on one side only (--ca or --tls for a TLS service)`, { cause: err });
  }
  if (err.reason === 'VISION_UNAVAILABLE') {
    // The service keeps vision's address to its log; at a terminal the likely cause is that it is down.
    return new VlmError('UNAVAILABLE', `${err.message} (is the vision service running? the language service's log names the address it tried)`, { cause: err, reason: err.reason, retryDelayMs: err.retryDelayMs });
  }
  if (err.code === 'UNAUTHENTICATED') {
    return new VlmError('UNAUTHENTICATED', `${err.message}; set VLM_AUTH_TOKEN, or VLM_AUTH_TOKEN_FILE, to a token the service accepts`, { cause: err });
  }
  return err;
}
