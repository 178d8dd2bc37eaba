/**
 * Snapshots coordinated with a running QEMU over QMP (guest-less qemu-system-x86_64):
 * flush snapshots pause the VM around the seal and record the pause; a QMP socket that
 * never answers fails the snapshot clearly; QEMU's SHUTDOWN triggers a final snapshot.
 */
import { createServer } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { FsStore } from '../../src/store/fs.js';
import { cli, cliJson, image, makeHost, run, serve, waitFor } from '../helpers/daemon.js';
import { TestQemu } from '../helpers/qemu.js';

t.test('flush snapshots: stop, seal, cont; the pause is recorded; the image is consistent', async (t) => {
  const h = await makeHost(t, 'qmp-host');
  await serve(h);
  await cliJson(h, 'volume', 'create', 'vm', '--size', '4G');
  const islandQmp = join(h.dataDir, 'island-qmp.sock');
  await cliJson(h, 'attach', 'vm', '--qmp', islandQmp);
  const q = await TestQemu.start(h.dataDir, image(h, 'vm'), { directIo: true, islandQmp });
  t.teardown(() => q.kill());
  await q.qemuIo('write -P 0x91 0 2M');
  await q.qemuIo('write -P 0x92 3G 1M');
  const r = await cliJson(h, 'snapshot', 'create', 'vm');
  const s = (r.snapshots as { id: string; consistency: string; pauseMs: number }[])[0] as { id: string; consistency: string; pauseMs: number };
  t.equal(s.consistency, 'qemu-flushed', 'a volume attached with --qmp gets a flush snapshot by default');
  t.ok(s.pauseMs > 0, `the pause was measured: ${s.pauseMs} ms`);
  t.same(q.events.filter((e) => e === 'STOP' || e === 'RESUME'), ['STOP', 'RESUME'], 'QEMU was stopped and resumed once (every monitor sees the events)');
  t.equal(((await q.cmd('query-status')) as { status: string }).status, 'running', 'the VM runs again after the snapshot');
  await q.qemuIo('write -P 0x93 0 64k');
  const repo = new Repository(new FsStore(h.storeDir), { host: 'checker' });
  const m = await findSnapshot(repo, s.id);
  const out = join(h.dataDir, 'flushed.qcow2');
  await exportSnapshot(repo, m as NonNullable<typeof m>, out);
  const check = await run('qemu-img', ['check', out]);
  t.match(check.stdout, /No errors were found/, 'qemu-img check: a flushed snapshot has no errors');
  const rd = await run('qemu-io', ['-c', 'read -P 0x91 0 2M', '-c', 'read -P 0x92 3G 1M', out]);
  t.notMatch(rd.stdout, /Pattern verification failed/, 'it holds what QEMU wrote before the snapshot');

  await q.quit();
  await waitFor('the final snapshot after QEMU shut down', async () => {
    const list = (await cliJson(h, 'snapshot', 'list', 'vm')).snapshots as unknown[];
    return list.length === 2;
  }, 60_000);
  t.pass('SHUTDOWN triggered a final snapshot');
});

t.test('a QMP socket that never answers fails the snapshot clearly and nothing hangs', async (t) => {
  const h = await makeHost(t, 'mute-host');
  await serve(h);
  await cliJson(h, 'volume', 'create', 'mute', '--size', '1G');
  const mute = join(h.dataDir, 'mute.sock');
  const sockets: import('node:net').Socket[] = [];
  const server = createServer((sock) => sockets.push(sock)); // accepts, never speaks
  await new Promise<void>((r) => server.listen(mute, r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  await cliJson(h, 'attach', 'mute', '--qmp', mute);
  const r = await cli(h, 'snapshot', 'create', 'mute');
  t.not(r.code, 0);
  t.match(r.stderr, /QMP_TIMEOUT|QMP_ERROR/, `a clear error: ${r.stderr.trim()}`);
  const crash = await cliJson(h, 'snapshot', 'create', 'mute', '--consistency', 'crash');
  t.equal((crash.snapshots as { consistency: string }[])[0]?.consistency, 'crash', 'a crash-consistent snapshot still works');
});
