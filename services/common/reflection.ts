/**
 * What server reflection describes. proto-loader's descriptors lose the comments (protobufjs keeps
 * no source info), merge a package's files into one `vlm_v1.proto`, and write relative type names
 * and map entries Go clients refuse (`buf curl --list-methods` failed on grpc.health.v1), so
 * `npm run gen` has buf write the protos as a FileDescriptorSet with source info
 * (gen/descriptors.binpb): ours, and grpc-health-check's health.proto. Reflection serves those files,
 * by their real names and with their comments. Without the set (a tree built without `npm run gen`)
 * it falls back to proto-loader's, with a warning.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { loadSync, type PackageDefinition } from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { packageRoot } from '../../shared/package-root';
import type { Logger } from '../../shared/log';

export const DESCRIPTOR_SET_PATH = path.join(packageRoot(), 'gen', 'descriptors.binpb');

const LOADER_OPTIONS = { keepCase: true, defaults: false } as const;

/** `files` and every file they import, each once, serialized (with source info) for reflection. */
export function filesWithImports(set: readonly FileDescriptorProto[], files: readonly string[]): Uint8Array[] {
  const byName = new Map(set.map((f) => [f.name, f]));
  const seen = new Set<string>();
  const out: Uint8Array[] = [];
  const visit = (name: string): void => {
    if (seen.has(name)) return;
    const file = byName.get(name);
    if (!file) throw new Error(`${name} is not in the descriptor set`);
    seen.add(name);
    out.push(toBinary(FileDescriptorProtoSchema, file));
    for (const dep of file.dependency) visit(dep);
  };
  for (const f of files) visit(f);
  return out;
}

/** grpc.health.v1 in the set, named as buf names it from grpc-health-check's proto root. */
export const HEALTH_PROTO_FILE = 'health/v1/health.proto';

/**
 * google.rpc's Status and details, which no API message imports: errors carry them in the
 * grpc-status-details-bin trailer, and a client built from reflection alone needs them to read it.
 */
const STATUS_DETAIL_FILES = ['google/rpc/status.proto', 'google/rpc/error_details.proto'];

/** The definition @grpc/reflection indexes (it reads only each entry's `fileDescriptorProtos`). */
export function reflectionDefinition(protoFiles: readonly string[], log: Logger, setPath = DESCRIPTOR_SET_PATH): PackageDefinition {
  try {
    if (!existsSync(setPath)) throw new Error(`${setPath} does not exist (run npm run gen)`);
    const set = fromBinary(FileDescriptorSetSchema, readFileSync(setPath)).file;
    const files = { fileDescriptorProtos: filesWithImports(set, [...protoFiles, HEALTH_PROTO_FILE, ...STATUS_DETAIL_FILES]) };
    return { [`vlm.reflection:${protoFiles.join(',')}`]: files } as unknown as PackageDefinition;
  } catch (err) {
    log.warn('reflection serves the API without its comments', { reason: (err as Error).message });
    const health = loadSync(healthProtoPath, { ...LOADER_OPTIONS, includeDirs: [path.dirname(healthProtoPath)] });
    return { ...health, ...loadSync([...protoFiles], { ...LOADER_OPTIONS, includeDirs: [path.join(packageRoot(), 'proto')] }) };
  }
}
