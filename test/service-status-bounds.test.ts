/**
 * A status stays small whatever its error says: the message and the violations ride in the trailers,
 * and a client never sees a status whose trailers exceed its header-list limit (it waits for its
 * deadline instead). Long messages and long or many violations are cut, earlier ones kept.
 */
import { describe, expect, it } from 'vitest';
import { VlmError } from '../shared/errors';
import type { Logger } from '../shared/log';
import { decodeViolations, STATUS_DETAILS_KEY, toStatus } from '../services/common/status';

const silent: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => silent };

describe('toStatus bounds', () => {
  it('cuts a long message to 2048 characters, marking the cut', () => {
    const s = toStatus(new VlmError('INVALID_ARGUMENT', `policy.mode: got ${'x'.repeat(100_000)}`), silent);
    expect(s.details).toHaveLength(2048);
    expect(s.details.startsWith('policy.mode: got xxx')).toBe(true);
    expect(s.details.endsWith('…')).toBe(true);
  });

  it('keeps short messages and violations as they are', () => {
    const e = VlmError.invalid('prompt', 'is empty');
    const s = toStatus(e, silent);
    expect(s.details).toBe('prompt: is empty');
    expect(decodeViolations(s.metadata)).toEqual([{ field: 'prompt', description: 'is empty' }]);
  });

  it('cuts each violation and drops those past the total bound, keeping the first', () => {
    const violations = Array.from({ length: 200 }, (_, i) => ({ field: `policy.params[p${i}]${'f'.repeat(1000)}`, description: 'd'.repeat(5000) }));
    const s = toStatus(new VlmError('INVALID_ARGUMENT', 'many', { violations }), silent);
    const sent = decodeViolations(s.metadata);
    expect(sent[0]!.field.startsWith('policy.params[p0]')).toBe(true);
    for (const v of sent) {
      expect(v.field.length).toBeLessThanOrEqual(256);
      expect(v.description.length).toBeLessThanOrEqual(1024);
    }
    expect(sent.length).toBeLessThan(200);
    expect(sent.reduce((n, v) => n + v.field.length + v.description.length, 0)).toBeLessThanOrEqual(16 * 1024);
    expect((s.metadata.get(STATUS_DETAILS_KEY)[0] as Buffer).length).toBeLessThan(24 * 1024);
  });

  it('never cuts a character in half (a lone surrogate cannot be percent-encoded into grpc-message)', () => {
    const s = toStatus(new VlmError('INVALID_ARGUMENT', `${'a'.repeat(2046)}🙂🙂`), silent);
    expect(() => encodeURIComponent(s.details)).not.toThrow();
    expect(s.details).toBe(`${'a'.repeat(2046)}…`);
  });
});
