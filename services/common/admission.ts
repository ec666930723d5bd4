/**
 * Admission on the main port: calls in flight (the cap, its last quarter kept for callers below a fair
 * share, the drain) and the bounds on what health and reflection calls, which need no token, can hold.
 * One instance per server, installed by grpc-server.ts among the interceptors (interceptors.ts).
 */
import { unbracketed } from '../../shared/net-address';
import { ServerListenerBuilder, type ServerInterceptingCall, type ServerInterceptingCallInterface, type ServerInterceptor } from '@grpc/grpc-js';
import { VlmError } from '../../shared/errors';
import { CALLER_KEY, HEALTH_PATH_PREFIX, REFLECTION_PATH_PREFIX, endingWith, isServiceInfrastructure, listening, onRequestArrived, reject } from './interceptors';

/** As the inference pool's QUEUE_FULL: the calls in flight end within a typical request's time. */
const IN_FLIGHT_RETRY_MS = 1000;
/**
 * Health requests being received at once on the main port (each a few bytes when honest), in all and
 * from one peer address: each may announce a message up to the receive limit, which bounds the total,
 * and without a share one client holding them (re-opened as each runs out of time) refused every
 * other client's Check and Watch.
 */
export const INFRASTRUCTURE_RECEIVING_MAX = 8;
export const INFRASTRUCTURE_RECEIVING_PER_PEER = 2;
/** How long a health or reflection request may take to arrive, whatever its deadline. */
export const INFRASTRUCTURE_ARRIVAL_MS = 5000;
/**
 * Reflection streams open at once, and how long one may stay open. ServerReflectionInfo is a
 * bidirectional stream: after its first request a client may send more for as long as it keeps the
 * stream, each up to the receive limit, and @grpc/reflection answers each without waiting for the
 * client to read. A tool's query (grpcurl list, describe) takes well under a second on one stream.
 */
export const REFLECTION_STREAMS_MAX = 4;
/** One address may hold this many of them: one client holding all four refused everyone's reflection. */
export const REFLECTION_STREAMS_PER_PEER = 2;
export const REFLECTION_LIFETIME_MS = 15_000;
/**
 * Health Watch streams open at once on the main port, in all and from one peer address. A Watch needs
 * no token and stays open for as long as its client likes, about 12 KB each: 50,000 from one client
 * took a language process from 388 MiB to 1.1 GiB in 10 s, so the total bounds them to about 50 MB.
 * Clients that balance with health checks (gRFC A17) hold one per channel and replica, and treat a
 * refused Watch as an unhealthy replica: a single total would let one peer make a replica look down
 * to every other client, so each peer address gets a share; probes use Check (or the health port).
 */
export const HEALTH_WATCHES_MAX = 4096;
export const HEALTH_WATCHES_PER_PEER = 64;
const HEALTH_WATCH_PATH = `${HEALTH_PATH_PREFIX}Watch`;

/** RESOURCE_EXHAUSTED QUEUE_FULL for the admission limits, retried after IN_FLIGHT_RETRY_MS. */
function queueFull(message: string): VlmError {
  return new VlmError('RESOURCE_EXHAUSTED', message, { reason: 'QUEUE_FULL', retryDelayMs: IN_FLIGHT_RETRY_MS });
}

/** A count of places, at most `max` held at once. */
class Places {
  private held = 0;
  constructor(readonly max: number) {}

  take(): boolean {
    if (this.held >= this.max) return false;
    this.held++;
    return true;
  }

  give(): void {
    this.held--;
  }
}

/** A count per key; a key leaves the map with its last unit, so the map holds only keys counting. */
class CountsByKey {
  private readonly counts = new Map<string, number>();

  get(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  add(key: string): void {
    this.counts.set(key, this.get(key) + 1);
  }

  /** False, changing nothing, when the key counts none. */
  remove(key: string): boolean {
    const held = this.get(key);
    if (held === 0) return false;
    if (held === 1) this.counts.delete(key);
    else this.counts.set(key, held - 1);
    return true;
  }

  get size(): number {
    return this.counts.size;
  }
}

/** Places under a total and a share per key (a peer address); a key leaves the map with its last place. */
export class SharedPlaces {
  private readonly total: Places;
  private readonly byKey = new CountsByKey();

  constructor(
    total: number,
    readonly perKey: number,
  ) {
    this.total = new Places(total);
  }

  /** Why no place is free for `key` ('total' or 'share'), or null once one is taken. */
  take(key: string): 'total' | 'share' | null {
    if (this.byKey.get(key) >= this.perKey) return 'share';
    if (!this.total.take()) return 'total';
    this.byKey.add(key);
    return null;
  }

  give(key: string): void {
    if (this.byKey.remove(key)) this.total.give();
  }

  /** Places in all. */
  get max(): number {
    return this.total.max;
  }

  /** Keys holding a place: what the map keeps. */
  get keys(): number {
    return this.byKey.size;
  }
}

/** What a refusal names: the address's share of `what`, or their total. */
function placesFull(full: 'total' | 'share', places: SharedPlaces, what: string): string {
  return full === 'share' ? `${places.perKey} ${what} from this address` : `${places.max} ${what}`;
}

/**
 * The address of grpc-js's peer ("10.0.0.7:51234", "::1:51234": always with the port over TCP, and
 * "unknown" without an address), whatever its port; an IPv4 client reaching a dual-stack listener
 * ("::ffff:10.0.0.7") is the IPv4 address. IPv6 clients are told apart by their whole address, not a
 * prefix: pods of one node may share a /64, and one share for all of them would refuse honest ones.
 */
export function peerHost(peer: string): string {
  const address = unbracketed(peer.replace(/:\d+$/, ''));
  return /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(address) ? address.slice(7) : address;
}

/** One call's place among `SharedPlaces`, optionally with a timer for how long it may be held; given back once. */
class HeldPlace {
  private from: { readonly places: SharedPlaces; readonly key: string } | undefined;
  private timer: NodeJS.Timeout | undefined;

  /**
   * Takes a place for `key` (null once taken; else why none is free) and, with `expiry`, calls its
   * `expired` after its `ms` unless given back first.
   */
  take(places: SharedPlaces, key: string, expiry?: { readonly ms: number; readonly expired: () => void }): 'total' | 'share' | null {
    const full = places.take(key);
    if (full) return full;
    this.from = { places, key };
    if (expiry) {
      this.timer = setTimeout(expiry.expired, expiry.ms);
      this.timer.unref();
    }
    return null;
  }

  giveBack(): void {
    clearTimeout(this.timer);
    this.from?.places.give(this.from.key);
    this.from = undefined;
  }
}

/**
 * Counts calls in flight and, once draining, refuses new ones with UNAVAILABLE (clients retry another
 * replica). Health and reflection are not counted or refused; probes watch the drain on the plaintext
 * health port, since the main port stops taking connections when the drain starts (GOAWAY).
 *
 * With `maxInFlight`, a call arriving when that many are in flight is RESOURCE_EXHAUSTED at its
 * headers. Every call holds its request message (up to the receive limit) while it is received,
 * queued, run or, at the language service, on its vision hop; the inference pool bounds only those
 * it has taken, so this bounds the rest: a burst of large uploads cannot grow a pod past its memory.
 *
 * A flat cap would let one caller's burst fill it and refuse everyone else before the pool's fair
 * queue could weigh them, so its last quarter (`reservedInFlight`) is kept for named callers holding
 * less than a fair share: the cap divided among the callers holding calls, plus one share for a caller
 * not yet seen. Below that quarter calls are taken first come, so one caller alone may hold three
 * quarters of the cap, and a newcomer finds room until the cap itself is full. Callers are named by
 * the auth interceptor (at vision, `token/sub`: the language service's callers are weighed one by
 * one, and a token naming many sub-callers gets a share for each, unlike in the pool's queue; vision
 * serves only the language service's certificate in `k8s/`); without authentication every call is
 * one anonymous caller and only the cap applies.
 */
export class Admission {
  private inFlight = 0;
  /** Calls in flight by named caller; a caller leaves when its last call ends. */
  private readonly byCaller = new CountsByKey();
  private draining = false;
  private idleWaiters: Array<() => void> = [];
  /** Health calls whose request message is still arriving (infrastructureCall), in all and per peer address. */
  private readonly healthArriving: SharedPlaces;
  /** Reflection streams open (reflectionCall), in all and per peer address. */
  private readonly reflectionStreams = new SharedPlaces(REFLECTION_STREAMS_MAX, REFLECTION_STREAMS_PER_PEER);
  /** Health Watch streams open (infrastructureCall), in all and per peer address. */
  private readonly healthWatches = new SharedPlaces(HEALTH_WATCHES_MAX, HEALTH_WATCHES_PER_PEER);
  /** Counted calls whose request message has not arrived yet (no handler runs them), each with its ending. */
  private readonly unread = new Map<ServerInterceptingCallInterface, (err: VlmError) => void>();

  /**
   * `maxInFlight`: 0 for no limit. `lightPaths`: methods clients call to learn what to send
   * (GetModelInfo), which must work when the cap is full: they may go past it, up to twice the cap
   * (the transport's receive limit applies to their messages too, so they are bounded all the same).
   */
  constructor(
    private readonly maxInFlight = 0,
    private readonly lightPaths: ReadonlySet<string> = new Set(),
    readonly reflectionLifetimeMs = REFLECTION_LIFETIME_MS,
    healthArriving = new SharedPlaces(INFRASTRUCTURE_RECEIVING_MAX, INFRASTRUCTURE_RECEIVING_PER_PEER),
  ) {
    this.healthArriving = healthArriving;
  }

  /**
   * The plaintext health port's: its receive limit is a health request's own, so arriving requests
   * hold next to nothing, and capping them would let anyone reaching it refuse the kubelet's probes.
   * Each must still arrive in time, and Watch streams keep their caps.
   */
  static forHealthPort(): Admission {
    return new Admission(0, new Set(), REFLECTION_LIFETIME_MS, new SharedPlaces(Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY));
  }

  /** The places at the top of the cap only callers below their fair share may take (none under 4). */
  get reservedInFlight(): number {
    return Math.floor(this.maxInFlight / 4);
  }

  /** Why a call from `caller` ('' when anonymous) would be refused now, or null to admit it. */
  private refusal(caller: string, light: boolean): VlmError | null {
    if (this.maxInFlight <= 0) return null;
    if (light) {
      return this.inFlight < 2 * this.maxInFlight ? null : queueFull(`this replica holds twice its limit of ${this.maxInFlight} calls in flight (--max-inflight-calls); retry later`);
    }
    if (this.inFlight >= this.maxInFlight) {
      return queueFull(`this replica is at its limit of ${this.maxInFlight} calls in flight (--max-inflight-calls); retry later`);
    }
    if (caller === '' || this.inFlight < this.maxInFlight - this.reservedInFlight) return null;
    const held = this.byCaller.get(caller);
    // A caller holding nothing is below any share; one holding calls is among byCaller already.
    const share = Math.max(1, Math.floor(this.maxInFlight / (this.byCaller.size + 1)));
    if (held < share) return null;
    // The caller's own count only: other callers' names and counts are not theirs to see.
    return queueFull(`this replica keeps its last ${this.reservedInFlight} of ${this.maxInFlight} places for calls (--max-inflight-calls) for callers below their share, and this caller holds ${held}; retry later`);
  }

  get active(): number {
    return this.inFlight;
  }

  startDraining(): void {
    this.draining = true;
  }

  /**
   * Ends the counted calls still receiving their request with `err` (no handler has them, so a drain
   * cannot end them through their signals); returns how many.
   */
  refuseUnread(err: VlmError): number {
    const endings = [...this.unread.values()];
    for (const end of endings) end(err);
    return endings.length;
  }

  /** Resolves when no call is in flight (immediately if none is). */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Health: never refused for load or drain, but on the main port its messages take the same receive
   * limit as a request's (tens of MiB), and health needs no token, so anyone reaching the port could
   * have grpc-js buffer 100 of them per connection. Only so many may be arriving at once; a Check whose
   * message has arrived holds nothing, and a Watch stream holds one of its peer's HEALTH_WATCHES_PER_PEER
   * places (of HEALTH_WATCHES_MAX in all) for as long as it is open.
   */
  private infrastructureCall(method: { readonly path: string; readonly requestStream: boolean }, call: ServerInterceptingCallInterface): ServerInterceptingCall {
    const place = new HeldPlace();
    let watcher: string | undefined;
    const listener = onRequestArrived(
      new ServerListenerBuilder().withOnReceiveMetadata((metadata, next) => {
        const host = peerHost(call.getPeer());
        // Whatever deadline the caller claims: a few bytes take no longer than this.
        const arriving = place.take(this.healthArriving, host, {
          ms: INFRASTRUCTURE_ARRIVAL_MS,
          expired: () => {
            reject(call, new VlmError('DEADLINE_EXCEEDED', `the request did not arrive within ${INFRASTRUCTURE_ARRIVAL_MS / 1000} s of its headers`));
            place.giveBack();
          },
        });
        if (arriving) return reject(call, queueFull(`${placesFull(arriving, this.healthArriving, 'health requests')} are being received already; retry later (probes: use the health port)`));
        // Held for as long as the stream is open (onCancel), with no lifetime: a Watch is meant to last.
        if (method.path === HEALTH_WATCH_PATH) {
          const full = this.healthWatches.take(host);
          if (full) {
            place.giveBack();
            return reject(call, queueFull(`${placesFull(full, this.healthWatches, 'health Watch streams')} are open already; retry later (probes: use Check, or the health port)`));
          }
          watcher = host;
        }
        next(metadata);
      }),
      method,
      () => place.giveBack(),
    )
      .withOnCancel(() => {
        place.giveBack();
        if (watcher !== undefined) this.healthWatches.give(watcher);
        watcher = undefined;
      })
      .build();
    return listening(call, listener);
  }

  /**
   * A reflection stream is counted for as long as it is open, at most REFLECTION_STREAMS_MAX at once,
   * and ended after REFLECTION_LIFETIME_MS: what it can hold (partial requests up to the receive
   * limit, answers its client has not read) is bounded in number and time. Ending it may wait behind
   * answers its client does not read; stalledCallInterceptor resets such a stream.
   */
  private reflectionCall(call: ServerInterceptingCallInterface): ServerInterceptingCall {
    const place = new HeldPlace();
    const lifetime = this.reflectionLifetimeMs;
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        // Held until the stream is over (onCancel), not at the lifetime: its end may wait behind unread answers.
        const full = place.take(this.reflectionStreams, peerHost(call.getPeer()), { ms: lifetime, expired: () => reject(call, new VlmError('DEADLINE_EXCEEDED', `reflection streams are closed after ${lifetime / 1000} s; open another for more requests`)) });
        if (full) return reject(call, queueFull(`${placesFull(full, this.reflectionStreams, 'reflection streams')} are open already; retry later`));
        next(metadata);
      })
      .withOnCancel(() => place.giveBack())
      .build();
    return listening(call, listener);
  }

  interceptor(): ServerInterceptor {
    return (method, call) => {
      if (method.path.startsWith(REFLECTION_PATH_PREFIX)) return this.reflectionCall(call);
      if (isServiceInfrastructure(method.path)) return this.infrastructureCall(method, call);
      let counted = false;
      let caller = '';
      const release = (): void => {
        if (!counted) return;
        counted = false;
        this.unread.delete(call);
        this.inFlight--;
        if (caller !== '') this.byCaller.remove(caller);
        if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
      };
      const admitting = new ServerListenerBuilder().withOnReceiveMetadata((metadata, next) => {
        if (this.draining) {
          reject(call, VlmError.shuttingDown('the service is shutting down; retry on another replica'));
          return;
        }
        const named = metadata.get(CALLER_KEY)[0];
        const refused = this.refusal(typeof named === 'string' ? named : '', this.lightPaths.has(method.path));
        if (refused) {
          reject(call, refused);
          return;
        }
        counted = true;
        this.inFlight++;
        this.unread.set(call, (err) => {
          reject(call, err);
          release();
        });
        if (typeof named === 'string' && named !== '') {
          caller = named;
          this.byCaller.add(caller);
        }
        next(metadata);
      });
      return endingWith(call, onRequestArrived(admitting, method, () => this.unread.delete(call)), release);
    };
  }
}
