/**
 * Opening ONNX Runtime sessions on the configured execution providers. ORT throws when a provider is
 * unavailable instead of falling back, so the configured order is walked here (and only that order:
 * a lone `cuda:0` never falls back to the CPU): each failure is logged with its cause, and the first
 * provider that opens a session is pinned for the rest of the bundle (mixing providers between
 * stages would move every hidden state across devices).
 */
import { ort } from './ort';
import * as path from 'node:path';
import { VlmError } from '../errors';
import { providerName, type ProviderSpec, type RuntimeConfig } from '../config';
import type { Logger } from '../log';
import { deviceFaultError, isDeviceFault } from './device-fault';
import { isOutOfMemory, OUT_OF_MEMORY_RETRY_MS } from './out-of-memory';

export type SessionRuntime = Pick<RuntimeConfig, 'providers' | 'intraOpThreads' | 'interOpThreads' | 'graphOptimization' | 'spinning'>;

function executionProvider(p: ProviderSpec): ort.InferenceSession.ExecutionProviderConfig {
  switch (p.kind) {
    case 'cpu':
      return 'cpu';
    case 'cuda':
      return { name: 'cuda', deviceId: p.deviceId };
    case 'webgpu':
      return 'webgpu';
  }
}

export function sessionOptions(runtime: SessionRuntime, provider: ProviderSpec): ort.InferenceSession.SessionOptions {
  const spin = runtime.spinning ? '1' : '0';
  return {
    executionProviders: [executionProvider(provider)],
    intraOpNumThreads: runtime.intraOpThreads,
    interOpNumThreads: runtime.interOpThreads,
    graphOptimizationLevel: runtime.graphOptimization,
    executionMode: 'sequential',
    logSeverityLevel: 3,
    // A bundle opens a session per stage (39 for the embedded model), each with its own CPU arena
    // holding its peak activations for good; without them the embedded model's eval items ran 2.6 %
    // faster (decode steps 11 %) with identical answers, and the memory goes back between runs.
    ...(provider.kind === 'cpu' ? { enableCpuMemArena: false } : {}),
    // Spinning intra-op threads burn the cores other workers and requests need, and on a busy machine
    // a spinning pool slows a small model down by an order of magnitude (measured: 133 ms -> 2.5 s).
    extra: {
      session: {
        intra_op: { allow_spinning: spin },
        inter_op: { allow_spinning: spin },
        // Every session has its own CUDA arena, and an arena grows by doubling: weights placed in it
        // reserve up to twice their size, per session, for good (a 7B bundle filled an 80 GB GPU).
        // Weights allocated exactly, outside the arena, leave it to the activations.
        ...(provider.kind === 'cuda' ? { use_device_allocator_for_initializers: '1' } : {}),
      },
    },
  };
}

export class ProviderChain {
  private pinned: ProviderSpec | undefined;
  private readonly failed = new Map<string, string>();

  constructor(
    private readonly runtime: SessionRuntime,
    private readonly log: Logger,
  ) {}

  /** The provider sessions run on, once the first session has opened. */
  get active(): string | undefined {
    return this.pinned && providerName(this.pinned);
  }

  /** Opens the graph at `modelPath`; `graph` names it in what callers read (the stage name, not the server's path). */
  async open(modelPath: string, graph = path.basename(modelPath, '.onnx')): Promise<{ session: ort.InferenceSession; provider: string }> {
    const candidates = this.pinned ? [this.pinned] : this.runtime.providers.filter((p) => !this.failed.has(providerName(p)));
    for (const [i, p] of candidates.entries()) {
      const name = providerName(p);
      try {
        const session = await ort.InferenceSession.create(modelPath, sessionOptions(this.runtime, p));
        if (!this.pinned) {
          this.pinned = p;
          const order = this.runtime.providers.map(providerName);
          if (name !== order[0]) this.log.warn('execution provider fell back', { wanted: order, using: name, failures: Object.fromEntries(this.failed) });
          else this.log.info('execution provider', { using: name, order });
        }
        return { session, provider: name };
      } catch (err) {
        const message = (err as Error).message;
        // A file no provider can parse is the bundle's fault: stepping on to the next provider, and
        // then blaming the providers, would send the operator to the wrong place.
        if (isUnreadableGraph(message)) {
          this.log.error('graph file could not be read', { graph: modelPath, provider: name, error: message });
          throw new VlmError('FAILED_PRECONDITION', `graph ${graph} could not be read: its file is not a model this runtime can load (corrupt, cut short or of another ONNX version); check the bundle's files against their hashes (--verify-hashes / VLM_VERIFY_HASHES=true; the service log has the runtime's message)`, { cause: err });
        }
        // A device that failed for good is the process's problem, pinned or not: no other provider
        // should take over from a service advertising the GPU, and no replacement worker can use it.
        if (isDeviceFault(message)) throw deviceFaultError(`opening graph ${graph} on ${name}`, err);
        // Once a provider is pinned, a failure to open is this graph's problem, not the provider's;
        // out of memory is worth a retry (the loader retries the open on the next request).
        if (this.pinned) {
          // A lazily opened graph fails inside a caller's request: the runtime's text (allocator,
          // sizes, source paths) and the server's paths stay in the error's cause and the log, not
          // in the caller's status. The worker logs an out-of-memory failure with its cause.
          if (isOutOfMemory(message)) {
            throw new VlmError('RESOURCE_EXHAUSTED', `graph ${graph} could not be opened on ${name}: out of memory (the request needs more than is free now)`, { cause: err, reason: 'OUT_OF_MEMORY', retryDelayMs: OUT_OF_MEMORY_RETRY_MS });
          }
          this.log.error('graph could not be opened', { graph: modelPath, provider: name, error: message });
          throw new VlmError('FAILED_PRECONDITION', `graph ${graph} could not be opened on ${name}: the model bundle or the provider is broken (the service log has the runtime's message)`, { cause: err });
        }
        // Out of memory says the device works but is full (another worker or process shares it):
        // falling on to the next provider would pin this worker to the CPU for good while its
        // service goes on advertising the GPU. Failing lets the start be retried once memory frees.
        // Paths and the runtime's text go to the log, not into the error: with lazy sessions and no
        // warm-up the first open happens inside a caller's request.
        if (isOutOfMemory(message)) {
          this.log.error('graph could not be opened: out of memory', { graph: modelPath, provider: name, error: message });
          throw new VlmError('RESOURCE_EXHAUSTED', `cannot open graph ${graph} on ${name}: out of memory (the service log has the runtime's message); not falling back to another provider: free memory on the device or run fewer workers on it`, { cause: err, reason: 'OUT_OF_MEMORY', retryDelayMs: OUT_OF_MEMORY_RETRY_MS });
        }
        this.failed.set(name, message);
        // The last one's failure is the error thrown below, not a step on to another.
        if (i < candidates.length - 1) this.log.warn('execution provider unavailable, trying the next', { provider: name, error: message });
      }
    }
    if (this.failed.size > 0) this.log.error('no execution provider could open a graph', { graph: modelPath, failures: Object.fromEntries(this.failed) });
    const tried = [...this.failed.keys()].join(', ');
    throw new VlmError('FAILED_PRECONDITION', `no execution provider could open graph ${graph} (tried ${tried || 'none'}; the service log has each one's message); set --provider / VLM_PROVIDER (or this service's --vision-provider / --language-provider, which win over it) to one this host has${fallbackHint(this.runtime.providers)}`);
  }
}

/** ONNX Runtime's messages for a graph file it cannot parse, whatever the provider. */
function isUnreadableGraph(message: string): boolean {
  return /Protobuf parsing failed|ModelProto does not have a graph|No graph was found in the protobuf|Unsupported model IR version/.test(message);
}

/** A list without the CPU never falls back to it by itself; name the explicit way to ask for that. */
function fallbackHint(providers: readonly ProviderSpec[]): string {
  if (providers.some((p) => p.kind === 'cpu')) return '';
  return `, or list a fallback explicitly (${[...providers.map(providerName), 'cpu'].join(',')})`;
}
