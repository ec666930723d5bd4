/**
 * The metadata every caller of these services sends: the bearer token the services' auth interceptor
 * checks and the request id their logs and spans carry. One place, so the CLI, the load generator and
 * the hop to vision spell them alike.
 */
import { Metadata } from '@grpc/grpc-js';
import { REQUEST_ID_KEY } from './interceptors';

export function callMetadata(options: { authToken?: string | null; requestId?: string }): Metadata {
  const md = new Metadata();
  if (options.requestId) md.set(REQUEST_ID_KEY, options.requestId);
  if (options.authToken) md.set('authorization', `Bearer ${options.authToken}`);
  return md;
}
