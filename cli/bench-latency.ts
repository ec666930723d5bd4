/**
 * `vlm bench latency [--limit N] [--budget N|P%] [--max-new-tokens N] [--spans FILE] [--json] [config flags]`
 *
 * Where the time of a request goes, per reduction method, measured from the services' own traces:
 * starts the vision and language services as two processes exporting OTLP to a receiver in this
 * process, sends the same `limit` evaluation items under every method at one budget (and unreduced),
 * one request at a time so no request waits for another, stops the services (their drain flushes the
 * spans) and analyses the traces as `vlm trace report` does. Sessions are opened and every method run
 * once per worker before the services report ready, and each policy first gets one warm-up request
 * that is left out of the figures, so first-call costs do not land on a method. Prints a markdown
 * table, or with --json one JSON object; --spans keeps the measured spans (warm-ups left out) for
 * `vlm trace report --html`, which then gives the same figures.
 */
import { existsSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { ReductionPolicy, SamplingParams } from '../gen/vlm/v1/common';
import type { GenerateRequest } from '../gen/vlm/v1/language_service';
import { languageClient, generateOnce } from '../services/language/client';
import { coLocatedServiceEnv, parseCommandLine, type Config } from '../shared/config';
import { packageRoot } from '../shared/package-root';
import { VlmError } from '../shared/errors';
import { writableFile } from './output-paths';
import { budgetAttribute, methodName } from '../shared/telemetry/policy-attributes';
import { analyseTraces, summarise, type GroupReport, type SpanRecord, type Summary } from '../shared/telemetry/analysis';
import { startTraceReceiver } from '../shared/telemetry/collector';
import { ATTR_VLM_PROVIDER, ATTR_VLM_REQUEST_ID, SERVICE_LANGUAGE, SERVICE_VISION, SpanName } from '../shared/telemetry/names';
import { isInfeasibleBudget, METHOD_PRESETS, type Budget } from '../shared/methods/policy';
import { languageMethodNames, visionMethodNames } from '../shared/methods/registry';
import type { CommandFlags } from './help';
import { integerFlag, parseBudgetFlag } from './numeric-flags';
import { GENERATED_QUESTION_TYPE, questionItems, serveFlags, startChildServices, CHILD_SERVICES_CONFIG } from './child-services';
import { budgetToWire } from '../services/common/wire';
import { asRequestId } from '../services/common/interceptors';
import { sentToken } from '../shared/auth-tokens';

const FLAGS = {
  limit: { type: 'string', arg: 'N', help: 'requests per policy, one per evaluation item taken evenly across types [default: 10]' },
  budget: { type: 'string', arg: 'N|P%', help: 'the budget every method runs at [default: 25%]' },
  'max-new-tokens': { type: 'string', arg: 'N', help: 'most answer tokens per request [default: the model\'s]' },
  spans: { type: 'string', arg: 'FILE', help: 'also write the measured spans (warm-ups left out), one JSON object per line as `vlm trace collect` writes' },
  json: { type: 'boolean', help: 'print the result as one JSON object instead of the table' },
} as const satisfies CommandFlags;

/** One request policy of the run: a method alone, a preset, or nothing. */
export interface LatencyPolicy {
  /** What the services call it (the `vlm.reduction.method` of its traces), and the row's label. */
  readonly method: string;
  readonly policy: Partial<ReductionPolicy>;
}

/** Unreduced, then every method alone in the registry's order, then every preset: the accuracy bench's rows. */
export function latencyPolicies(budget: Budget): LatencyPolicy[] {
  const wire = budgetToWire(budget);
  return [
    { method: 'none', policy: {} },
    ...visionMethodNames().filter((m) => m !== 'none').map((m) => ({ method: methodName(m, 'none'), policy: { visionMethod: m, budget: wire } })),
    ...languageMethodNames().filter((m) => m !== 'none').map((m) => ({ method: methodName('none', m), policy: { languageMethod: m, budget: wire } })),
    ...Object.keys(METHOD_PRESETS).map((preset) => ({ method: preset, policy: { preset, budget: wire } })),
  ];
}

/** Mean milliseconds per request of the stages that make up a request, from the traces. */
export interface StageMeans {
  /** Vision's Encode as vision saw it (its request span), and inside it: */
  readonly visionRequest: number;
  readonly preprocess: number;
  /** Embed graph and encoder layers with their reductions. */
  readonly tower: number;
  readonly project: number;
  /** Language reading the tensor stream until the tensor is whole. */
  readonly streamReceive: number;
  readonly prefill: number;
  readonly decode: number;
  /** Waiting for a worker, in either service (0 when requests never overlap). */
  readonly queue: number;
}

/** A service's reduction steps (`vlm.reduce` spans) per request: how many, and their mean duration. */
export interface ReduceSteps {
  readonly stepsPerRequest: number;
  /** Mean milliseconds per step (0 without steps): the scores graph, the method and the combination. */
  readonly msPerStep: number;
}

export interface LatencyRow {
  /** As the services name it (`vlm.reduction.method`). */
  readonly method: string;
  readonly budget: string;
  readonly requests: number;
  /** The language service's request span (the trace's root), milliseconds. */
  readonly endToEnd: Summary;
  /** What the caller measured, milliseconds: the root plus the client's side of the call. */
  readonly client: Summary;
  readonly stages: StageMeans;
  /** The methods' own steps, per service: where a method's cost beyond its smaller graphs goes. */
  readonly reduce: { readonly vision: ReduceSteps; readonly language: ReduceSteps };
  readonly outputTokens: number;
}

/** A policy whose budget the model cannot give the method: the service's INVALID_ARGUMENT message. */
export interface InfeasibleRow {
  readonly method: string;
  readonly infeasible: string;
}

export interface LatencyResult {
  readonly rows: Array<LatencyRow | InfeasibleRow>;
  readonly settings: { model: string; budget: string; requestsPerPolicy: number; workers: number; intraOpThreads: string | undefined; provider: string };
  /** Spans received, and those left out (the warm-up requests). */
  readonly spans: { received: number; analysed: number };
}

export interface LatencyOptions {
  readonly config: Config;
  readonly limit: number;
  readonly budget: Budget;
  readonly maxNewTokens: number | undefined;
  readonly serveFlags: readonly string[];
  readonly serviceEnv: NodeJS.ProcessEnv;
  /** Only these policies (tests); default latencyPolicies(budget). */
  readonly policies?: readonly LatencyPolicy[];
  readonly onSpans?: (spans: readonly SpanRecord[]) => void;
  readonly onProgress?: (line: string) => void;
}

const WARM_UP_PREFIX = 'warm-up-';

/** `limit` questions; a bundle without evaluation items asks its one generated question `limit` times. */
async function requestItems(modelDir: string, limit: number): Promise<Array<{ image: Buffer; question: string }>> {
  const found = await questionItems(modelDir, limit);
  const items = found[0]?.type === GENERATED_QUESTION_TYPE ? Array.from({ length: limit }, () => found[0]!) : found;
  return items.map((it) => ({ image: it.bytes, question: it.question }));
}

/**
 * The services' environment for a run whose spans come here: the trace variables themselves, not
 * only the generic ones. A shell's own OTEL_* settings (a local Jaeger's endpoint, a console
 * exporter, the SDK disabled) win over the generic ones in the SDK and would send the spans
 * elsewhere, found out only after the whole run.
 */
function tracedServiceEnv(serviceEnv: NodeJS.ProcessEnv, receiverUrl: string): NodeJS.ProcessEnv {
  return {
    ...serviceEnv,
    OTEL_SDK_DISABLED: 'false',
    OTEL_TRACES_EXPORTER: 'otlp',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiverUrl,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiverUrl}/v1/traces`,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf',
    OTEL_TRACES_SAMPLER: 'always_on',
    // The hop must carry the trace context whatever the shell says (`none` would split each request).
    OTEL_PROPAGATORS: 'tracecontext',
    OTEL_METRICS_EXPORTER: 'none',
    OTEL_LOGS_EXPORTER: 'none',
    // First calls per method are a warm-up's cost, not the method's.
    VLM_EAGER_SESSIONS: 'true',
  };
}

/** What the client saw, per method: latencies, output tokens, and the methods this budget cannot run. */
interface ClientSide {
  readonly clientMs: Map<string, number[]>;
  readonly outputTokens: Map<string, number[]>;
  readonly infeasible: Map<string, string>;
}

/** Starts the pair, warms each policy up once, then asks every item under every feasible policy. */
async function askAll(o: LatencyOptions, policies: readonly LatencyPolicy[], items: ReadonlyArray<{ image: Buffer; question: string }>, env: NodeJS.ProcessEnv): Promise<ClientSide> {
  const side: ClientSide = { clientMs: new Map(), outputTokens: new Map(), infeasible: new Map() };
  // A 7B bundle on a GPU opens and warms every method's sessions before it reports ready: minutes.
  const services = await startChildServices({ modelDir: o.config.model.dir, flags: o.serveFlags, env, startTimeoutMs: 600_000 });
  const client = languageClient(`127.0.0.1:${services.languagePort}`);
  try {
    const ask = async (p: LatencyPolicy, item: { image: Buffer; question: string }, requestId: string) => {
      const request: GenerateRequest = {
        image: item.image,
        prompt: item.question,
        sampling: SamplingParams.fromPartial({ maxTokens: o.maxNewTokens }),
        policy: ReductionPolicy.fromPartial(p.policy),
        limits: undefined,
      };
      return generateOnce(client, request, { deadline: Date.now() + o.config.limits.deadlineMs, authToken: sentToken(o.config.rpc.auth), requestId });
    };
    for (const p of policies) {
      try {
        await ask(p, items[0]!, asRequestId(`${WARM_UP_PREFIX}${p.method}`));
      } catch (err) {
        // A budget this model cannot give the method is a cell to mark, not a failed run.
        if (!isInfeasibleBudget(err)) throw err;
        side.infeasible.set(p.method, err.message);
      }
    }
    const feasible = policies.filter((p) => !side.infeasible.has(p.method));
    // Policies interleaved per item: a drift in the machine's speed reaches every method alike.
    for (const [i, item] of items.entries()) {
      for (const p of feasible) {
        const r = await ask(p, item, asRequestId(`bench-${i}-${p.method}`));
        (side.clientMs.get(p.method) ?? side.clientMs.set(p.method, []).get(p.method)!).push(r.latencyMs);
        (side.outputTokens.get(p.method) ?? side.outputTokens.set(p.method, []).get(p.method)!).push(r.final.tokens?.generated ?? 0);
      }
      o.onProgress?.(`${i + 1}/${items.length} items under ${policies.length} policies`);
    }
  } finally {
    client.close();
    await services.stop();
  }
  return side;
}

/** One policy's row from its traces, which must cover every request it sent. */
function latencyRow(p: LatencyPolicy, report: ReturnType<typeof analyseTraces>['report'], side: ClientSide, budget: string, refused: readonly string[]): LatencyRow | InfeasibleRow {
  const reason = side.infeasible.get(p.method);
  if (reason !== undefined) return { method: p.method, infeasible: reason };
  const { method } = p;
  // The unreduced request sets no budget; every other one carries the run's.
  const group = report.groups.find((g) => g.method === method && (method === 'none' || g.budget === budget));
  const sent = side.clientMs.get(p.method)?.length ?? 0;
  // Figures from some of the requests, or without one service's spans, would read as a faster method.
  if (!group || group.traces !== sent) {
    throw new VlmError('DATA_LOSS', `${group?.traces ?? 0} traces of ${p.method} arrived for ${sent} requests${refused.length ? `; the receiver refused exports: ${refused.join('; ')}` : ''}`);
  }
  const mean = (service: string, name: string): number => {
    const value = group.stageMean[`${service} ${name}`];
    if (value === undefined) throw new VlmError('DATA_LOSS', `the traces of ${p.method} have no ${service} ${name} spans`);
    return round(value);
  };
  const tokens = side.outputTokens.get(p.method) ?? [];
  return {
    method,
    budget: method === 'none' ? 'full' : budget,
    requests: group.traces,
    endToEnd: group.endToEnd,
    client: summarise(side.clientMs.get(p.method) ?? []),
    stages: {
      visionRequest: mean(SERVICE_VISION, SpanName.Request),
      preprocess: mean(SERVICE_VISION, SpanName.Preprocess),
      tower: mean(SERVICE_VISION, SpanName.VisionEmbed),
      project: mean(SERVICE_VISION, SpanName.Project),
      streamReceive: mean(SERVICE_LANGUAGE, SpanName.StreamReceive),
      prefill: mean(SERVICE_LANGUAGE, SpanName.Prefill),
      decode: mean(SERVICE_LANGUAGE, SpanName.Decode),
      queue: round(mean(SERVICE_VISION, SpanName.Queue) + mean(SERVICE_LANGUAGE, SpanName.Queue)),
    },
    reduce: { vision: reduceSteps(group, SERVICE_VISION), language: reduceSteps(group, SERVICE_LANGUAGE) },
    outputTokens: tokens.length ? round(tokens.reduce((a, b) => a + b, 0) / tokens.length) : 0,
  };
}

export async function runLatency(o: LatencyOptions): Promise<LatencyResult> {
  const policies = o.policies ?? latencyPolicies(o.budget);
  const items = await requestItems(o.config.model.dir, o.limit);
  if (items.length === 0) throw new VlmError('FAILED_PRECONDITION', `no evaluation items in ${o.config.model.dir}/eval/items.jsonl`);
  const spans: SpanRecord[] = [];
  const refused: string[] = [];
  const receiver = await startTraceReceiver({ port: 0, host: '127.0.0.1', onSpans: (s) => void spans.push(...s), onRejected: (status, message) => void refused.push(`${status}: ${message}`) });
  let side: ClientSide;
  try {
    side = await askAll(o, policies, items, tracedServiceEnv(o.serviceEnv, receiver.url));
  } finally {
    await receiver.close();
  }
  const warmUps = new Set(spans.filter((s) => String(s.attributes[ATTR_VLM_REQUEST_ID] ?? '').startsWith(WARM_UP_PREFIX)).map((s) => s.traceId));
  const measured = spans.filter((s) => !warmUps.has(s.traceId));
  // The spans the table is made of: `vlm trace report` on them gives the same figures.
  o.onSpans?.(measured);
  const providers = [...new Set(measured.flatMap((s) => (s.attributes[ATTR_VLM_PROVIDER] === undefined ? [] : [`${s.service}: ${String(s.attributes[ATTR_VLM_PROVIDER])}`])))].sort();
  const { report } = analyseTraces(measured);
  const budget = String(budgetAttribute(o.budget));
  return {
    rows: policies.map((p) => latencyRow(p, report, side, budget, refused)),
    settings: {
      model: path.relative(packageRoot(), o.config.model.dir) || o.config.model.dir,
      budget,
      requestsPerPolicy: items.length,
      workers: o.config.runtime.workers,
      intraOpThreads: o.serviceEnv['VLM_INTRA_OP_THREADS'],
      provider: providers.join(', ') || 'unknown',
    },
    spans: { received: spans.length, analysed: measured.length },
  };
}

function round(x: number): number {
  return Math.round(x * 10) / 10;
}

/** A service's `vlm.reduce` spans in a policy's traces: steps per request and mean milliseconds per step. */
function reduceSteps(group: GroupReport, service: string): ReduceSteps {
  const key = `${service} ${SpanName.Reduce}`;
  const steps = group.stageCountMean[key] ?? 0;
  return { stepsPerRequest: round(steps), msPerStep: steps > 0 ? Math.round(((group.stageMean[key] ?? 0) / steps) * 100) / 100 : 0 };
}

/** "3.41 x 11": mean milliseconds per step and steps per request; "-" without steps. */
function formatSteps(r: ReduceSteps): string {
  return r.stepsPerRequest > 0 ? `${r.msPerStep} x ${r.stepsPerRequest}` : '-';
}

/** The result as a markdown table, milliseconds. */
export function formatLatency(r: LatencyResult): string {
  const head = '| policy | end to end p50 | p95 | client p50 | vision Encode | preprocess | tower | project | tensor receive | prefill | decode | output tokens | vision steps (ms x n) | language steps (ms x n) |';
  const lines = r.rows.map((x) =>
    'infeasible' in x
      ? `| ${x.method} | infeasible: ${x.infeasible.replace(/\|/g, '/')} |${' |'.repeat(12)}`
      : `| ${x.method} | ${round(x.endToEnd.p50)} | ${round(x.endToEnd.p95)} | ${round(x.client.p50)} | ${x.stages.visionRequest} | ${x.stages.preprocess} | ${x.stages.tower} | ${x.stages.project} | ${x.stages.streamReceive} | ${x.stages.prefill} | ${x.stages.decode} | ${x.outputTokens} | ${formatSteps(x.reduce.vision)} | ${formatSteps(x.reduce.language)} |`,
  );
  const s = r.settings;
  return [
    `${s.requestsPerPolicy} requests per policy, one at a time, budget ${s.budget}; ${s.model} on ${s.provider}, ${s.workers} worker(s) per service; milliseconds, stage columns are means per request; steps: the methods' reduction steps, mean ms per step x steps per request`,
    '',
    head,
    `|${'---|'.repeat(14)}`,
    ...lines,
  ].join('\n');
}

export async function run(argv: string[]): Promise<number> {
  const { config, values } = parseCommandLine(argv, FLAGS, process.env, CHILD_SERVICES_CONFIG);
  if (!existsSync(path.join(config.model.dir, 'manifest.json'))) throw new VlmError('FAILED_PRECONDITION', `no model bundle at ${config.model.dir}; pass --model DIR`);
  const json = values['json'] === true;
  const limit = integerFlag(values, 'limit', 1, 10_000) ?? 10;
  const budget = parseBudgetFlag((values['budget'] as string | undefined) ?? '25%')!;
  const maxNewTokens = integerFlag(values, 'max-new-tokens', 1, config.limits.maxNewTokens);
  const spansFile = values['spans'] as string | undefined;
  if (spansFile !== undefined) writableFile('spans', spansFile);
  const result = await runLatency({
    config,
    limit,
    budget,
    maxNewTokens,
    serveFlags: serveFlags(argv, FLAGS),
    // Two services on one host: each gets its share of the cores, as under `vlm serve all`.
    serviceEnv: coLocatedServiceEnv(values, 2),
    onSpans: spansFile ? (spans) => writeFileSync(spansFile, spans.map((s) => JSON.stringify(s)).join('\n') + '\n') : undefined,
    onProgress: json ? undefined : (line) => process.stderr.write(`[bench latency] ${line}\n`),
  });
  process.stdout.write(json ? `${JSON.stringify(result)}\n` : `${formatLatency(result)}\n`);
  return 0;
}
