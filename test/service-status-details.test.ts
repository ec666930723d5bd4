/**
 * What a caller can branch on besides the code: every status carries google.rpc.Status in
 * `grpc-status-details-bin`, with google.rpc.ErrorInfo (domain vlm.v1) naming the reason and
 * google.rpc.RetryInfo saying how long to wait, for the errors worth retrying. A generic gRPC client
 * reads them with the upstream googleapis messages; this file reads them the same way.
 */
import { Metadata, status as GrpcCode } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { GRPC_CODE_NAMES, RPC_CODE, VLM_ERROR_REASONS, VlmError } from '../shared/errors';
import { ErrorReason } from '../gen/vlm/v1/common';
import type { Logger } from '../shared/log';
import { decodeStatusDetails, ERROR_DOMAIN, fromServiceError, STATUS_DETAILS_KEY, statusObject, toStatus } from '../services/common/status';
import { Status } from '../gen/google/rpc/status';
import { ErrorInfo, RetryInfo } from '../gen/google/rpc/error_details';

const silent: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => silent };

/** The details as a client that knows only the googleapis messages sees them. */
function genericView(metadata: Metadata): { types: string[]; reason?: string; domain?: string; retryMs?: number } {
  const status = Status.decode(metadata.get(STATUS_DETAILS_KEY)[0] as Buffer);
  const view: { types: string[]; reason?: string; domain?: string; retryMs?: number } = { types: status.details.map((d) => d.typeUrl) };
  for (const d of status.details) {
    if (d.typeUrl.endsWith('/google.rpc.ErrorInfo')) Object.assign(view, { reason: ErrorInfo.decode(d.value).reason, domain: ErrorInfo.decode(d.value).domain });
    if (d.typeUrl.endsWith('/google.rpc.RetryInfo')) {
      const delay = RetryInfo.decode(d.value).retryDelay!;
      view.retryMs = Number(delay.seconds) * 1000 + delay.nanos / 1e6;
    }
  }
  return view;
}

describe('status codes', () => {
  it('each error code is sent as the gRPC status of the same name, numbered as google.rpc.Code', () => {
    for (const [name, number] of Object.entries(RPC_CODE)) {
      expect(GrpcCode[name as keyof typeof GrpcCode], name).toBe(number);
      expect(toStatus(new VlmError(name as keyof typeof RPC_CODE, 'x'), silent).code, name).toBe(number);
    }
  });

  it("names every gRPC code as grpc-js does (the spans' error.type reads the same table)", () => {
    const numbered = Object.entries(GrpcCode).filter(([, v]) => typeof v === 'number');
    expect(numbered).toHaveLength(GRPC_CODE_NAMES.length);
    for (const [name, number] of numbered) expect(GRPC_CODE_NAMES[number as number], name).toBe(name);
  });
});

describe('status details', () => {
  it('sends exactly the reasons the proto lists in vlm.v1.ErrorReason, so clients can compare against generated constants', () => {
    const listed = Object.keys(ErrorReason).filter((k) => Number.isNaN(Number(k)) && k !== 'ERROR_REASON_UNSPECIFIED' && k !== 'UNRECOGNIZED');
    expect(listed).toEqual([...VLM_ERROR_REASONS]);
  });

  it('a full queue says QUEUE_FULL in domain vlm.v1 and when to retry, as googleapis messages', () => {
    const s = toStatus(new VlmError('RESOURCE_EXHAUSTED', 'busy', { reason: 'QUEUE_FULL', retryDelayMs: 1500 }), silent);
    expect(s.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    expect(genericView(s.metadata)).toEqual({
      types: ['type.googleapis.com/google.rpc.ErrorInfo', 'type.googleapis.com/google.rpc.RetryInfo'],
      reason: 'QUEUE_FULL',
      domain: ERROR_DOMAIN,
      retryMs: 1500,
    });
  });

  it('a retry delay of zero is sent (retry now, elsewhere), and an unset one is not', () => {
    expect(genericView(toStatus(new VlmError('UNAVAILABLE', 'draining', { reason: 'SHUTTING_DOWN', retryDelayMs: 0 }), silent).metadata).retryMs).toBe(0);
    expect(genericView(toStatus(new VlmError('UNAVAILABLE', 'x', { reason: 'NO_WORKER' }), silent).metadata).types).toEqual(['type.googleapis.com/google.rpc.ErrorInfo']);
  });

  it('an error without reason or delay carries neither (a caller must not read "retry" into it)', () => {
    expect(genericView(toStatus(VlmError.invalid('prompt', 'is empty'), silent).metadata).types).toEqual(['type.googleapis.com/google.rpc.BadRequest']);
    expect(genericView(toStatus(new VlmError('DEADLINE_EXCEEDED', 'late'), silent).metadata).types).toEqual([]);
  });

  it('INTERNAL sends nothing but its fixed message, whatever the error held', () => {
    const s = toStatus(new VlmError('INTERNAL', 'worker died at /secret/path', { reason: 'NO_WORKER', retryDelayMs: 10 }), silent);
    expect(s.details).toBe('internal error');
    expect(genericView(s.metadata).types).toEqual([]);
  });

  it('round-trips through a client: the relayed error keeps code, reason and delay', () => {
    const sent = statusObject(GrpcCode.UNAVAILABLE, 'the service is shutting down', { reason: 'SHUTTING_DOWN', retryDelayMs: 0 });
    const received = fromServiceError({ code: sent.code, details: sent.details, metadata: sent.metadata });
    expect([received.code, received.reason, received.retryDelayMs]).toEqual(['UNAVAILABLE', 'SHUTTING_DOWN', 0]);
  });

  it('keeps sub-second and multi-second delays exact to the millisecond', () => {
    for (const ms of [1, 999, 1000, 61_234]) {
      expect(decodeStatusDetails(statusObject(GrpcCode.RESOURCE_EXHAUSTED, 'x', { retryDelayMs: ms }).metadata).retryDelayMs).toBe(ms);
    }
  });

  it('ignores a reason from another domain or one this version does not know, and an unreadable trailer', () => {
    const foreign = new Metadata();
    const info = (reason: string, domain: string) => ({ typeUrl: 'type.googleapis.com/google.rpc.ErrorInfo', value: Buffer.from(ErrorInfo.encode({ reason, domain, metadata: {} }).finish()) });
    foreign.set(STATUS_DETAILS_KEY, Buffer.from(Status.encode({ code: 8, message: 'x', details: [info('QUEUE_FULL', 'googleapis.com'), info('NEW_REASON', ERROR_DOMAIN)] }).finish()));
    expect(decodeStatusDetails(foreign)).toEqual({ violations: [] });
    const garbage = new Metadata();
    garbage.set(STATUS_DETAILS_KEY, Buffer.from([0xff, 0xff, 0xff]));
    expect(decodeStatusDetails(garbage)).toEqual({ violations: [] });
  });

  it('crosses the worker boundary with reason and delay intact', () => {
    const e = VlmError.fromJSON(JSON.parse(JSON.stringify(new VlmError('RESOURCE_EXHAUSTED', 'oom', { reason: 'OUT_OF_MEMORY', retryDelayMs: 1000 }).toJSON())));
    expect([e.code, e.reason, e.retryDelayMs]).toEqual(['RESOURCE_EXHAUSTED', 'OUT_OF_MEMORY', 1000]);
  });
});
