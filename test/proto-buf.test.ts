import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = resolve(__dirname, '..');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const buf: string = require('../scripts/buf-path.js').bufPath();
const baseline = join(root, 'proto', 'baseline.binpb');

function runBuf(args: string[], cwd: string): { status: number | null; output: string } {
  const r = spawnSync(buf, args, { cwd, encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

describe('the vlm.v1 API under buf', () => {
  it('passes buf lint (STANDARD)', () => {
    const r = runBuf(['lint'], root);
    expect(r.output).toBe('');
    expect(r.status).toBe(0);
  });

  it('has no breaking change against the committed baseline image', () => {
    const r = runBuf(['breaking', '--against', baseline], root);
    expect(r.output).toBe('');
    expect(r.status).toBe(0);
  });

  describe('on a copy with one breaking edit', () => {
    const dirs: string[] = [];
    afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

    /** Copies buf.yaml and proto/ to a temp workspace and applies one textual edit to one file. */
    function copyWithEdit(relFile: string, from: string | RegExp, to: string): string {
      const dir = mkdtempSync(join(tmpdir(), 'vlm-proto-'));
      dirs.push(dir);
      cpSync(join(root, 'buf.yaml'), join(dir, 'buf.yaml'));
      cpSync(join(root, 'proto'), join(dir, 'proto'), { recursive: true });
      const file = join(dir, 'proto', relFile);
      const source = readFileSync(file, 'utf8');
      const edited = source.replace(from, to);
      expect(edited, 'the edit must apply').not.toBe(source);
      writeFileSync(file, edited);
      return dir;
    }

    it('fails buf breaking when a field is renumbered, naming the message', () => {
      const dir = copyWithEdit('vlm/v1/language_service.proto', 'string prompt = 2;', 'string prompt = 20;');
      const r = runBuf(['breaking', '--against', baseline], dir);
      expect(r.status).not.toBe(0);
      expect(r.output).toMatch(/GenerateRequest/);
    });

    it('fails buf breaking when a field is removed from a released message', () => {
      const dir = copyWithEdit('vlm/v1/vision_service.proto', /\n\s*uint32 chunk_count = 12;/, '');
      const r = runBuf(['breaking', '--against', baseline], dir);
      expect(r.status).not.toBe(0);
      expect(r.output).toMatch(/TensorHeader/);
    });

    it('accepts an additive change (a new optional field)', () => {
      const dir = copyWithEdit('vlm/v1/common.proto', 'optional uint32 rows_per_chunk = 2;', 'optional uint32 rows_per_chunk = 2;\n  optional uint32 extra = 3;');
      const r = runBuf(['breaking', '--against', baseline], dir);
      expect(r.output).toBe('');
      expect(r.status).toBe(0);
    });
  });
});
