/** Where this package lives and which version it is: found from this file, so src and dist agree. */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { VlmError } from './errors';

/** The folder holding this package's package.json, found from this file (works from src and dist). */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'vlm-token-reduction') return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new VlmError('INTERNAL', `package root not found above ${__dirname}`);
    dir = up;
  }
}

/** This package's version (package.json): the code's version, as `service.version` reports it. */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}
