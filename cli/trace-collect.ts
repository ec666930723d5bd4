/**
 * `vlm trace collect [--port 4318] [--host 127.0.0.1] --out FILE`: an OTLP/HTTP receiver for local
 * runs. Point the services at it with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318; every span
 * becomes one JSON line in FILE (see shared/telemetry/analysis/span-record.ts), ready for
 * `vlm trace report FILE`. Runs until SIGINT or SIGTERM.
 */
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { VlmError } from '../shared/errors';
import { startTraceReceiver } from '../shared/telemetry/collector';
import { ownFlagsHelp, type CommandFlags } from './help';
import { stopWhenOrphaned } from './stop-when-orphaned';

export const TRACE_COLLECT_USAGE = 'usage: vlm trace collect --out FILE [--port 4318] [--host 127.0.0.1] [--append]';

const FLAGS = {
  out: { type: 'string', arg: 'FILE', help: 'where the span lines go (required)' },
  port: { type: 'string', arg: 'PORT', help: 'OTLP/HTTP port; 0 picks a free one [default: 4318]' },
  host: { type: 'string', arg: 'ADDRESS', help: 'address to listen on [default: 127.0.0.1]' },
  append: { type: 'boolean', help: 'append to FILE instead of replacing it' },
} as const satisfies CommandFlags;

export async function traceCollectMain(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: { ...FLAGS, port: { ...FLAGS.port, default: '4318' }, host: { ...FLAGS.host, default: '127.0.0.1' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    });
  } catch (err) {
    throw new VlmError('INVALID_ARGUMENT', `${(err as Error).message}\n${TRACE_COLLECT_USAGE}`);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(`${TRACE_COLLECT_USAGE}\n\nflags of this command:\n${ownFlagsHelp(FLAGS)}\n`);
    return 0;
  }
  if (!values.out) throw new VlmError('INVALID_ARGUMENT', `--out FILE is required\n${TRACE_COLLECT_USAGE}`);
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw VlmError.invalid('port', `"${values.port}" is not a TCP port (0 picks a free one)`);

  // Synchronous writes: a line is on disk before the exporter gets its 200, so a reader never sees
  // half a batch, and nothing is lost when the process is stopped.
  // Opened to append, and emptied only once the receiver listens: a collector that cannot (its port
  // taken by one already running) leaves that one's file as it was.
  let fd: number;
  try {
    fd = openSync(values.out, 'a');
  } catch (err) {
    throw VlmError.invalid('out', `cannot write "${values.out}": ${(err as Error).message}`);
  }
  const receiver = await startTraceReceiver({
    port,
    host: values.host,
    onSpans: (spans) => {
      writeSync(fd, spans.map((s) => JSON.stringify(s)).join('\n') + '\n');
    },
    // The SDK's exporter only logs a refused batch with its diagnostics on: say it here.
    onRejected: (status, message) => process.stderr.write(`vlm trace collect: refused a request (${status}): ${message}\n`),
  }).catch((err: unknown) => {
    closeSync(fd);
    throw err;
  });
  if (!values.append) ftruncateSync(fd, 0);
  process.stderr.write(`vlm trace collect: OTLP/HTTP on ${receiver.url}/v1/traces, writing ${values.out}\n`);

  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    stopWhenOrphaned(stop);
  });
  await receiver.close();
  closeSync(fd);
  process.stderr.write(`vlm trace collect: ${receiver.stats.spans} spans written to ${values.out}\n`);
  return 0;
}

if (require.main === module) {
  traceCollectMain(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`vlm trace collect: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
