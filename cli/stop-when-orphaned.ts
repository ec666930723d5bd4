/**
 * Long-running commands started through npm (`npm start`, `npx vlm ...`) sit under an npm process
 * that does not pass a SIGTERM on: `kill %1` on the backgrounded command ends npm and leaves this
 * process running (holding its ports and files). When the parent goes, the process is re-parented;
 * that is taken as the signal to stop. Its own module: `vlm serve all` must not load grpc-js or sharp.
 */
export function stopWhenOrphaned(stop: () => void): void {
  const parent = process.ppid;
  if (parent <= 1) return; // started by init or a container runtime: nothing to outlive
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    stop();
  }, 500);
  timer.unref();
}
