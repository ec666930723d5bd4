/**
 * The bearer tokens a server accepts and the one it sends on (shared/auth-tokens.ts), following
 * their file while serving: re-read every VLM_TLS_RELOAD_MS and on SIGHUP, with the TLS files
 * (services/common/tls.ts), so rotating a token needs no restart. A file that no longer parses (empty,
 * gone, a line cut short) keeps the tokens in use and logs a warning; a write cut off mid-token may
 * still parse, which is why files are replaced by a rename (Kubernetes Secret volumes swap them
 * whole). Turning authentication off takes a restart, never an emptied file.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readTokenFile, type AuthTokens, type NamedToken } from '../../shared/auth-tokens';
import type { Logger } from '../../shared/log';

interface Accepted {
  readonly name: string;
  readonly digest: Buffer;
}

export class BearerTokens {
  private tokens: readonly NamedToken[];
  private accepted: readonly Accepted[];
  private timer: NodeJS.Timeout | null = null;

  /** `flag`: the option the file came from, which reload errors name. */
  constructor(
    private readonly source: AuthTokens,
    private readonly log: Logger,
    private readonly flag?: string,
  ) {
    this.tokens = source.tokens;
    this.accepted = digests(source.tokens);
    log.info('bearer tokens loaded', this.describe());
  }

  /** The name of the accepted token `presented` is, or null. Compares SHA-256 digests in constant time. */
  match(presented: string): string | null {
    const digest = sha256(presented);
    let name: string | null = null;
    // Every entry is compared, so the time taken does not say which one matched.
    for (const a of this.accepted) if (timingSafeEqual(digest, a.digest) && name === null) name = a.name;
    return name;
  }

  /** The token this process sends on: the first in the file. */
  outgoing(): string {
    return this.tokens[0]!.token;
  }

  /** Re-reads the file (a variable's token is fixed); applies a changed, valid set. Returns whether it changed. */
  reload(): boolean {
    const { file } = this.source;
    if (file === null) return false;
    let next: readonly NamedToken[];
    try {
      next = readTokenFile(file, this.flag).tokens;
    } catch (err) {
      this.log.warn('bearer token reload skipped; keeping the tokens in use', { error: (err as Error).message });
      return false;
    }
    const accepted = digests(next);
    if (sameAccepted(accepted, this.accepted)) return false;
    this.tokens = next;
    this.accepted = accepted;
    this.log.info('bearer tokens reloaded', this.describe());
    return true;
  }

  /** Polls the file every `intervalMs` (the timer does not keep the process alive). */
  watch(intervalMs: number): this {
    if (this.timer === null && this.source.file !== null) {
      this.timer = setInterval(() => this.reload(), intervalMs);
      this.timer.unref();
    }
    return this;
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** Names only: a log line never holds a token. */
  private describe(): Record<string, unknown> {
    return { file: this.source.file ?? 'VLM_AUTH_TOKEN', names: this.tokens.map((t) => t.name), sends: this.tokens[0]!.name };
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function digests(tokens: readonly NamedToken[]): Accepted[] {
  return tokens.map((t) => ({ name: t.name, digest: sha256(t.token) }));
}

/** The same names and tokens in the same order (the first is the one sent on). */
function sameAccepted(a: readonly Accepted[], b: readonly Accepted[]): boolean {
  return a.length === b.length && a.every((x, i) => x.name === b[i]!.name && x.digest.equals(b[i]!.digest));
}
