/**
 * The bearer tokens a service accepts, as read from VLM_AUTH_TOKEN or --auth-token-file. A file may
 * hold several, so a token can be rotated without a moment in which callers holding the old or the
 * new one are refused: add the new one, move callers over, then remove the old one (the services
 * re-read the file, services/common/bearer-tokens.ts).
 *
 * File format, one token a line: `TOKEN` or `NAME TOKEN`; blank lines and lines starting with `#`
 * are skipped. The first token is the one this process sends (the language service to vision, the
 * CLI to a service). Names label the metric that counts accepted calls per token, which is how an
 * operator sees that nobody uses the old token any more; an unnamed token is `line-N`. Errors name
 * the file and the line, never a token.
 */
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

const FIELD = '--auth-token-file';
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** What an HTTP/2 header value can carry without folding or escaping: visible ASCII, no spaces. */
const TOKEN = /^[\x21-\x7e]+$/;

export function parseTokenFile(text: string, file: string): NamedToken[] {
  const tokens: NamedToken[] = [];
  const names = new Set<string>();
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = `${file} line ${index + 1}`;
    const fields = line.split(/[ \t]+/);
    if (fields.length > 2) throw VlmError.invalid(FIELD, `${at}: expected TOKEN or NAME TOKEN, found ${fields.length} fields`);
    const [name, token] = fields.length === 2 ? [fields[0]!, fields[1]!] : [`line-${index + 1}`, fields[0]!];
    if (!NAME.test(name)) throw VlmError.invalid(FIELD, `${at}: a name is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    if (!TOKEN.test(token)) throw VlmError.invalid(FIELD, `${at}: a token is visible ASCII characters only`);
    if (names.has(name)) throw VlmError.invalid(FIELD, `${at}: the name ${name} is used twice`);
    if (seen.has(token)) throw VlmError.invalid(FIELD, `${at}: the same token as an earlier line`);
    names.add(name);
    seen.add(token);
    tokens.push({ name, token });
  });
  if (tokens.length === 0) throw VlmError.invalid(FIELD, `${file} holds no token`);
  return tokens;
}

/** A variable's value is one token; surrounding whitespace (a trailing newline) is not part of it. */
export function envToken(value: string | undefined): AuthTokens | null {
  const token = value?.trim() ?? '';
  return token === '' ? null : { file: null, tokens: [{ name: ENV_TOKEN_NAME, token }] };
}

/** The token a process sends (the CLI to a service; the language service re-reads it, bearer-tokens.ts): the first. */
export function sentToken(auth: AuthTokens | null): string | null {
  return auth?.tokens[0]?.token ?? null;
}

/** One token given in code (tests, tools) as a variable would give it. */
export function singleToken(token: string | null): AuthTokens | null {
  return envToken(token ?? undefined);
}
