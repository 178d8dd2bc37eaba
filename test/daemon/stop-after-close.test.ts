/**
 * A daemon stopped right after the last user of a volume file closed it stops. close(2)
 * returns before the kernel's FUSE RELEASE reaches the daemon, so a stop that counted open
 * files at once saw the file as still open, refused ("volume files are open") and kept
 * running; a test (or an operator's script) that closed the file and then sent SIGTERM
 * waited for an exit that never came.
 */
import { open } from 'node:fs/promises';
import t from 'tap';
import { cli, image, makeHost, serve, waitFor } from '../helpers/daemon.js';

for (const transport of ['native', 'fuse-native'] as const) {
  t.test(`SIGTERM right after the file is closed stops the daemon (${transport})`, async (t) => {
    const h = await makeHost(t, `stop-${transport}`);
    h.env = { ISLAND_FUSE: transport };
    await serve(h);
    t.equal((await cli(h, 'volume', 'create', 'v', '--size', '16M')).code, 0);
    t.equal((await cli(h, 'attach', 'v')).code, 0);
    for (let round = 0; round < 8; round++) {
      if (round > 0) await serve(h);
      const fh = await open(image(h, 'v'), 'r+');
      await fh.write(Buffer.alloc(4096, round + 1), 0, 4096, 65536 * round);
      await fh.close();
      const child = h.child!;
      child.kill('SIGTERM');
      const exited = await waitFor('the daemon to exit', () => child.exitCode !== null || child.signalCode !== null, 15_000).then(
        () => true,
        () => false,
      );
      t.ok(exited, `round ${round}: the daemon stopped`);
      if (!exited) {
        child.kill('SIGKILL');
        await waitFor('the daemon to die', () => child.exitCode !== null || child.signalCode !== null);
        break;
      }
      h.child = undefined;
    }
  });
}
