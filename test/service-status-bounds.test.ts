/**
 * A status stays small whatever its error says: the message and the violations ride in the trailers,
 * and C-core and Java clients accept 8 KiB of them by default (past that they see RESOURCE_EXHAUSTED
 * with the details lost). Long messages and long or many violations are cut, earlier ones kept, and
 * the message says how many were left out.
 */
import { describe, expect, it } from 'vitest';
import { VlmError } from '../shared/errors';
import type { Logger } from '../shared/log';
import { decodeViolations, STATUS_DETAILS_KEY, toStatus } from '../services/common/status';

const silent: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => silent };

/** Bytes a header block takes against a client's metadata limit: each entry's name and value and 32 (RFC 7541 4.1, as C-core counts). */
function metadataBytes(headers: Record<string, string>): number {
  return Object.entries(headers).reduce((n, [k, v]) => n + k.length + v.length + 32, 0);
}

/** A trailers-only refusal as grpc-js sends it, with the longest request id this service echoes. */
function trailersOnly(s: ReturnType<typeof toStatus>): Record<string, string> {
  return {
    ':status': '200',
    'content-type': 'application/grpc+proto',
    'grpc-accept-encoding': 'identity',
    'grpc-status': String(s.code),
    'grpc-message': encodeURI(s.details),
    'grpc-status-details-bin': (s.metadata.get(STATUS_DETAILS_KEY)[0] as Buffer).toString('base64'),
    'grpc-retry-pushback-ms': '1000',
    'x-request-id': 'r'.repeat(128),
  };
}

describe('toStatus bounds', () => {
  it('cuts a long message to what percent-encodes in 1536 bytes, marking the cut', () => {
    const s = toStatus(new VlmError('INVALID_ARGUMENT', `policy.mode: got ${'x'.repeat(100_000)}`), silent);
    expect(encodeURI(s.details).length).toBeLessThanOrEqual(1536);
    expect(encodeURI(s.details).length).toBeGreaterThan(1500);
    expect(s.details.startsWith('policy.mode: got xxx')).toBe(true);
    expect(s.details.endsWith('…')).toBe(true);
    // Characters that percent-encode long are counted as sent.
    const wide = toStatus(new VlmError('INVALID_ARGUMENT', `prompt: ${'🙂'.repeat(5000)}`), silent);
    expect(encodeURI(wide.details).length).toBeLessThanOrEqual(1536);
    expect(wide.details.length).toBeGreaterThan(100);
  });

  it('keeps short messages and violations as they are', () => {
    const e = VlmError.invalid('prompt', 'is empty');
    const s = toStatus(e, silent);
    expect(s.details).toBe('prompt: is empty');
    expect(decodeViolations(s.metadata)).toEqual([{ field: 'prompt', description: 'is empty' }]);
  });

  it('cuts each violation and keeps as many as fit, the first ones, saying how many more there were', () => {
    const violations = Array.from({ length: 200 }, (_, i) => ({ field: `policy.params[p${i}]${'f'.repeat(1000)}`, description: 'd'.repeat(5000) }));
    const s = toStatus(new VlmError('INVALID_ARGUMENT', 'many', { violations }), silent);
    const sent = decodeViolations(s.metadata);
    expect(sent[0]!.field.startsWith('policy.params[p0]')).toBe(true);
    for (const v of sent) {
      expect(v.field.length).toBeLessThanOrEqual(256);
      expect(v.description.length).toBeLessThanOrEqual(1024);
    }
    expect(sent.length).toBeGreaterThan(0);
    expect(s.details).toBe(`many (and ${200 - sent.length} more field violations not listed)`);
    expect(metadataBytes(trailersOnly(s))).toBeLessThanOrEqual(8192);
  });

  it("fits C-core's and Java's default 8 KiB of response metadata, whatever the request's mistakes (30 to 3000 misspelt parameters)", () => {
    for (const n of [30, 300, 3000]) {
      const violations = Array.from({ length: n }, (_, i) => ({ field: `policy.params.lamda${i}${'x'.repeat(i % 60)}`, description: `unknown parameter 'lamda${i}' for ficoco-v; valid: lambda, k, start_layer, merge, alpha` }));
      const s = toStatus(new VlmError('INVALID_ARGUMENT', violations.map((v) => `${v.field}: ${v.description}`).join('; '), { violations }), silent);
      expect(metadataBytes(trailersOnly(s)), `${n} violations`).toBeLessThanOrEqual(8192);
      // Each part within its own bound as sent, the note on left-out violations included.
      expect(encodeURI(s.details).length, `${n} violations`).toBeLessThanOrEqual(1536);
      expect((s.metadata.get(STATUS_DETAILS_KEY)[0] as Buffer).toString('base64').length + encodeURI(s.details).length).toBeLessThanOrEqual(7 * 1024);
      const sent = decodeViolations(s.metadata);
      expect(sent[0]!.field).toBe('policy.params.lamda0');
      if (sent.length < n) expect(s.details).toMatch(new RegExp(`\\(and ${n - sent.length} more field violations not listed\\)$`));
    }
  });

  it('never cuts a character in half (a lone surrogate cannot be percent-encoded into grpc-message)', () => {
    for (let pad = 1520; pad < 1536; pad++) {
      const s = toStatus(new VlmError('INVALID_ARGUMENT', `${'a'.repeat(pad)}🙂🙂🙂`), silent);
      expect(() => encodeURI(s.details)).not.toThrow();
      expect(s.details).not.toMatch(/[\ud800-\udfff](?![\udc00-\udfff])/u);
    }
  });
});
