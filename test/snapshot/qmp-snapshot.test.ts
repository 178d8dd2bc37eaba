/**
 * Snapshots coordinated with a running QEMU over QMP (guest-less qemu-system-x86_64):
 * flush snapshots pause the VM around the seal and record the pause; a QMP socket that
 * never answers fails the snapshot clearly; QEMU's SHUTDOWN triggers a final snapshot.
 */
import { createServer } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
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

/**
 * A scripted guest agent on the host end of the agent's channel: it answers the sync
 * handshake and replies to freeze as told, and records the commands it received.
 */
async function scriptedAgent(t: Test, path: string, freezeReply: Record<string, unknown>): Promise<string[]> {
  const seen: string[] = [];
  const sockets: import('node:net').Socket[] = [];
  const server = createServer((sock) => {
    sockets.push(sock);
    let buf = '';
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1').replace(/\xff/g, '');
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as { execute: string; arguments?: { id?: number } };
        seen.push(msg.execute);
        if (msg.execute === 'guest-sync-delimited') sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: msg.arguments?.id }) + '\n')]));
        else if (msg.execute === 'guest-fsfreeze-freeze') sock.write(JSON.stringify(freezeReply) + '\n');
        else sock.write(JSON.stringify({ return: 1 }) + '\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return seen;
}

t.test('freeze snapshots: freeze, stop, seal, cont, thaw; thaw is sent even when freeze fails', async (t) => {
  const h = await makeHost(t, 'freeze-host');
  await serve(h);
  await cliJson(h, 'volume', 'create', 'fz', '--size', '1G');
  const islandQmp = join(h.dataDir, 'island-qmp.sock');
  const qga = join(h.dataDir, 'qga.sock');
  const seen = await scriptedAgent(t, qga, { return: 2 });
  await cliJson(h, 'attach', 'fz', '--qmp', islandQmp, '--qga', qga);
  const q = await TestQemu.start(h.dataDir, image(h, 'fz'), { directIo: true, islandQmp });
  t.teardown(() => q.kill());
  await q.qemuIo('write -P 0x61 0 1M');
  const r = await cliJson(h, 'snapshot', 'create', 'fz', '--consistency', 'freeze');
  t.equal((r.snapshots as { consistency: string }[])[0]?.consistency, 'guest-frozen', 'the manifest records the guest-frozen level');
  const cmds = seen.filter((c) => c !== 'guest-sync-delimited');
  t.same(cmds, ['guest-fsfreeze-freeze', 'guest-fsfreeze-thaw'], 'freeze, then thaw');
  t.same(q.events.filter((e) => e === 'STOP' || e === 'RESUME'), ['STOP', 'RESUME'], 'QEMU was paused between them');

  // An agent whose freeze fails: the snapshot fails clearly, thaw is still sent, the VM runs.
  const qga2 = join(h.dataDir, 'qga2.sock');
  const seen2 = await scriptedAgent(t, qga2, { error: { class: 'GenericError', desc: 'failed to freeze /: Device or resource busy' } });
  const bad = await cli(h, 'snapshot', 'create', 'fz', '--consistency', 'freeze', '--qga', qga2);
  t.not(bad.code, 0, 'a failed freeze fails the snapshot');
  t.match(bad.stderr, /QMP_ERROR.*freeze/, `a clear error: ${bad.stderr.trim()}`);
  t.ok(seen2.includes('guest-fsfreeze-thaw'), 'thaw was sent after the failed freeze');
  t.equal(((await q.cmd('query-status')) as { status: string }).status, 'running', 'the VM was never left paused');
  const none = await cli(h, 'snapshot', 'create', 'fz', '--consistency', 'freeze', '--qmp', islandQmp, '--qga', join(h.dataDir, 'nothing.sock'));
  t.not(none.code, 0, 'no agent socket at all: a clear error');
  const again = await cliJson(h, 'snapshot', 'create', 'fz', '--consistency', 'flush');
  t.equal((again.snapshots as { consistency: string }[])[0]?.consistency, 'qemu-flushed', 'the changes the failed snapshots sealed go into the next one');
  await q.quit();
});
