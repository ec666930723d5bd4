/**
 * The bearer tokens a service accepts, as read from VLM_AUTH_TOKEN or --auth-token-file. A file may
 * hold several, so a token can be rotated without a moment in which callers holding the old or the
 * new one are refused: add the new one, move callers over, then remove the old one (the services
 * re-read the file, services/common/bearer-tokens.ts).
 *
 * File format, one token a line as `NAME TOKEN`; blank lines and lines starting with `#` are skipped.
 * A file of one token may hold it alone (`TOKEN`, named `default`), as a single-token file always
 * could; a file of several must name every one, since the names label the metric that counts
 * accepted calls per token, which is how an operator sees that nobody uses the old token any more
 * (a name from the line number would move to the new token when it is put first). The first token is
 * the one this process sends (the language service to vision, the CLI to a service).
 *
 * A named token is at least 16 visible ASCII characters: a line whose name and token were swapped is
 * then refused instead of accepting the name as a weak token and showing the token as a name in logs
 * and metrics. A token alone may be shorter, as before names (an upgrade keeps its old file). Errors name the file and the line, never a name or a token (either may be the secret).
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { VlmError } from './errors';

export interface NamedToken {
  readonly name: string;
  readonly token: string;
}

/** Where the accepted tokens came from: a file is re-read while serving, a variable is fixed. */
export interface AuthTokens {
  readonly file: string | null;
  /** In file order; never empty. */
  readonly tokens: readonly NamedToken[];
}

/** The name of the token given in VLM_AUTH_TOKEN. */
export const ENV_TOKEN_NAME = 'env';
/** The name of a file's single unnamed token. */
export const DEFAULT_TOKEN_NAME = 'default';
export const MIN_TOKEN_CHARS = 16;

const FIELD = '--auth-token-file';
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** What an HTTP/2 header value can carry without folding or escaping: visible ASCII, no spaces. */
const TOKEN = /^[\x21-\x7e]+$/;

/** `field`: the flag the file came from, which errors name. */
export function parseTokenFile(text: string, file: string, field = FIELD): NamedToken[] {
  const lines: Array<{ at: string; fields: string[] }> = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line !== '' && !line.startsWith('#')) lines.push({ at: `${file} line ${index + 1}`, fields: line.split(/[ \t]+/) });
  });
  if (lines.length === 0) throw VlmError.invalid(field, `${file} holds no token`);
  const names = new Map<string, string>();
  const tokens = new Map<string, string>();
  return lines.map(({ at, fields }) => {
    if (fields.length > 2) throw VlmError.invalid(field, `${at}: expected NAME TOKEN, found ${fields.length} fields`);
    if (fields.length === 1 && lines.length > 1) throw VlmError.invalid(field, `${at}: a file of several tokens names each one (NAME TOKEN)`);
    const [name, token] = fields.length === 2 ? [fields[0]!, fields[1]!] : [DEFAULT_TOKEN_NAME, fields[0]!];
    if (!isTokenName(name)) throw VlmError.invalid(field, `${at}: a name is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    // A token alone is the file format of releases before names (the whole file one token, any
    // length): it keeps working, and with no name beside it there is nothing to swap it with.
    checkToken(token, at, fields.length === 2, field);
    // A generated secret (make-dev-certs writes 43 characters) also passes as a name: with a readable
    // name of 16 or more characters beside it, the swapped line would log and count the secret as the
    // caller's name and accept the name as the credential. A name that long beside a token under 32
    // characters is refused; any token of 32 or more is accepted beside any name.
    if (fields.length === 2 && name.length >= 2 * MIN_TOKEN_CHARS && token.length < 2 * MIN_TOKEN_CHARS) {
      throw VlmError.invalid(field, `${at}: a name of ${name.length} characters beside a token of ${token.length} (are the name and the token swapped? NAME comes first; beside a name this long, use a token of at least ${2 * MIN_TOKEN_CHARS} characters)`);
    }
    const nameAt = names.get(name);
    if (nameAt !== undefined) throw VlmError.invalid(field, `${at}: the same name as ${nameAt}`);
    const tokenAt = tokens.get(token);
    if (tokenAt !== undefined) throw VlmError.invalid(field, `${at}: the same token as ${tokenAt}`);
    names.set(name, at);
    tokens.set(token, at);
    return { name, token };
  });
}

function checkToken(token: string, at: string, named: boolean, field: string): void {
  if (!TOKEN.test(token)) throw VlmError.invalid(field, `${at}: a token is visible ASCII characters only`);
  if (named && token.length < MIN_TOKEN_CHARS) throw VlmError.invalid(field, `${at}: a token has at least ${MIN_TOKEN_CHARS} characters (are the name and the token swapped?)`);
}

/** Reads and parses a token file (at start and at every re-read); errors are INVALID_ARGUMENT naming the file. */
export function readTokenFile(file: string, field = FIELD): AuthTokens {
  const resolved = path.resolve(file);
  let text: string;
  try {
    text = readFileSync(resolved, 'utf8');
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `${field}: cannot read ${resolved}: ${(err as Error).message}`);
  }
  return { file: resolved, tokens: parseTokenFile(text, resolved, field) };
}

/** Whether `name` may name a token (or a caller forwarded on the vision hop). */
export function isTokenName(name: string): boolean {
  return NAME.test(name);
}

/**
 * A variable's value is one token; surrounding whitespace (a trailing newline) is not part of it. It
 * must be sendable as a header, like a file's, but no minimum length is imposed on it (it has no
 * name to be swapped with, and deployments set short ones before files had the rule).
 */
export function envToken(value: string | undefined): AuthTokens | null {
  const token = value?.trim() ?? '';
  if (token === '') return null;
  if (!TOKEN.test(token)) throw VlmError.invalid(AUTH_TOKEN_VARIABLE, 'a token is visible ASCII characters only');
  return { file: null, tokens: [{ name: ENV_TOKEN_NAME, token }] };
}

const AUTH_TOKEN_VARIABLE = 'VLM_AUTH_TOKEN';

/** The token a process sends (the CLI to a service; the language service re-reads it, bearer-tokens.ts): the first. */
export function sentToken(auth: AuthTokens | null): string | null {
  return auth?.tokens[0]?.token ?? null;
}

/** One token given in code (tests, tools) as a variable would give it. */
export function singleToken(token: string | null): AuthTokens | null {
  return envToken(token ?? undefined);
}
