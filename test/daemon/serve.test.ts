/**
 * `island serve` starts fully or not at all, and one daemon serves a data directory:
 * a second daemon on the same data directory is refused before it recovers or serves any
 * volume (two would each overwrite the other's writes), the lock dies with its holder, and
 * a start that fails halfway (a metrics port in use) leaves no mount, socket or lock.
 */
import t from 'tap';
import { createServer, type Server } from 'node:net';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cli, kill, log, makeHost, serve, socket, type Host } from '../helpers/daemon.js';

async function mounted(path: string): Promise<boolean> {
  return (await readFile('/proc/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === path);
}

/** Run `island serve` for a host expected to fail at start; its exit code and log. */
async function failingServe(h: Host): Promise<{ exited: boolean; log: string }> {
  await serve(h).catch(() => undefined);
  const child = h.child;
  if (child && child.exitCode === null && child.signalCode === null) {
    // It came up (it should not have): stop it so the test fails cleanly.
    await kill(h, 'SIGKILL');
    return { exited: false, log: await log(h) };
  }
  h.child = undefined;
  return { exited: true, log: await log(h) };
}

t.test('a second daemon on a served data directory is refused and changes nothing', async (t) => {
  const h = await makeHost(t, 'host-a');
  await serve(h);
  t.equal((await cli(h, 'volume', 'create', 'vol1', '--size', '64M')).code, 0, 'a volume');
  t.equal((await cli(h, 'attach', 'vol1')).code, 0, 'attached on the first daemon');

  const second: Host = { ...h, mount: join(h.dataDir, 'mnt2'), logFile: join(h.dataDir, 'second.log'), env: { ISLAND_SOCKET: join(h.dataDir, 'second.sock') }, child: undefined };
  const r = await failingServe(second);
  t.ok(r.exited, 'the second daemon exits');
  t.match(r.log, /DATA_DIR_LOCKED/, 'and says the data directory is in use');
  t.match(r.log, new RegExp(`pid ${h.child?.pid}`), 'naming the pid that holds it');
  t.notOk(r.log.includes('volume reattached'), 'it reopened no volume');
  t.notOk(await mounted(second.mount), 'it left no mount');
  t.notOk(existsSync(join(h.dataDir, 'second.sock')), 'and no socket');

  const st = await cli(h, 'status', '--json');
  t.equal(st.code, 0, 'the first daemon still serves');
  t.equal((JSON.parse(st.stdout) as { attached: number }).attached, 1, 'its volume still attached');
});

t.test('the lock dies with its holder: after a SIGKILL the next daemon serves', async (t) => {
  const h = await makeHost(t, 'host-b');
  await serve(h);
  await kill(h, 'SIGKILL');
  await serve(h);
  t.equal((await cli(h, 'status')).code, 0, 'the restarted daemon serves the same data directory');
  await kill(h, 'SIGTERM');
});

t.test('a metrics port in use stops the start and leaves nothing behind', async (t) => {
  const busy: Server = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise((r) => busy.close(r)));
  const port = (busy.address() as { port: number }).port;
  const h = await makeHost(t, 'host-c');
  h.env = { ISLAND_METRICS_PORT: String(port) };
  const r = await failingServe(h);
  t.ok(r.exited, 'serve exits instead of running half-started');
  t.match(r.log, /EADDRINUSE/, 'naming the port in use');
  t.notOk(await mounted(h.mount), 'no mount is left');
  t.notOk(existsSync(socket(h)), 'no control socket is left');
  h.env = {};
  await serve(h);
  t.equal((await cli(h, 'status')).code, 0, 'a later start takes the data directory (the lock was released)');
  await kill(h, 'SIGTERM');
});
