/**
 * The metadata every caller of these services sends: the bearer token the services' auth interceptor
 * checks and the request id their logs and spans carry. One place, so the CLI, the load generator and
 * the hop to vision spell them alike.
 */
import { Metadata } from '@grpc/grpc-js';
import { ON_BEHALF_OF_KEY, REQUEST_ID_KEY } from './interceptors';

/**
 * The hop's: the content hash of the model the language service runs. Vision refuses a request whose
 * hash is not its own before it queues or encodes it (a rollout in progress), instead of encoding a
 * tensor the language service can only throw away.
 */
export const EXPECTED_MODEL_KEY = 'x-vlm-expected-model';

export function callMetadata(options: { authToken?: string | null; requestId?: string; expectedModel?: string; onBehalfOf?: string }): Metadata {
  const md = new Metadata();
  if (options.requestId) md.set(REQUEST_ID_KEY, options.requestId);
  if (options.onBehalfOf) md.set(ON_BEHALF_OF_KEY, options.onBehalfOf);
  if (options.authToken) md.set('authorization', `Bearer ${options.authToken}`);
  if (options.expectedModel) md.set(EXPECTED_MODEL_KEY, options.expectedModel);
  return md;
}
