/**
 * The Kubernetes manifests and images, checked offline: every overlay builds with `kubectl kustomize`,
 * every object passes the Kubernetes schema with no unknown fields, and the project's rules hold.
 * Deliberately broken variants show that each check can fail.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import {
  deployableKustomizations,
  dockerfileFindings,
  imagePinProblem,
  kustomizeBuild,
  parseManifests,
  schemaFindings,
  UnknownFieldChecker,
  validateKustomization,
  type Finding,
  type Manifest,
} from '../scripts/validate-k8s';
import { SHUTDOWN_FLUSH_MS } from '../shared/telemetry/sdk';
import { parseTokenFile } from '../shared/auth-tokens';
import { bindLoopback } from './service-helpers';

const ROOT = path.resolve(__dirname, '..');
const K8S = path.join(ROOT, 'k8s');
const GPU_OVERLAY = path.join(K8S, 'overlays', 'gpu');
const CPU_OVERLAY = path.join(K8S, 'overlays', 'cpu');

let fields: UnknownFieldChecker;
let scratch: string;
beforeAll(() => {
  fields = new UnknownFieldChecker(ROOT);
  scratch = mkdtempSync(path.join(tmpdir(), 'vlm-k8s-'));
});
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const summary = (findings: readonly Finding[]): string[] => findings.map((f) => `${f.check} ${f.object}: ${f.message}`);

type Container = { name: string; args?: string[]; env?: { name: string; value?: string }[]; resources: { requests?: Record<string, unknown>; limits?: Record<string, unknown> }; volumeMounts?: { name: string; mountPath: string; readOnly?: boolean; subPath?: string }[]; image: string; envFrom?: { configMapRef?: { name: string } }[] };
type Deployment = Manifest & { spec: { template: { metadata: { labels: Record<string, string> }; spec: { containers: Container[]; nodeSelector?: Record<string, string>; volumes?: { name: string; persistentVolumeClaim?: { claimName: string; readOnly?: boolean }; secret?: { secretName: string } }[] } } } };

function deployment(objects: readonly Manifest[], name: string): { d: Deployment; c: Container } {
  const d = objects.find((m) => m.kind === 'Deployment' && m.metadata.name === name) as Deployment | undefined;
  if (!d) throw new Error(`${name} not in the build`);
  return { d, c: d.spec.template.spec.containers[0]! };
}
const env = (c: Container, name: string): string | undefined => c.env?.find((e) => e.name === name)?.value;

describe('every kustomization a user applies', () => {
  const dirs = deployableKustomizations(ROOT);

  it('includes both overlays, the monitoring addon and the metrics adapter rules', () => {
    expect(dirs.map((d) => path.relative(K8S, d))).toEqual(['overlays/cpu', 'overlays/gpu', 'addons/monitoring', 'addons/prometheus-adapter']);
  });

  it.each(dirs.map((d) => [path.relative(ROOT, d), d]))('%s builds and passes schema, field and project checks', (_name, dir) => {
    const report = validateKustomization(dir, fields);
    expect(summary(report.findings)).toEqual([]);
    expect(report.objects.length).toBeGreaterThan(0);
  });
});

describe('the gpu overlay', () => {
  let objects: Manifest[];
  beforeAll(() => {
    objects = parseManifests(kustomizeBuild(GPU_OVERLAY));
  });

  it('gives each service exactly one GPU, the CUDA provider and the CUDA image', () => {
    for (const name of ['vlm-vision', 'vlm-language']) {
      const { c } = deployment(objects, name);
      expect(c.resources.limits?.['nvidia.com/gpu']).toBe(1);
      expect(c.resources.requests?.['nvidia.com/gpu']).toBe(1);
      expect(env(c, 'VLM_PROVIDER')).toBe('cuda:0');
      expect(c.image).toMatch(/:0\.1\.0-cuda13$/);
    }
  });

  it('lets node drains evict pods that are not ready, one ready pod of each service at a time', () => {
    for (const name of ['vlm-vision', 'vlm-language']) {
      const pdb = objects.find((m) => m.kind === 'PodDisruptionBudget' && m.metadata.name === name) as Manifest & { spec: Record<string, unknown> };
      expect(pdb.spec).toMatchObject({ maxUnavailable: 1, unhealthyPodEvictionPolicy: 'AlwaysAllow' });
    }
  });

  it('spreads the replicas of every Deployment that has more than one over nodes, so one node lost takes one replica', () => {
    type Spread = { topologyKey: string; labelSelector?: { matchLabels?: Record<string, string> } };
    const autoscaled = new Set(objects.filter((m) => m.kind === 'HorizontalPodAutoscaler').map((m) => (m as Manifest & { spec: { scaleTargetRef: { name: string } } }).spec.scaleTargetRef.name));
    const deployments = objects.filter((m) => m.kind === 'Deployment') as (Manifest & { spec: { replicas?: number; selector: { matchLabels: Record<string, string> }; template: { spec: { topologySpreadConstraints?: Spread[] } } } })[];
    const several = deployments.filter((d) => (d.spec.replicas ?? 1) > 1 || autoscaled.has(d.metadata.name));
    expect(several.map((d) => d.metadata.name).sort()).toEqual(['otel-collector', 'vlm-language', 'vlm-vision']);
    for (const d of several) {
      const byNode = (d.spec.template.spec.topologySpreadConstraints ?? []).find((s) => s.topologyKey === 'kubernetes.io/hostname');
      expect(byNode, d.metadata.name).toBeDefined();
      expect(byNode!.labelSelector?.matchLabels).toEqual(expect.objectContaining(d.spec.selector.matchLabels));
    }
  });

  it('puts vision and language on different node pools', () => {
    const vision = deployment(objects, 'vlm-vision').d.spec.template.spec.nodeSelector;
    const language = deployment(objects, 'vlm-language').d.spec.template.spec.nodeSelector;
    expect(vision).toEqual({ 'vlm.io/pool': 'vision' });
    expect(language).toEqual({ 'vlm.io/pool': 'language' });
  });

  it('mounts the model volume read-only and points both services at the same bundle', () => {
    const model = objects.find((m) => m.kind === 'ConfigMap' && m.metadata.name.startsWith('vlm-model-')) as Manifest & { data: Record<string, string> };
    for (const name of ['vlm-vision', 'vlm-language']) {
      const { d, c } = deployment(objects, name);
      expect(c.volumeMounts).toContainEqual({ name: 'models', mountPath: '/models', readOnly: true });
      expect(d.spec.template.spec.volumes).toContainEqual({ name: 'models', persistentVolumeClaim: { claimName: 'vlm-models', readOnly: true } });
      expect(c.envFrom?.map((e) => e.configMapRef?.name)).toContain(model.metadata.name);
      expect(d.spec.template.metadata.labels['vlm.io/model-version']).toBe(model.data.VLM_MODEL_VERSION);
    }
    expect(model.data.VLM_MODEL_DIR.startsWith('/models/')).toBe(true);
  });

  it("names each pod in its telemetry by uid (k8s.pod.uid, service.instance.id), and exports give up within shutdown's flush", () => {
    type FieldEnv = { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } };
    for (const name of ['vlm-vision', 'vlm-language']) {
      const vars = (deployment(objects, name).c.env ?? []) as FieldEnv[];
      const uid = vars.findIndex((e) => e.name === 'POD_UID');
      const attributes = vars.findIndex((e) => e.name === 'OTEL_RESOURCE_ATTRIBUTES');
      expect(vars[uid]?.valueFrom?.fieldRef?.fieldPath).toBe('metadata.uid');
      // $(POD_UID) expands only when POD_UID is declared first
      expect(uid).toBeLessThan(attributes);
      expect(vars[attributes]!.value!.split(',')).toEqual(expect.arrayContaining(['k8s.pod.uid=$(POD_UID)', 'service.instance.id=$(POD_UID)']));
    }
    const config = objects.find((m) => m.kind === 'ConfigMap' && m.metadata.name.startsWith('vlm-config-')) as Manifest & { data: Record<string, string> };
    expect(Number(config.data.OTEL_EXPORTER_OTLP_TIMEOUT)).toBeGreaterThan(0);
    expect(Number(config.data.OTEL_EXPORTER_OTLP_TIMEOUT)).toBeLessThanOrEqual(SHUTDOWN_FLUSH_MS);
  });
});

describe('the cpu overlay', () => {
  it('runs the embedded model on the CPU image with no GPU anywhere', () => {
    const text = kustomizeBuild(CPU_OVERLAY);
    expect(text).not.toContain('nvidia.com/gpu');
    const objects = parseManifests(text);
    for (const name of ['vlm-vision', 'vlm-language']) {
      const { c } = deployment(objects, name);
      expect(env(c, 'VLM_PROVIDER')).toBe('cpu');
      expect(c.image).toBe('vlm-server:0.1.0-cpu');
    }
    const model = objects.find((m) => m.kind === 'ConfigMap' && m.metadata.name.startsWith('vlm-model-')) as Manifest & { data: Record<string, string> };
    expect(model.data.VLM_MODEL_DIR).toBe('/app/models/tiny-llava-shapes');
  });
});

/**
 * A throwaway overlay on top of the gpu overlay, breaking it with JSON patches. `kubectl kustomize`
 * accepts a base directory anywhere; only patch files must sit below the overlay.
 */
function brokenGpuOverlay(name: string, patches: { kind: string; name: string; ops: object[] }[]): string {
  const dir = path.join(scratch, name);
  execFileSync('mkdir', ['-p', dir]);
  const kustomization = {
    apiVersion: 'kustomize.config.k8s.io/v1beta1',
    kind: 'Kustomization',
    resources: [path.relative(dir, GPU_OVERLAY)],
    patches: patches.map((p) => ({ target: { kind: p.kind, name: p.name }, patch: JSON.stringify(p.ops) })),
  };
  writeFileSync(path.join(dir, 'kustomization.yaml'), JSON.stringify(kustomization, null, 2));
  return dir;
}

const VISION_CONTAINER = '/spec/template/spec/containers/0';

describe('deliberately broken manifests fail the checks', () => {
  it('the one from the issue: latest tag, a missing probe, two GPUs, one shared pool', () => {
    const dir = brokenGpuOverlay('issue-example', [
      {
        kind: 'Deployment',
        name: 'vlm-vision',
        ops: [
          { op: 'replace', path: `${VISION_CONTAINER}/image`, value: 'registry.example.com/vlm/vlm-server:latest' },
          { op: 'remove', path: `${VISION_CONTAINER}/readinessProbe` },
          { op: 'replace', path: `${VISION_CONTAINER}/resources/limits/nvidia.com~1gpu`, value: 2 },
        ],
      },
      { kind: 'Deployment', name: 'vlm-language', ops: [{ op: 'replace', path: '/spec/template/spec/nodeSelector/vlm.io~1pool', value: 'vision' }] },
    ]);
    const findings = summary(validateKustomization(dir, fields).findings);
    expect(findings).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^image-pinned Deployment\/vlm-vision: .*moving tag "latest"/),
        expect.stringMatching(/^probes Deployment\/vlm-vision: container vision has no readinessProbe/),
        expect.stringMatching(/^gpu Deployment\/vlm-vision: container vision limits nvidia.com\/gpu to 2/),
        expect.stringMatching(/^separate-pools Deployment\/vlm-language: vision and language may land on the same pool/),
      ]),
    );
  });

  const cases: { name: string; check: string; message: RegExp; patches: { kind: string; name: string; ops: object[] }[] }[] = [
    {
      name: 'an object left without a namespace',
      check: 'namespace',
      message: /has no namespace/,
      patches: [{ kind: 'PersistentVolumeClaim', name: 'vlm-models', ops: [{ op: 'remove', path: '/metadata/namespace' }] }],
    },
    {
      name: 'an untagged image',
      check: 'image-pinned',
      message: /has no tag/,
      patches: [{ kind: 'Deployment', name: 'otel-collector', ops: [{ op: 'replace', path: '/spec/template/spec/containers/0/image', value: 'otel/opentelemetry-collector' }] }],
    },
    {
      name: 'a misspelt field deep inside a container',
      check: 'unknown-field',
      message: /containers\[0\]\.livenessProbe\.grpc\.prot: unknown field/,
      patches: [{ kind: 'Deployment', name: 'vlm-vision', ops: [{ op: 'add', path: `${VISION_CONTAINER}/livenessProbe/grpc/prot`, value: 50060 }] }],
    },
    {
      name: 'a wrongly typed field',
      check: 'schema',
      message: /\/spec\/minReplicas: must be integer/,
      patches: [{ kind: 'HorizontalPodAutoscaler', name: 'vlm-vision', ops: [{ op: 'replace', path: '/spec/minReplicas', value: 'two' }] }],
    },
    {
      name: 'a privileged container',
      check: 'pod-security',
      message: /container language is privileged/,
      patches: [{ kind: 'Deployment', name: 'vlm-language', ops: [{ op: 'replace', path: '/spec/template/spec/containers/0/securityContext/privileged', value: true }] }],
    },
    {
      name: 'privilege escalation allowed',
      check: 'pod-security',
      message: /does not set allowPrivilegeEscalation: false/,
      patches: [{ kind: 'Deployment', name: 'vlm-vision', ops: [{ op: 'replace', path: `${VISION_CONTAINER}/securityContext/allowPrivilegeEscalation`, value: true }] }],
    },
    {
      name: 'running as root allowed',
      check: 'pod-security',
      message: /does not set runAsNonRoot: true/,
      patches: [
        {
          kind: 'Deployment',
          name: 'vlm-vision',
          ops: [
            { op: 'remove', path: '/spec/template/spec/securityContext/runAsNonRoot' },
            { op: 'remove', path: `${VISION_CONTAINER}/securityContext/runAsNonRoot` },
          ],
        },
      ],
    },
    {
      name: 'a readiness probe over HTTP instead of gRPC health',
      check: 'probes',
      message: /readinessProbe is not a gRPC health probe/,
      patches: [{ kind: 'Deployment', name: 'vlm-language', ops: [{ op: 'replace', path: '/spec/template/spec/containers/0/readinessProbe', value: { httpGet: { path: '/', port: 9464 } } }] }],
    },
    {
      name: 'a startup probe missing',
      check: 'probes',
      message: /has no startupProbe/,
      patches: [{ kind: 'Deployment', name: 'vlm-language', ops: [{ op: 'remove', path: '/spec/template/spec/containers/0/startupProbe' }] }],
    },
    {
      name: 'a GPU service without the pool taint toleration',
      check: 'gpu',
      message: /no toleration for the GPU pool's taint/,
      patches: [{ kind: 'Deployment', name: 'vlm-vision', ops: [{ op: 'remove', path: '/spec/template/spec/tolerations' }] }],
    },
    {
      name: 'a service left without a GPU in a GPU build',
      check: 'gpu',
      message: /the language service gets no GPU/,
      patches: [
        {
          kind: 'Deployment',
          name: 'vlm-language',
          ops: [
            { op: 'remove', path: '/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu' },
            { op: 'remove', path: '/spec/template/spec/containers/0/resources/requests/nvidia.com~1gpu' },
          ],
        },
      ],
    },
    {
      name: 'a GPU service that selects no pool',
      check: 'separate-pools',
      message: /the vision service selects no node pool/,
      patches: [{ kind: 'Deployment', name: 'vlm-vision', ops: [{ op: 'remove', path: '/spec/template/spec/nodeSelector' }] }],
    },
    {
      name: 'a grace period shorter than preStop plus drain',
      check: 'graceful-drain',
      message: /terminationGracePeriodSeconds 20 leaves no time/,
      patches: [{ kind: 'Deployment', name: 'vlm-vision', ops: [{ op: 'replace', path: '/spec/template/spec/terminationGracePeriodSeconds', value: 20 }] }],
    },
    {
      name: 'the default progress deadline under a 15-minute startup',
      check: 'progress-deadline',
      message: /progressDeadlineSeconds 600 is shorter than the startup probe's 900 s plus 300 s/,
      patches: [{ kind: 'Deployment', name: 'vlm-vision', ops: [{ op: 'remove', path: '/spec/progressDeadlineSeconds' }] }],
    },
    {
      name: 'vision and language on different model versions',
      check: 'model-lockstep',
      message: /pod label vlm.io\/model-version is "llava-1.5-7b-r0"/,
      patches: [{ kind: 'Deployment', name: 'vlm-language', ops: [{ op: 'replace', path: '/spec/template/metadata/labels/vlm.io~1model-version', value: 'llava-1.5-7b-r0' }] }],
    },
    {
      name: 'autoscaling on CPU',
      check: 'autoscaling',
      message: /scales on CPU or memory/,
      patches: [{ kind: 'HorizontalPodAutoscaler', name: 'vlm-language', ops: [{ op: 'add', path: '/spec/metrics/-', value: { type: 'Resource', resource: { name: 'cpu', target: { type: 'Utilization', averageUtilization: 70 } } } }] }],
    },
    {
      name: 'no disruption budget',
      check: 'disruption-budget',
      message: /no PodDisruptionBudget selects its pods/,
      patches: [{ kind: 'PodDisruptionBudget', name: 'vlm-vision', ops: [{ op: 'replace', path: '/spec/selector/matchLabels', value: { 'app.kubernetes.io/name': 'someone-else' } }] }],
    },
    {
      name: 'the vision port opened to every pod in the namespace',
      check: 'vision-isolation',
      message: /lets pods other than the language service's reach vision's gRPC port 50051/,
      patches: [{ kind: 'NetworkPolicy', name: 'vlm-vision-ingress', ops: [{ op: 'replace', path: '/spec/ingress/0/from/0/podSelector', value: {} }] }],
    },
    {
      name: 'a vision target that is not the headless Service',
      check: 'vision-target',
      message: /is not headless/,
      patches: [{ kind: 'Service', name: 'vlm-vision-headless', ops: [{ op: 'remove', path: '/spec/clusterIP' }] }],
    },
  ];

  it.each(cases)('$name ($check)', ({ name, check, message, patches }) => {
    const report = validateKustomization(brokenGpuOverlay(name.replace(/\W+/g, '-'), patches), fields);
    expect(report.findings.filter((f) => f.check === 'build')).toEqual([]);
    expect(report.findings.filter((f) => f.check === check).map((f) => f.message)).toEqual(expect.arrayContaining([expect.stringMatching(message)]));
  });

  it('a kustomization that does not build is a finding, not a crash', () => {
    const dir = path.join(scratch, 'no-build');
    execFileSync('mkdir', ['-p', dir]);
    writeFileSync(path.join(dir, 'kustomization.yaml'), 'resources:\n  - missing.yaml\n');
    const report = validateKustomization(dir, fields);
    expect(report.findings).toHaveLength(1);
    expect(report.findings[0]).toMatchObject({ check: 'build', message: expect.stringMatching(/missing\.yaml/) });
  });
});

describe('image references', () => {
  it.each([
    ['vlm-server:0.1.0-cpu', undefined],
    ['localhost:5000/vlm/vlm-server:0.1.0', undefined],
    [`vlm-server@sha256:${'a'.repeat(64)}`, undefined],
    ['localhost:5000/vlm/vlm-server', /has no tag/],
    ['vlm-server', /has no tag/],
    ['ghcr.io/x/vlm-server:latest', /moving tag "latest"/],
  ])('%s', (image, problem) => {
    if (problem === undefined) expect(imagePinProblem(image)).toBeUndefined();
    else expect(imagePinProblem(image)).toMatch(problem);
  });
});

describe('Dockerfiles', () => {
  const read = (name: string): string => readFileSync(path.join(K8S, 'docker', name), 'utf8');

  it.each(['Dockerfile.cpu', 'Dockerfile.cuda'])('%s is multi-stage, pinned, non-root, npm ci and pruned', (name) => {
    expect(summary(dockerfileFindings(read(name), name))).toEqual([]);
  });

  it('the CUDA image carries the CUDA provider matching onnxruntime-node 1.29.0', () => {
    const text = read('Dockerfile.cuda');
    expect(text).toContain('com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9');
    expect(text).toMatch(/libonnxruntime_providers_cuda\.so[\s\S]*node_modules\/onnxruntime-node\/bin\/napi-v6\/linux\/x64\//);
    const lock = JSON.parse(readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version: string }> };
    expect(lock.packages['node_modules/onnxruntime-node']!.version).toBe('1.29.0');
  });

  it.each([
    ['a single stage', (t: string) => t.replace(/FROM \$\{NODE_IMAGE\} AS runtime[\s\S]*$/, 'USER 10001\n'), /is not multi-stage/],
    ['a latest base', (t: string) => t.replace('ARG NODE_IMAGE=node:24.21.0-bookworm-slim', 'ARG NODE_IMAGE=node:latest'), /moving tag "latest"/],
    ['a major-only base tag', (t: string) => t.replace('ARG NODE_IMAGE=node:24.21.0-bookworm-slim', 'ARG NODE_IMAGE=node:24-slim'), /not pinned to an exact version/],
    ['a named user', (t: string) => t.replace('USER 10001:10001', 'USER node'), /use a numeric non-root USER/],
    ['no user', (t: string) => t.replace('USER 10001:10001\n', ''), /runs as root \(no USER\)/],
    ['npm install', (t: string) => t.replace(/npm ci/g, 'npm install'), /npm ci/],
    ['dev dependencies shipped', (t: string) => t.replace(/npm prune --omit=dev/g, 'true'), /npm prune --omit=dev/],
  ])('fails with %s', (_name, breakIt, message) => {
    const broken = breakIt(read('Dockerfile.cpu'));
    expect(broken).not.toBe(read('Dockerfile.cpu'));
    expect(dockerfileFindings(broken, 'broken').map((f) => f.message)).toEqual(expect.arrayContaining([expect.stringMatching(message)]));
  });
});

describe('metrics adapter rules', () => {
  it('the Helm values carry the same rules as the ConfigMap, one per HPA metric', () => {
    const rules = parseYaml(readFileSync(path.join(K8S, 'addons/prometheus-adapter/rules.yaml'), 'utf8')) as { rules: { name: { as: string } }[] };
    const values = parseYaml(readFileSync(path.join(K8S, 'addons/prometheus-adapter/values.yaml'), 'utf8')) as { rules: { custom: unknown[] } };
    expect(values.rules.custom).toEqual(rules.rules);
    expect(rules.rules.map((r) => r.name.as).sort()).toEqual(['vlm_inflight_requests', 'vlm_queue_depth']);
  });

  it('average over a window that holds at least two scrapes at the Prometheus chart default of one minute', () => {
    const rules = parseYaml(readFileSync(path.join(K8S, 'addons/prometheus-adapter/rules.yaml'), 'utf8')) as { rules: { metricsQuery: string }[] };
    for (const rule of rules.rules) {
      const window = /avg_over_time\([^)]*\[(\d+)([sm])\]\)/.exec(rule.metricsQuery);
      expect(window, rule.metricsQuery).not.toBeNull();
      const seconds = Number(window![1]) * (window![2] === 'm' ? 60 : 1);
      expect(seconds).toBeGreaterThanOrEqual(120);
    }
  });
});

describe('development TLS certificates and bearer token (k8s/tls/make-dev-certs.sh)', () => {
  let dir: string;
  let secrets: Manifest[];
  beforeAll(() => {
    dir = path.join(scratch, 'certs');
    execFileSync('bash', [path.join(K8S, 'tls', 'make-dev-certs.sh'), '--out', dir, '--days', '2'], { stdio: 'pipe' });
    secrets = parseManifests(readFileSync(path.join(dir, 'secrets.yaml'), 'utf8'));
  });

  it('writes the five Secrets the Deployments mount, schema-valid', () => {
    const objects = parseManifests(kustomizeBuild(GPU_OVERLAY));
    const mounted = objects
      .filter((m) => m.kind === 'Deployment')
      .flatMap((m) => ((m as Deployment).spec.template.spec.volumes ?? []) as { secret?: { secretName: string } }[])
      .flatMap((v) => (v.secret ? [v.secret.secretName] : []));
    expect(new Set(mounted)).toEqual(new Set(secrets.map((s) => s.metadata.name)));
    expect(summary([...schemaFindings(secrets), ...fields.findings(secrets)])).toEqual([]);
  });

  it("names both language Services in the language server's certificate, so backend apps can balance over the headless one", () => {
    const cert = new X509Certificate(readFileSync(path.join(dir, 'language-server.crt')));
    const names = (cert.subjectAltName ?? '').split(', ');
    expect(names).toEqual(expect.arrayContaining(['DNS:vlm-language-headless.vlm.svc.cluster.local', 'DNS:vlm-language.vlm.svc.cluster.local', 'DNS:vlm-language']));
    const services = parseManifests(kustomizeBuild(GPU_OVERLAY)).filter((m) => m.kind === 'Service' && m.metadata.name.startsWith('vlm-language')) as unknown as { metadata: { name: string }; spec: { clusterIP?: string; publishNotReadyAddresses?: boolean } }[];
    expect(services.find((s) => s.metadata.name === 'vlm-language-headless')?.spec).toMatchObject({ clusterIP: 'None', publishNotReadyAddresses: false });
  });

  it('writes a token file both services accept from the file the Deployments point VLM_AUTH_TOKEN_FILE at', () => {
    const auth = secrets.find((s) => s.metadata.name === 'vlm-auth') as unknown as { data: { tokens: string } };
    const text = Buffer.from(auth.data.tokens, 'base64').toString('utf8');
    expect(text).toBe(readFileSync(path.join(dir, 'auth-tokens'), 'utf8'));
    const [token] = parseTokenFile(text, 'vlm-auth');
    expect(token!.name).toBe('dev');
    expect(token!.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    // Renewing the certificates keeps the token the callers hold, and the CA the pods not yet re-read trust.
    const ca = readFileSync(path.join(dir, 'ca.crt'), 'utf8');
    const leaf = readFileSync(path.join(dir, 'vision-server.crt'), 'utf8');
    execFileSync('bash', [path.join(K8S, 'tls', 'make-dev-certs.sh'), '--out', dir, '--days', '2'], { stdio: 'pipe' });
    expect(readFileSync(path.join(dir, 'auth-tokens'), 'utf8')).toBe(text);
    expect(readFileSync(path.join(dir, 'ca.crt'), 'utf8')).toBe(ca);
    expect(readFileSync(path.join(dir, 'vision-server.crt'), 'utf8')).not.toBe(leaf);
    execFileSync('openssl', ['verify', '-CAfile', path.join(dir, 'ca.crt'), path.join(dir, 'vision-server.crt'), path.join(dir, 'vision-client.crt')], { stdio: 'pipe' });
    // A CA that would expire before the renewed certificates is refused, not silently reused.
    expect(() => execFileSync('bash', [path.join(K8S, 'tls', 'make-dev-certs.sh'), '--out', dir, '--days', '3700', '--ca-days', '4000'], { stdio: 'pipe' })).toThrow(/expires within 3700 days/);
    const objects = parseManifests(kustomizeBuild(GPU_OVERLAY));
    // Vision holds only the hop's token: the clients' stay with the language service.
    for (const [name, variable, secret] of [
      ['vlm-language', 'VLM_AUTH_TOKEN_FILE', 'vlm-auth'],
      ['vlm-language', 'VLM_VISION_TOKEN_FILE', 'vlm-hop-auth'],
      ['vlm-vision', 'VLM_AUTH_TOKEN_FILE', 'vlm-hop-auth'],
    ] as const) {
      const pod = deployment(objects, name).d.spec.template.spec;
      const container = pod.containers[0]!;
      const file = container.env?.find((e) => e.name === variable)?.value;
      const volume = pod.volumes?.find((v) => v.secret?.secretName === secret);
      const mount = container.volumeMounts?.find((m) => m.name === volume?.name);
      // A directory mount (no subPath): only that follows the Secret's updates, which a rotation needs.
      expect({ name, variable, file, subPath: mount?.subPath }).toEqual({ name, variable, file: `${mount?.mountPath}/tokens`, subPath: undefined });
    }
    expect(deployment(objects, 'vlm-vision').d.spec.template.spec.volumes?.some((v) => v.secret?.secretName === 'vlm-auth')).toBe(false);
    const hop = secrets.find((s) => s.metadata.name === 'vlm-hop-auth') as unknown as { data: { tokens: string } };
    const [hopToken] = parseTokenFile(Buffer.from(hop.data.tokens, 'base64').toString('utf8'), 'vlm-hop-auth');
    expect(hopToken!.name).toBe('language');
    expect(hopToken!.token).not.toBe(token!.token);
    // A folder from before the split (a token file, no hop file) keeps the hop's token the old pods send.
    const old = path.join(scratch, 'certs-before-split');
    execFileSync('bash', [path.join(K8S, 'tls', 'make-dev-certs.sh'), '--out', old, '--days', '2'], { stdio: 'pipe' });
    rmSync(path.join(old, 'hop-tokens'));
    writeFileSync(path.join(old, 'auth-tokens'), '# apps\n\ndev t0k3n-dev-xxxxxxxxxx\nci t0k3n-ci-xxxxxxxxxxx\n');
    execFileSync('bash', [path.join(K8S, 'tls', 'make-dev-certs.sh'), '--out', old, '--days', '2'], { stdio: 'pipe' });
    expect(readFileSync(path.join(old, 'hop-tokens'), 'utf8')).toBe('dev t0k3n-dev-xxxxxxxxxx\n');
  });

  it("issues the language service's client certificate under the name vision's VLM_TLS_CLIENT_NAMES lets in", () => {
    const vision = deployment(parseManifests(kustomizeBuild(GPU_OVERLAY)), 'vlm-vision').d.spec.template.spec.containers[0]!;
    const allowed = (vision.env?.find((e) => e.name === 'VLM_TLS_CLIENT_NAMES')?.value ?? '').split(',');
    const subject = new X509Certificate(readFileSync(path.join(dir, 'vision-client.crt'))).subject; // "CN=vlm-language"
    expect(allowed).toContain(subject.replace(/^CN=/, ''));
  });

  it('lets the language client through vision\'s mutual TLS under the headless Service name, and nobody without a client certificate', async () => {
    const grpc = await import('@grpc/grpc-js');
    const { HealthImplementation, service } = await import('grpc-health-check');
    const pem = (name: string): Buffer => readFileSync(path.join(dir, name));
    const server = new grpc.Server();
    new HealthImplementation({ '': 'SERVING' }).addToServer(server);
    const credentials = grpc.ServerCredentials.createSsl(pem('ca.crt'), [{ cert_chain: pem('vision-server.crt'), private_key: pem('vision-server.key') }], true);
    const port = await bindLoopback(server, credentials);
    const Health = grpc.makeGenericClientConstructor(service, 'Health');
    const check = (clientCreds: InstanceType<typeof grpc.ChannelCredentials>): Promise<string> =>
      new Promise((resolve) => {
        const client = new Health(`127.0.0.1:${port}`, clientCreds, { 'grpc.ssl_target_name_override': 'vlm-vision-headless.vlm.svc.cluster.local' }) as unknown as {
          check(req: object, opts: object, cb: (err: { code: number } | null, res?: { status: string }) => void): void;
          close(): void;
        };
        client.check({ service: '' }, { deadline: Date.now() + 5000 }, (err, res) => {
          client.close();
          resolve(err ? `error ${grpc.status[err.code]}` : String(res!.status));
        });
      });
    try {
      expect(await check(grpc.credentials.createSsl(pem('ca.crt'), pem('vision-client.key'), pem('vision-client.crt')))).toBe('SERVING');
      expect(await check(grpc.credentials.createSsl(pem('ca.crt')))).toBe('error UNAVAILABLE');
    } finally {
      server.forceShutdown();
    }
  });
});
