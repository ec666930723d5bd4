/**
 * The bundle's evaluation items (`<model>/eval/items.jsonl`: image, question, answer, type), how a
 * subset is taken and how an answer is judged: shared by `vlm eval`, `vlm bench`, the demo and the
 * anchor search, so they all score the same way.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { VlmError } from '../shared/errors';

export interface EvalItem {
  readonly image: string;
  readonly question: string;
  readonly answer: string;
  readonly type: string;
}

export async function readItems(modelDir: string): Promise<EvalItem[]> {
  const file = path.join(modelDir, 'eval', 'items.jsonl');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    // Read before the model loads, so a --model that is no bundle at all is said to be one here.
    if (!existsSync(path.join(modelDir, 'manifest.json'))) throw new VlmError('FAILED_PRECONDITION', `${modelDir} is not a model bundle (no manifest.json there); point --model / VLM_MODEL_DIR at a bundle's folder`);
    throw new VlmError('FAILED_PRECONDITION', `no evaluation items at ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((line, i) => {
      let item: EvalItem;
      try {
        item = JSON.parse(line) as EvalItem;
      } catch (err) {
        throw new VlmError('FAILED_PRECONDITION', `${file}:${i + 1}: not valid JSON (${(err as Error).message})`);
      }
      if (typeof item !== 'object' || item === null) throw new VlmError('FAILED_PRECONDITION', `${file}:${i + 1}: not a JSON object`);
      for (const k of ['image', 'question', 'answer', 'type'] as const) {
        if (typeof item[k] !== 'string') throw new VlmError('FAILED_PRECONDITION', `${file}:${i + 1}: field "${k}" missing or not a string`);
      }
      return item;
    });
}

/** An item's image bytes; a missing file names the item list it came from. */
export async function readItemImage(modelDir: string, item: EvalItem): Promise<Buffer> {
  const file = path.join(modelDir, 'eval', item.image);
  try {
    return await readFile(file);
  } catch (err) {
    throw new VlmError('FAILED_PRECONDITION', `cannot read image ${file} of eval/items.jsonl (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** The first `limit` items taken round-robin over types (in order of first appearance), so every type is equally represented. */
export function selectEvenly(items: readonly EvalItem[], limit: number | undefined): EvalItem[] {
  if (limit === undefined || limit >= items.length) return [...items];
  const byType = new Map<string, EvalItem[]>();
  for (const it of items) {
    const list = byType.get(it.type) ?? [];
    list.push(it);
    byType.set(it.type, list);
  }
  const lists = [...byType.values()];
  const out: EvalItem[] = [];
  for (let round = 0; out.length < limit; round++) {
    let took = false;
    for (const l of lists) {
      if (round < l.length && out.length < limit) {
        out.push(l[round]!);
        took = true;
      }
    }
    if (!took) break;
  }
  return out;
}

/** Case- and space-insensitive whole-answer match, ignoring trailing punctuation. */
export function isCorrect(generated: string, answer: string): boolean {
  const norm = (s: string) => s.trim().toLowerCase().replace(/[\s.!?,;:]+$/u, '').replace(/\s+/g, ' ');
  return norm(generated) === norm(answer);
}
