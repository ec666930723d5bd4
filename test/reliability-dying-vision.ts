/**
 * A vision replica that dies mid-stream, for the fault tests: it answers Encode with the first
 * messages of a genuine stream (header and a chunk, passed in VLM_FAKE_MESSAGES as base64 encoded
 * EncodeResponses), then SIGKILLs its own process. Prints "listening <port>" once bound.
 */
import { Server, ServerCredentials, type ServerWritableStream } from '@grpc/grpc-js';
import { EncodeResponse, VisionServiceService, type EncodeRequest } from '../gen/vlm/v1/vision_service';

const messages = (JSON.parse(process.env.VLM_FAKE_MESSAGES ?? '[]') as string[]).map((b) => EncodeResponse.decode(Buffer.from(b, 'base64')));
const server = new Server();
server.addService(VisionServiceService, {
  encode: (call: ServerWritableStream<EncodeRequest, EncodeResponse>) => {
    for (const m of messages) call.write(m);
    setTimeout(() => process.kill(process.pid, 'SIGKILL'), 30);
  },
  getModelInfo: (_call: unknown, cb: (e: null, r: object) => void) => cb(null, {}),
});
server.bindAsync(`127.0.0.1:${process.env.VLM_FAKE_PORT ?? '0'}`, ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  process.stdout.write(`listening ${port}\n`);
});
