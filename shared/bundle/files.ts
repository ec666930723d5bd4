/** Checks a bundle's files against manifest.files: presence and size always, sha256 on request. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import * as path from 'node:path';
import { VlmError } from '../errors';
import type { FileEntry } from './manifest';

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** `sha256:` over `<path>\t<sha256>\n` for every entry sorted by path (docs/bundle-format.md). */
export function contentHash(files: readonly FileEntry[]): string {
  const hash = createHash('sha256');
  for (const f of [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))) hash.update(`${f.path}\t${f.sha256}\n`);
  return `sha256:${hash.digest('hex')}`;
}

/** `hash`: which files to read and compare with their sha256 (every one is checked for presence and size). */
export async function checkFiles(dir: string, files: readonly FileEntry[], hash: (f: FileEntry) => boolean): Promise<void> {
  const problems: string[] = [];
  await Promise.all(
    files.map(async (f) => {
      const full = path.join(dir, f.path);
      if (path.relative(dir, full).startsWith('..')) {
        problems.push(`${f.path}: path leaves the bundle folder`);
        return;
      }
      let size: number;
      try {
        size = (await stat(full)).size;
      } catch {
        problems.push(`${f.path}: missing (listed in manifest.files)`);
        return;
      }
      if (size !== f.bytes) problems.push(`${f.path}: ${size} bytes on disk, manifest says ${f.bytes}`);
      else if (hash(f)) {
        const actual = await sha256File(full);
        if (actual !== f.sha256) problems.push(`${f.path}: sha256 ${actual}, manifest says ${f.sha256}`);
      }
    }),
  );
  if (problems.length) {
    problems.sort();
    throw new VlmError('FAILED_PRECONDITION', `bundle ${dir} does not match its manifest: ${problems.join('; ')}`);
  }
}
