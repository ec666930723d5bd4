/**
 * Offline checks of the Kubernetes manifests, for CI (test/k8s-manifests.test.ts) and by hand:
 *
 *   npx tsx scripts/validate-k8s.ts [KUSTOMIZATION_DIR ...]     (default: every overlay and addon)
 *
 * 1. build: `kubectl kustomize DIR` (the kubectl on PATH or $KUBECTL; kustomize v4+ for components,
 *    Kubernetes >= 1.27 for native gRPC probes);
 * 2. schema: every object against the Kubernetes 1.27 OpenAPI schema compiled into kubernetes-models,
 *    plus unknown fields at any depth (the compiled validators accept them; a misspelt
 *    `readinessProbes` would otherwise pass), found by walking each object along the package's
 *    TypeScript interfaces;
 * 3. the project's rules (RULES below): GPUs, pools, probes, security, pinned images, drain, model
 *    lockstep, autoscaling, disruption budgets, network isolation of the vision pods.
 *
 * Exits 1 and prints every finding when anything fails.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { PersistentVolumeClaim } from 'kubernetes-models/v1/PersistentVolumeClaim';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';

// ---------------------------------------------------------------------------------------------------
// Objects and findings

/** One object of a build, as plain JSON. */
export interface Manifest {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly namespace?: string; readonly labels?: Record<string, string> };
  readonly [field: string]: unknown;
}

export interface Finding {
  /** `Kind/name` of the object at fault, or the kustomization for build failures. */
  readonly object: string;
  /** Which check: `build`, `schema`, `unknown-field`, or a rule name from RULES. */
  readonly check: string;
  readonly message: string;
}

export interface BuildReport {
  readonly dir: string;
  readonly objects: readonly Manifest[];
  readonly findings: readonly Finding[];
}

const ref = (m: Manifest): string => `${m.kind}/${m.metadata.name}`;

// ---------------------------------------------------------------------------------------------------
// 1. build

/** The kubectl to run: $KUBECTL, else the first `kubectl` on PATH. */
export function findKubectl(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KUBECTL) return env.KUBECTL;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, 'kubectl');
    if (dir && existsSync(candidate)) return candidate;
  }
  throw new Error(
    'kubectl not found on PATH (or set KUBECTL=/path/to/kubectl). It needs kubectl >= 1.27 (kustomize v5: components, replacements, ' +
      'labels with includeTemplates); Debian bookworm\'s kubernetes-client (1.20, kustomize v2) is too old.',
  );
}

/** Runs `kubectl kustomize DIR`; returns the YAML stream or throws with kubectl's message. */
export function kustomizeBuild(dir: string, kubectl = findKubectl()): string {
  const r = spawnSync(kubectl, ['kustomize', dir], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, KUBECONFIG: '/dev/null' } });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`kubectl kustomize ${dir} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

export function parseManifests(yamlText: string): Manifest[] {
  const out: Manifest[] = [];
  for (const doc of parseAllDocuments(yamlText)) {
    if (doc.errors.length > 0) throw new Error(`YAML: ${doc.errors[0]!.message}`);
    const value = doc.toJS() as Manifest | null;
    if (value !== null) out.push(value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// 2. schema

interface Model {
  validate(): void;
}
type ModelCtor = new (data: never) => Model;

/** Every kind the manifests may hold: its compiled validator and the interface to walk for fields. */
const SCHEMAS: ReadonlyMap<string, { readonly model: ModelCtor; readonly module: string; readonly iface: string }> = new Map([
  ['v1/Namespace', { model: Namespace, module: 'kubernetes-models/v1/Namespace', iface: 'INamespace' }],
  ['v1/ServiceAccount', { model: ServiceAccount, module: 'kubernetes-models/v1/ServiceAccount', iface: 'IServiceAccount' }],
  ['v1/ConfigMap', { model: ConfigMap, module: 'kubernetes-models/v1/ConfigMap', iface: 'IConfigMap' }],
  ['v1/Secret', { model: Secret, module: 'kubernetes-models/v1/Secret', iface: 'ISecret' }],
  ['v1/Service', { model: Service, module: 'kubernetes-models/v1/Service', iface: 'IService' }],
  ['v1/PersistentVolumeClaim', { model: PersistentVolumeClaim, module: 'kubernetes-models/v1/PersistentVolumeClaim', iface: 'IPersistentVolumeClaim' }],
  ['apps/v1/Deployment', { model: Deployment, module: 'kubernetes-models/apps/v1/Deployment', iface: 'IDeployment' }],
  ['autoscaling/v2/HorizontalPodAutoscaler', { model: HorizontalPodAutoscaler, module: 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler', iface: 'IHorizontalPodAutoscaler' }],
  ['policy/v1/PodDisruptionBudget', { model: PodDisruptionBudget, module: 'kubernetes-models/policy/v1/PodDisruptionBudget', iface: 'IPodDisruptionBudget' }],
  ['networking.k8s.io/v1/NetworkPolicy', { model: NetworkPolicy, module: 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy', iface: 'INetworkPolicy' }],
  ['monitoring.coreos.com/v1/PodMonitor', { model: PodMonitor, module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor', iface: 'IPodMonitor' }],
  ['monitoring.coreos.com/v1/PrometheusRule', { model: PrometheusRule, module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule', iface: 'IPrometheusRule' }],
]);

const schemaKey = (m: Manifest): string => `${m.apiVersion}/${m.kind}`;

/** Type errors, missing required fields and bad enums, per kubernetes-models' compiled validators. */
export function schemaFindings(objects: readonly Manifest[]): Finding[] {
  const out: Finding[] = [];
  for (const m of objects) {
    const schema = SCHEMAS.get(schemaKey(m));
    if (!schema) {
      out.push({ object: ref(m), check: 'schema', message: `no offline schema for ${schemaKey(m)}; add it to SCHEMAS in scripts/validate-k8s.ts` });
      continue;
    }
    try {
      new schema.model(m as never).validate();
    } catch (err) {
      const errors = (err as { errors?: { instancePath: string; message?: string }[] }).errors;
      for (const e of errors ?? [{ instancePath: '', message: (err as Error).message }]) {
        out.push({ object: ref(m), check: 'schema', message: `${e.instancePath || '/'}: ${e.message ?? 'invalid'}` });
      }
    }
  }
  return out;
}

/**
 * Walks objects along kubernetes-models' TypeScript interfaces and reports every key the interface
 * does not declare. Building the TypeScript program (about a second) happens once per checker.
 */
export class UnknownFieldChecker {
  private readonly checker: ts.TypeChecker;
  private readonly roots = new Map<string, ts.Type>();

  constructor(projectRoot: string = path.resolve(__dirname, '..')) {
    const entries = [...SCHEMAS.entries()];
    const virtualFile = path.join(projectRoot, '__k8s_schemas__.ts');
    const source = entries
      .map(([, s], i) => `import type { ${s.iface} as T${i} } from '${s.module}';\nexport type K${i} = T${i};`)
      .join('\n');
    // strictNullChecks off: optional fields then read as their plain type, with no `| undefined`.
    const options: ts.CompilerOptions = {
      module: ts.ModuleKind.CommonJS,
      moduleResolution: ts.ModuleResolutionKind.Node10,
      target: ts.ScriptTarget.ES2020,
      lib: ['lib.es5.d.ts'],
      types: [],
      strict: false,
      noEmit: true,
      skipLibCheck: true,
    };
    const host = ts.createCompilerHost(options);
    const readSource = host.getSourceFile.bind(host);
    const fileExists = host.fileExists.bind(host);
    host.getSourceFile = (name, lang, ...rest) => (name === virtualFile ? ts.createSourceFile(name, source, lang) : readSource(name, lang, ...rest));
    host.fileExists = (name) => name === virtualFile || fileExists(name);
    const program = ts.createProgram([virtualFile], options, host);
    this.checker = program.getTypeChecker();
    const moduleSymbol = this.checker.getSymbolAtLocation(program.getSourceFile(virtualFile)!)!;
    const exported = new Map(this.checker.getExportsOfModule(moduleSymbol).map((s) => [s.name, s]));
    entries.forEach(([key], i) => {
      const type = this.checker.getDeclaredTypeOfSymbol(exported.get(`K${i}`)!);
      if (type.getProperties().length === 0) throw new Error(`kubernetes-models: interface for ${key} did not resolve`);
      this.roots.set(key, type);
    });
  }

  findings(objects: readonly Manifest[]): Finding[] {
    const out: Finding[] = [];
    for (const m of objects) {
      const root = this.roots.get(schemaKey(m));
      if (root) for (const p of this.unknownPaths(m, root, '')) out.push({ object: ref(m), check: 'unknown-field', message: `${p}: unknown field (not in the Kubernetes 1.27 schema of ${schemaKey(m)})` });
    }
    return out;
  }

  private unknownPaths(value: unknown, type: ts.Type, at: string): string[] {
    if (value === null || typeof value !== 'object') return [];
    const t = this.objectMember(type);
    if (!t) return [];
    if (Array.isArray(value)) {
      const element = this.checker.isArrayType(t) ? this.checker.getTypeArguments(t as ts.TypeReference)[0] : undefined;
      return element ? value.flatMap((v, i) => this.unknownPaths(v, element, `${at}[${i}]`)) : [];
    }
    const index = this.checker.getIndexTypeOfType(t, ts.IndexKind.String);
    const out: string[] = [];
    for (const [key, v] of Object.entries(value)) {
      const prop = t.getProperty(key);
      const where = `${at}.${key}`;
      if (prop) out.push(...this.unknownPaths(v, this.checker.getTypeOfSymbol(prop), where));
      else if (index) out.push(...this.unknownPaths(v, index, where));
      else out.push(where.slice(1));
    }
    return out;
  }

  /** The one object type a (possibly union) type allows, or undefined for scalars and free-form JSON. */
  private objectMember(type: ts.Type): ts.Type | undefined {
    if (type.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return undefined;
    const members = type.isUnion() ? type.types : [type];
    const objects = members.filter((m) => m.flags & ts.TypeFlags.Object);
    return objects.length === 1 ? objects[0] : undefined;
  }
}

// ---------------------------------------------------------------------------------------------------
// 3. the project's rules

interface Container {
  name: string;
  image?: string;
  args?: string[];
  env?: { name: string; value?: string }[];
  envFrom?: { configMapRef?: { name: string } }[];
  ports?: { name?: string; containerPort: number }[];
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command?: string[] } } };
  securityContext?: SecurityContext;
}
interface Probe {
  grpc?: { port: number; service?: string };
  initialDelaySeconds?: number;
  periodSeconds?: number;
  failureThreshold?: number;
}
interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  privileged?: boolean;
  allowPrivilegeEscalation?: boolean;
  readOnlyRootFilesystem?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  seccompProfile?: { type: string };
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  nodeSelector?: Record<string, string>;
  affinity?: { nodeAffinity?: { requiredDuringSchedulingIgnoredDuringExecution?: { nodeSelectorTerms: { matchExpressions?: { key: string; operator: string; values?: string[] }[] }[] } } };
  tolerations?: { key?: string; operator?: string; effect?: string }[];
  securityContext?: SecurityContext;
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  terminationGracePeriodSeconds?: number;
}
interface Workload extends Manifest {
  spec: { template: { metadata?: { labels?: Record<string, string> }; spec: PodSpec }; strategy?: { rollingUpdate?: { maxUnavailable?: number | string } }; progressDeadlineSeconds?: number };
}

const GPU = 'nvidia.com/gpu';
/**
 * After the drain a service ends the exempt streams (up to 1 s, services/common/grpc-server.ts), closes
 * its pool (up to 5 s, shared/worker/pool.ts) and flushes spans (up to 3 s, shared/telemetry/sdk.ts),
 * and the process releases its device: 5 s of margin for that.
 */
const AFTER_DRAIN_S = 9 + 5;
/** Scheduling a surge pod and pulling its image, on top of the startup probe's budget, before a rollout counts as stuck. */
const SCHEDULE_AND_PULL_S = 300;
const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'PersistentVolume', 'StorageClass', 'PriorityClass', 'CustomResourceDefinition', 'APIService']);
/** Node labels that name a node pool, generic first. */
const POOL_KEYS = ['vlm.io/pool', 'cloud.google.com/gke-nodepool', 'eks.amazonaws.com/nodegroup', 'kubernetes.azure.com/agentpool'];

const workloads = (objects: readonly Manifest[]): Workload[] => objects.filter((m): m is Workload => m.kind === 'Deployment');
const containersOf = (w: Workload): Container[] => [...(w.spec.template.spec.initContainers ?? []), ...w.spec.template.spec.containers];
const envOf = (c: Container, name: string): string | undefined => c.env?.find((e) => e.name === name)?.value;

/** The `vlm serve vision|language` container of a Deployment, if it runs one. */
function vlmService(w: Workload): { role: 'vision' | 'language'; container: Container } | undefined {
  for (const c of w.spec.template.spec.containers) {
    const i = c.args?.indexOf('serve') ?? -1;
    const role = i >= 0 ? c.args![i + 1] : undefined;
    if (role === 'vision' || role === 'language') return { role, container: c };
  }
  return undefined;
}

const gpuCount = (c: Container, where: 'requests' | 'limits'): number | undefined => {
  const v = c.resources?.[where]?.[GPU];
  return v === undefined ? undefined : Number(v);
};

/** key -> allowed values, from nodeSelector and required node affinity (In), for the pool keys only. */
function poolSelection(spec: PodSpec): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const [k, v] of Object.entries(spec.nodeSelector ?? {})) if (POOL_KEYS.includes(k)) out.set(k, new Set([v]));
  for (const term of spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms ?? []) {
    for (const e of term.matchExpressions ?? []) if (POOL_KEYS.includes(e.key) && e.operator === 'In') out.set(e.key, new Set(e.values ?? []));
  }
  return out;
}

function matchesLabels(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** Image references must name an exact version: a digest, or a tag other than `latest`. */
export function imagePinProblem(image: string | undefined): string | undefined {
  if (!image) return 'has no image';
  if (/@sha256:[0-9a-f]{64}$/.test(image)) return undefined;
  const lastSlash = image.lastIndexOf('/');
  const colon = image.indexOf(':', lastSlash + 1);
  if (colon < 0) return `image "${image}" has no tag (pulls whatever "latest" is at the time)`;
  const tag = image.slice(colon + 1);
  if (tag === 'latest' || tag === '') return `image "${image}" uses the moving tag "latest"`;
  return undefined;
}

type Rule = (objects: readonly Manifest[]) => Finding[];

export const RULES: Readonly<Record<string, Rule>> = {
  // Objects without a namespace land in whatever namespace the applier's context names.
  'namespace': (objects) => {
    const namespaced = objects.filter((m) => !CLUSTER_SCOPED.has(m.kind));
    const namespaces = new Set(namespaced.map((m) => m.metadata.namespace).filter(Boolean));
    const out: Finding[] = namespaced
      .filter((m) => !m.metadata.namespace)
      .map((m) => ({ object: ref(m), check: 'namespace', message: 'has no namespace (set `namespace:` in the kustomization that adds it)' }));
    if (namespaces.size > 1) out.push({ object: '*', check: 'namespace', message: `objects are spread over namespaces ${[...namespaces].join(', ')}` });
    return out;
  },

  'image-pinned': (objects) =>
    workloads(objects).flatMap((w) =>
      containersOf(w).flatMap((c) => {
        const problem = imagePinProblem(c.image);
        return problem ? [{ object: ref(w), check: 'image-pinned', message: `container ${c.name} ${problem}` }] : [];
      }),
    ),

  'pod-security': (objects) =>
    workloads(objects).flatMap((w) => {
      const pod = w.spec.template.spec;
      const out: string[] = [];
      if (pod.hostNetwork || pod.hostPID || pod.hostIPC) out.push('shares a host namespace (hostNetwork/hostPID/hostIPC)');
      for (const c of containersOf(w)) {
        const s = c.securityContext ?? {};
        const nonRoot = s.runAsNonRoot ?? pod.securityContext?.runAsNonRoot;
        const uid = s.runAsUser ?? pod.securityContext?.runAsUser;
        const seccomp = s.seccompProfile?.type ?? pod.securityContext?.seccompProfile?.type;
        if (s.privileged === true) out.push(`container ${c.name} is privileged`);
        if (s.allowPrivilegeEscalation !== false) out.push(`container ${c.name} does not set allowPrivilegeEscalation: false`);
        if (nonRoot !== true) out.push(`container ${c.name} does not set runAsNonRoot: true`);
        if (uid === 0) out.push(`container ${c.name} runs as UID 0`);
        if (s.readOnlyRootFilesystem !== true) out.push(`container ${c.name} has a writable root filesystem`);
        if (!s.capabilities?.drop?.includes('ALL')) out.push(`container ${c.name} does not drop ALL capabilities`);
        if ((s.capabilities?.add ?? []).length > 0) out.push(`container ${c.name} adds capabilities ${s.capabilities!.add!.join(',')}`);
        if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') out.push(`container ${c.name} has no seccomp profile (RuntimeDefault)`);
      }
      return out.map((message) => ({ object: ref(w), check: 'pod-security', message }));
    }),

  'probes': (objects) =>
    workloads(objects).flatMap((w) => {
      const out: string[] = [];
      for (const c of w.spec.template.spec.containers) {
        for (const p of ['readinessProbe', 'livenessProbe', 'startupProbe'] as const) if (!c[p]) out.push(`container ${c.name} has no ${p}`);
      }
      // The services answer grpc.health.v1 on a plaintext port of their own: the kubelet's gRPC probe
      // cannot do TLS, and SERVING there means loaded and warmed up.
      const svc = vlmService(w);
      if (svc) {
        const healthPort = Number(envOf(svc.container, 'VLM_HEALTH_PORT'));
        if (!Number.isInteger(healthPort) || healthPort <= 0) out.push(`container ${svc.container.name} sets no VLM_HEALTH_PORT`);
        for (const p of ['readinessProbe', 'livenessProbe', 'startupProbe'] as const) {
          const probe = svc.container[p];
          if (probe && !probe.grpc) out.push(`container ${svc.container.name}: ${p} is not a gRPC health probe`);
          else if (probe?.grpc && probe.grpc.port !== healthPort) out.push(`container ${svc.container.name}: ${p} checks port ${probe.grpc.port}, VLM_HEALTH_PORT is ${healthPort}`);
        }
      }
      return out.map((message) => ({ object: ref(w), check: 'probes', message }));
    }),

  'resources': (objects) =>
    workloads(objects).flatMap((w) =>
      containersOf(w).flatMap((c) => {
        const missing = [
          ...['cpu', 'memory'].filter((r) => c.resources?.requests?.[r] === undefined).map((r) => `requests.${r}`),
          ...['memory'].filter((r) => c.resources?.limits?.[r] === undefined).map((r) => `limits.${r}`),
        ];
        return missing.length ? [{ object: ref(w), check: 'resources', message: `container ${c.name} sets no ${missing.join(', ')}` }] : [];
      }),
    ),

  'gpu': (objects) => {
    const out: Finding[] = [];
    const all = workloads(objects);
    const gpuBuild = all.some((w) => containersOf(w).some((c) => gpuCount(c, 'limits') !== undefined || gpuCount(c, 'requests') !== undefined));
    for (const w of all) {
      for (const c of containersOf(w)) {
        const limit = gpuCount(c, 'limits');
        const request = gpuCount(c, 'requests');
        if (limit === undefined && request === undefined) continue;
        if (limit !== 1) out.push({ object: ref(w), check: 'gpu', message: `container ${c.name} limits ${GPU} to ${limit ?? 'nothing'}; each service owns exactly one GPU` });
        if (request !== undefined && request !== 1) out.push({ object: ref(w), check: 'gpu', message: `container ${c.name} requests ${request} ${GPU}; each service owns exactly one GPU` });
      }
      const svc = vlmService(w);
      if (!svc) continue;
      const provider = envOf(svc.container, 'VLM_PROVIDER') ?? 'cpu';
      const hasGpu = gpuCount(svc.container, 'limits') !== undefined;
      if (gpuBuild && !hasGpu) out.push({ object: ref(w), check: 'gpu', message: `the ${svc.role} service gets no GPU while the rest of this build does` });
      if (hasGpu && !provider.startsWith('cuda')) out.push({ object: ref(w), check: 'gpu', message: `the ${svc.role} service has a GPU but VLM_PROVIDER is "${provider}"` });
      if (!hasGpu && provider.startsWith('cuda')) out.push({ object: ref(w), check: 'gpu', message: `VLM_PROVIDER is "${provider}" but the container gets no ${GPU}` });
      if (hasGpu) {
        const tolerates = (w.spec.template.spec.tolerations ?? []).some((t) => t.key === GPU && (t.effect === 'NoSchedule' || t.effect === undefined));
        if (!tolerates) out.push({ object: ref(w), check: 'gpu', message: `no toleration for the GPU pool's taint ${GPU}:NoSchedule` });
      }
    }
    return out;
  },

  'separate-pools': (objects) => {
    const gpuServices = workloads(objects)
      .map((w) => ({ w, svc: vlmService(w) }))
      .filter((x) => x.svc && gpuCount(x.svc.container, 'limits') !== undefined);
    const out: Finding[] = [];
    for (const { w, svc } of gpuServices) {
      if (poolSelection(w.spec.template.spec).size === 0) out.push({ object: ref(w), check: 'separate-pools', message: `the ${svc!.role} service selects no node pool (nodeSelector or required node affinity on one of ${POOL_KEYS.join(', ')})` });
    }
    const vision = gpuServices.find((x) => x.svc!.role === 'vision');
    const language = gpuServices.find((x) => x.svc!.role === 'language');
    if (vision && language && out.length === 0) {
      const a = poolSelection(vision.w.spec.template.spec);
      const b = poolSelection(language.w.spec.template.spec);
      const separated = [...a].some(([key, values]) => b.has(key) && [...values].every((v) => !b.get(key)!.has(v)));
      if (!separated) out.push({ object: ref(language.w), check: 'separate-pools', message: `vision and language may land on the same pool (vision: ${fmtPools(a)}; language: ${fmtPools(b)})` });
    }
    return out;
  },

  'graceful-drain': (objects) =>
    workloads(objects).flatMap((w) => {
      const svc = vlmService(w);
      if (!svc) return [];
      // VLM_SHUTDOWN_GRACE_MS: how long calls in flight may finish after SIGTERM (shared/config.ts).
      const drain = Number(envOf(svc.container, 'VLM_SHUTDOWN_GRACE_MS')) / 1000;
      const cmd = svc.container.lifecycle?.preStop?.exec?.command ?? [];
      const preStop = /(^|\/)sleep$/.test(cmd[0] ?? '') ? Number(cmd[1]) : 0;
      const grace = w.spec.template.spec.terminationGracePeriodSeconds ?? 30;
      const out: string[] = [];
      if (!Number.isFinite(drain) || drain <= 0) out.push('sets no VLM_SHUTDOWN_GRACE_MS');
      else if (grace < preStop + drain + AFTER_DRAIN_S) out.push(`terminationGracePeriodSeconds ${grace} leaves no time after preStop (${preStop} s) and the drain (${drain} s) for the last streams, the pool's close, the span flush and the device's release (${AFTER_DRAIN_S} s)`);
      if (w.spec.strategy?.rollingUpdate?.maxUnavailable !== 0) out.push('rolling updates may remove a pod before its replacement is ready (set maxUnavailable: 0)');
      return out.map((message) => ({ object: ref(w), check: 'graceful-drain', message }));
    }),

  'progress-deadline': (objects) =>
    workloads(objects).flatMap((w) => {
      const svc = vlmService(w);
      if (!svc) return [];
      const s = svc.container.startupProbe;
      const startup = s ? (s.initialDelaySeconds ?? 0) + (s.periodSeconds ?? 10) * (s.failureThreshold ?? 3) : 0;
      const deadline = w.spec.progressDeadlineSeconds ?? 600;
      if (deadline >= startup + SCHEDULE_AND_PULL_S) return [];
      return [{ object: ref(w), check: 'progress-deadline', message: `progressDeadlineSeconds ${deadline} is shorter than the startup probe's ${startup} s plus ${SCHEDULE_AND_PULL_S} s to schedule and pull: a rollout of pods that start normally would be reported as failed` }];
    }),

  'model-lockstep': (objects) => {
    const services = workloads(objects).flatMap((w) => {
      const svc = vlmService(w);
      if (!svc) return [];
      const configMaps = (svc.container.envFrom ?? []).map((e) => e.configMapRef?.name).filter((n): n is string => !!n);
      const model = configMaps.map((n) => objects.find((m) => m.kind === 'ConfigMap' && m.metadata.name === n)).find((m) => (m?.data as Record<string, string> | undefined)?.VLM_MODEL_VERSION !== undefined);
      return [{ w, role: svc.role, model }];
    });
    const out: Finding[] = [];
    for (const { w, model } of services) {
      const version = (model?.data as Record<string, string> | undefined)?.VLM_MODEL_VERSION;
      const label = w.spec.template.metadata?.labels?.['vlm.io/model-version'];
      if (!model) out.push({ object: ref(w), check: 'model-lockstep', message: 'reads no ConfigMap with VLM_MODEL_VERSION' });
      else if (label !== version) out.push({ object: ref(w), check: 'model-lockstep', message: `pod label vlm.io/model-version is "${label}" but the model ConfigMap says "${version}"` });
    }
    const names = new Set(services.map((s) => s.model?.metadata.name));
    if (services.length > 1 && names.size > 1) out.push({ object: 'Deployment/*', check: 'model-lockstep', message: `vision and language read different model ConfigMaps (${[...names].join(', ')})` });
    return out;
  },

  'autoscaling': (objects) => {
    const out: Finding[] = [];
    const hpas = objects.filter((m) => m.kind === 'HorizontalPodAutoscaler') as (Manifest & { spec: { scaleTargetRef: { kind: string; name: string }; metrics?: { type: string; pods?: { metric: { name: string } } }[] } })[];
    for (const w of workloads(objects).filter((x) => vlmService(x))) {
      const hpa = hpas.find((h) => h.spec.scaleTargetRef.kind === 'Deployment' && h.spec.scaleTargetRef.name === w.metadata.name);
      if (!hpa) {
        out.push({ object: ref(w), check: 'autoscaling', message: 'no HorizontalPodAutoscaler scales it' });
        continue;
      }
      const metrics = hpa.spec.metrics ?? [];
      if (metrics.some((m) => m.type === 'Resource' || m.type === 'ContainerResource')) out.push({ object: ref(hpa), check: 'autoscaling', message: 'scales on CPU or memory; use the services\' own load metrics' });
      if (!metrics.some((m) => m.type === 'Pods' && ['vlm_queue_depth', 'vlm_inflight_requests'].includes(m.pods?.metric.name ?? ''))) {
        out.push({ object: ref(hpa), check: 'autoscaling', message: 'has no Pods metric vlm_queue_depth or vlm_inflight_requests' });
      }
    }
    return out;
  },

  'disruption-budget': (objects) => {
    const pdbs = objects.filter((m) => m.kind === 'PodDisruptionBudget') as (Manifest & { spec: { selector?: { matchLabels?: Record<string, string> } } })[];
    return workloads(objects)
      .filter((w) => vlmService(w) && !pdbs.some((p) => matchesLabels(p.spec.selector?.matchLabels, w.spec.template.metadata?.labels)))
      .map((w) => ({ object: ref(w), check: 'disruption-budget', message: 'no PodDisruptionBudget selects its pods' }));
  },

  'vision-isolation': (objects) => {
    const vision = workloads(objects).find((w) => vlmService(w)?.role === 'vision');
    const language = workloads(objects).find((w) => vlmService(w)?.role === 'language');
    if (!vision || !language) return [];
    const visionLabels = vision.spec.template.metadata?.labels;
    const languageLabels = language.spec.template.metadata?.labels;
    const grpcPort = vlmService(vision)!.container.ports?.find((p) => p.name === 'grpc')?.containerPort;
    type Peer = { podSelector?: { matchLabels?: Record<string, string> }; namespaceSelector?: unknown; ipBlock?: unknown };
    type Policy = Manifest & { spec: { podSelector: { matchLabels?: Record<string, string> }; policyTypes?: string[]; ingress?: { from?: Peer[]; ports?: { port?: number | string }[] }[] } };
    const policies = (objects.filter((m) => m.kind === 'NetworkPolicy') as Policy[]).filter((p) => {
      const sel = p.spec.podSelector.matchLabels;
      const selects = !sel || Object.keys(sel).length === 0 || matchesLabels(sel, visionLabels);
      return selects && (p.spec.policyTypes ?? ['Ingress']).includes('Ingress');
    });
    const out: Finding[] = [];
    if (policies.length === 0) out.push({ object: ref(vision), check: 'vision-isolation', message: 'no NetworkPolicy restricts ingress to the vision pods' });
    for (const p of policies) {
      for (const rule of p.spec.ingress ?? []) {
        const coversGrpc = !rule.ports || rule.ports.some((x) => x.port === undefined || x.port === grpcPort || x.port === 'grpc');
        if (!coversGrpc) continue;
        const peers = rule.from ?? [];
        const onlyLanguage = peers.length > 0 && peers.every((peer) => !peer.ipBlock && !peer.namespaceSelector && matchesLabels(peer.podSelector?.matchLabels, languageLabels));
        if (!onlyLanguage) out.push({ object: ref(p), check: 'vision-isolation', message: `lets pods other than the language service's reach vision's gRPC port ${grpcPort}` });
      }
    }
    return out;
  },

  'references': (objects) => {
    const has = (kind: string, name: string): boolean => objects.some((m) => m.kind === kind && m.metadata.name === name);
    const out: Finding[] = [];
    for (const w of workloads(objects)) {
      const pod = w.spec.template.spec as PodSpec & { serviceAccountName?: string; volumes?: { name: string; configMap?: { name: string }; persistentVolumeClaim?: { claimName: string } }[] };
      if (pod.serviceAccountName && !has('ServiceAccount', pod.serviceAccountName)) out.push({ object: ref(w), check: 'references', message: `ServiceAccount ${pod.serviceAccountName} is not in the build` });
      for (const c of containersOf(w)) for (const e of c.envFrom ?? []) if (e.configMapRef && !has('ConfigMap', e.configMapRef.name)) out.push({ object: ref(w), check: 'references', message: `ConfigMap ${e.configMapRef.name} is not in the build` });
      for (const v of pod.volumes ?? []) {
        if (v.configMap && !has('ConfigMap', v.configMap.name)) out.push({ object: ref(w), check: 'references', message: `ConfigMap ${v.configMap.name} is not in the build` });
        if (v.persistentVolumeClaim && !has('PersistentVolumeClaim', v.persistentVolumeClaim.claimName)) out.push({ object: ref(w), check: 'references', message: `PersistentVolumeClaim ${v.persistentVolumeClaim.claimName} is not in the build` });
      }
    }
    for (const s of objects.filter((m) => m.kind === 'Service') as (Manifest & { spec: { selector?: Record<string, string>; ports: { targetPort?: string | number }[] } })[]) {
      const backends = workloads(objects).filter((w) => matchesLabels(s.spec.selector, w.spec.template.metadata?.labels));
      if (backends.length === 0) {
        out.push({ object: ref(s), check: 'references', message: 'selects no Deployment\'s pods' });
        continue;
      }
      for (const port of s.spec.ports) {
        if (typeof port.targetPort !== 'string') continue;
        const named = backends.some((w) => w.spec.template.spec.containers.some((c) => c.ports?.some((p) => p.name === port.targetPort)));
        if (!named) out.push({ object: ref(s), check: 'references', message: `targetPort "${port.targetPort}" names no container port of its pods` });
      }
    }
    return out;
  },

  'vision-target': (objects) => {
    const language = workloads(objects).find((w) => vlmService(w)?.role === 'language');
    if (!language) return [];
    const container = vlmService(language)!.container;
    const fromConfigMaps = (container.envFrom ?? [])
      .map((e) => objects.find((m) => m.kind === 'ConfigMap' && m.metadata.name === e.configMapRef?.name))
      .map((m) => (m?.data as Record<string, string> | undefined)?.VLM_VISION_TARGET)
      .find((v) => v !== undefined);
    const target = envOf(container, 'VLM_VISION_TARGET') ?? fromConfigMaps;
    const match = /^dns:\/\/\/([a-z0-9-]+)(?:\.([a-z0-9-]+))?[^:]*:(\d+)$/.exec(target ?? '');
    if (!match) return [{ object: ref(language), check: 'vision-target', message: `VLM_VISION_TARGET "${target}" is not dns:///<service>.<namespace>.svc...:<port>` }];
    const [, svcName, namespace, port] = match;
    const svc = objects.find((m) => m.kind === 'Service' && m.metadata.name === svcName) as (Manifest & { spec: { clusterIP?: string; ports: { port: number }[] } }) | undefined;
    if (!svc) return [{ object: ref(language), check: 'vision-target', message: `VLM_VISION_TARGET names Service ${svcName}, which is not in the build` }];
    const out: Finding[] = [];
    if (svc.spec.clusterIP !== 'None') out.push({ object: ref(svc), check: 'vision-target', message: 'is not headless: the language service would balance per connection, not per call' });
    if (namespace && svc.metadata.namespace && namespace !== svc.metadata.namespace) out.push({ object: ref(language), check: 'vision-target', message: `VLM_VISION_TARGET names namespace ${namespace}, the Service is in ${svc.metadata.namespace}` });
    if (!svc.spec.ports.some((p) => p.port === Number(port))) out.push({ object: ref(language), check: 'vision-target', message: `VLM_VISION_TARGET port ${port} is not a port of Service ${svcName}` });
    return out;
  },
};

function fmtPools(sel: Map<string, Set<string>>): string {
  return [...sel].map(([k, v]) => `${k} in (${[...v].join(',')})`).join('; ') || 'any';
}

export function ruleFindings(objects: readonly Manifest[]): Finding[] {
  return Object.values(RULES).flatMap((rule) => rule(objects));
}

// ---------------------------------------------------------------------------------------------------
// Dockerfiles (no Docker engine here: they are read, not built)

/** Instructions with line continuations joined and comments dropped. */
function dockerInstructions(text: string): { op: string; args: string }[] {
  const lines = text.split('\n').filter((l) => !/^\s*#/.test(l));
  const joined = lines.join('\n').replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const [op, ...rest] = l.split(/\s+/);
      return { op: op!.toUpperCase(), args: rest.join(' ') };
    });
}

/**
 * Multi-stage, every base image pinned (ARG defaults resolved), the final stage running as a numeric
 * non-root user, dependencies installed with `npm ci` and pruned to production, and onnxruntime-node's
 * downloading installer switched off.
 */
export function dockerfileFindings(text: string, name: string): Finding[] {
  const out: Finding[] = [];
  const fail = (message: string): void => void out.push({ object: name, check: 'dockerfile', message });
  const steps = dockerInstructions(text);
  const args = new Map<string, string>();
  const stages: { image: string; alias?: string; user?: string }[] = [];
  for (const { op, args: a } of steps) {
    if (op === 'ARG' && stages.length === 0) {
      const [k, v] = a.split('=');
      if (v !== undefined) args.set(k!, v);
    } else if (op === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(a);
      if (!m) {
        fail(`cannot read "FROM ${a}"`);
        continue;
      }
      const image = m[1]!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, x: string, y: string) => args.get(x ?? y) ?? '');
      stages.push({ image, alias: m[2] });
    } else if (op === 'USER' && stages.length > 0) {
      stages[stages.length - 1]!.user = a;
    }
  }
  if (stages.length < 2) fail('is not multi-stage: build tools and dev dependencies would ship in the image');
  for (const s of stages) {
    if (stages.some((earlier) => earlier.alias === s.image)) continue;
    const problem = imagePinProblem(s.image);
    if (problem) fail(`base ${problem}`);
    else if (!/@sha256:|:[^:/]*\d+\.\d+\.\d+/.test(s.image)) fail(`base image "${s.image}" is not pinned to an exact version (x.y.z tag or digest)`);
  }
  const final = stages[stages.length - 1];
  const uid = final?.user?.split(':')[0];
  if (!uid || !/^\d+$/.test(uid)) fail(`final stage runs as ${uid ? `"${uid}"` : 'root (no USER)'}; use a numeric non-root USER so runAsNonRoot can verify it`);
  else if (Number(uid) === 0) fail('final stage runs as UID 0');
  const runs = steps.filter((s) => s.op === 'RUN').map((s) => s.args);
  if (!runs.some((r) => /\bnpm ci\b/.test(r))) fail('does not install with `npm ci` (the lockfile must decide versions)');
  if (!runs.some((r) => /\bnpm prune\b.*--omit=dev/.test(r))) fail('does not prune to production dependencies (npm prune --omit=dev)');
  if (!/ONNXRUNTIME_NODE_INSTALL=skip/.test(text)) fail('does not set ONNXRUNTIME_NODE_INSTALL=skip (onnxruntime-node would download at install)');
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Putting it together

/** Builds one kustomization and runs every check; a failed build is a finding, not an exception. */
export function validateKustomization(dir: string, fields: UnknownFieldChecker, kubectl = findKubectl()): BuildReport {
  let objects: Manifest[];
  try {
    objects = parseManifests(kustomizeBuild(dir, kubectl));
  } catch (err) {
    return { dir, objects: [], findings: [{ object: dir, check: 'build', message: (err as Error).message }] };
  }
  return { dir, objects, findings: [...schemaFindings(objects), ...fields.findings(objects), ...ruleFindings(objects)] };
}

/** Every kustomization users apply: the overlays and the addons. */
export function deployableKustomizations(root: string): string[] {
  return ['overlays', 'addons'].flatMap((group) => {
    const base = path.join(root, 'k8s', group);
    if (!existsSync(base)) return [];
    return readdirSync(base)
      .map((d) => path.join(base, d))
      .filter((d) => existsSync(path.join(d, 'kustomization.yaml')))
      .sort();
  });
}

function main(argv: string[]): number {
  const root = path.resolve(__dirname, '..');
  const dirs = argv.length > 0 ? argv.map((d) => path.resolve(d)) : deployableKustomizations(root);
  const kubectl = findKubectl();
  const fields = new UnknownFieldChecker(root);
  let failed = 0;
  const dockerDir = path.join(root, 'k8s', 'docker');
  for (const file of argv.length > 0 || !existsSync(dockerDir) ? [] : readdirSync(dockerDir).filter((f) => f.startsWith('Dockerfile')).sort()) {
    const findings = dockerfileFindings(readFileSync(path.join(dockerDir, file), 'utf8'), `k8s/docker/${file}`);
    console.log(`${findings.length ? 'FAIL' : 'ok  '} k8s/docker/${file}`);
    for (const f of findings) console.log(`  ${f.check}  ${f.message}`);
    if (findings.length) failed++;
  }
  for (const dir of dirs) {
    const report = validateKustomization(dir, fields, kubectl);
    const name = path.relative(root, dir) || dir;
    if (report.findings.length === 0) console.log(`ok   ${name}: ${report.objects.length} objects`);
    else {
      failed++;
      console.log(`FAIL ${name}: ${report.findings.length} findings`);
      for (const f of report.findings) console.log(`  ${f.check}  ${f.object}  ${f.message}`);
    }
  }
  return failed === 0 ? 0 : 1;
}

if (require.main === module) process.exitCode = main(process.argv.slice(2));
