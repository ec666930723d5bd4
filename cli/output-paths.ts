/**
 * Output paths checked before a run, not after it: a benchmark that runs for minutes and then finds
 * its --docs or --spans path unwritable has lost its results.
 */
import { accessSync, constants, mkdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { VlmError } from '../shared/errors';

/** `dir` exists (made if need be) and is a writable folder; else INVALID_ARGUMENT naming `--flag`. */
export function writableDir(flag: string, dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
    if (!statSync(dir).isDirectory()) throw new Error('not a folder');
    accessSync(dir, constants.W_OK);
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `--${flag}: cannot write into ${dir}: ${(err as Error).message}`);
  }
}

/** `file` can be written: an existing writable file, or a new one in a writable folder; else INVALID_ARGUMENT naming `--flag`. */
export function writableFile(flag: string, file: string): void {
  try {
    const exists = (() => {
      try {
        return statSync(file);
      } catch {
        return undefined;
      }
    })();
    if (exists?.isDirectory()) throw new Error('it is a folder');
    accessSync(exists ? file : path.dirname(path.resolve(file)), constants.W_OK);
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `--${flag}: cannot write ${file}: ${(err as Error).message}`);
  }
}
