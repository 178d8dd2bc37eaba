/**
 * Growing volumes: a detached volume's record grows and its next attach grows the image
 * (restored from a smaller snapshot: through qemu-img on the mount, since a larger size
 * needs a larger L1 table elsewhere in the file); shrinking is refused and changes nothing;
 * an attached volume grows through qemu-img when its file is not open, through QMP
 * block_resize when a VM has it open, and is refused otherwise; a volume created from a
 * smaller snapshot may be larger. Real daemon, real FUSE, real qemu-img and QEMU.
 */
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { call } from '../../src/cli/client.js';
import { cli, cliJson, image, kill, makeHost, run, serve, socket, waitFor, type Host } from '../helpers/daemon.js';
import { TestQemu } from '../helpers/qemu.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

async function info(h: Host, name: string): Promise<{ 'virtual-size': number; 'cluster-size': number }> {
  const r = await run('qemu-img', ['info', '-f', 'qcow2', '--output=json', image(h, name)]);
  return JSON.parse(r.stdout) as { 'virtual-size': number; 'cluster-size': number };
}

async function checkClean(t: Tap, h: Host, name: string, what: string): Promise<void> {
  const r = await run('qemu-img', ['check', '-f', 'qcow2', '--output=json', image(h, name)]);
  const c = JSON.parse(r.stdout) as { corruptions?: number; leaks?: number; 'check-errors'?: number };
  t.same({ corruptions: c.corruptions ?? 0, leaks: c.leaks ?? 0, errors: c['check-errors'] ?? 0 }, { corruptions: 0, leaks: 0, errors: 0 }, `qemu-img check: ${what}`);
}

type Tap = typeof t;

async function qemuIo(h: Host, name: string, ...cmds: string[]): Promise<string> {
  const r = await run('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), image(h, name)]);
  return r.stdout + r.stderr;
}

async function record(h: Host, name: string): Promise<{ virtualSize: number; status: string; revision?: number; generation: number }> {
  return (await cliJson(h, 'volume', 'show', name)) as { virtualSize: number; status: string; generation: number };
}

t.test('grow a 4 KiB-cluster volume past 1 GiB: detached, restored, attached, from a snapshot', async (t) => {
  const h = await makeHost(t, 'host-resize');
  await serve(h);
  t.equal((await cli(h, 'volume', 'create', 'v', '--size', '64M', '--cluster-size', '4K')).code, 0);
  t.equal((await cli(h, 'attach', 'v')).code, 0);
  t.notMatch(await qemuIo(h, 'v', 'write -P 0xab 0 1M', 'write -P 0xac 60M 1M'), /error|failed/i, 'data written');
  t.equal((await cli(h, 'detach', 'v')).code, 0, 'detached: the final snapshot holds a 64 MiB image');
  const snap = ((await cliJson(h, 'snapshot', 'list', 'v')).snapshots as { id: string }[])[0]?.id as string;

  // Shrinking is refused and changes nothing.
  const shrink = await cli(h, 'volume', 'resize', 'v', '--size', '32M');
  t.equal(shrink.code, 2, 'shrink: invalid');
  t.match(shrink.stderr, /INVALID_ARGUMENT.*grow but not shrink/, 'the error says why');
  t.equal((await record(h, 'v')).virtualSize, 64 * MiB, 'the record is unchanged');

  // Detached: the record grows (the generation is taken and given back), nothing else.
  const before = await record(h, 'v');
  const r = (await cliJson(h, 'volume', 'resize', 'v', '--size', '1536M')) as { virtualSize: number; resize: { from: number; to: number; how: string } };
  t.same(r.resize, { name: 'v', from: 64 * MiB, to: 1536 * MiB, how: 'record' }, 'a detached volume: its record grows');
  const after = await record(h, 'v');
  t.equal(after.virtualSize, 1536 * MiB);
  t.equal(after.status, 'available', 'and it is available again');
  t.equal(after.generation, before.generation + 1, 'the generation held while the record was rewritten is released');

  // The next attach restores the 64 MiB snapshot and grows its image.
  t.equal((await cli(h, 'attach', 'v')).code, 0, 'attach');
  const i1 = await info(h, 'v');
  t.equal(i1['virtual-size'], 1536 * MiB, 'qemu-img info through the mount: the image has the new size');
  t.equal(i1['cluster-size'], 4096, 'with its 4 KiB clusters');
  await checkClean(t, h, 'v', 'the grown image (its L1 table outgrew one cluster) is clean');
  t.notMatch(await qemuIo(h, 'v', 'read -P 0xab 0 1M', 'read -P 0xac 60M 1M'), /Pattern verification failed|error/i, 'the snapshot data reads back');
  t.notMatch(await qemuIo(h, 'v', 'write -P 0xcd 1400M 1M'), /error|failed/i, 'a write past 1 GiB');
  const st = (await cliJson(h, 'status')) as { capacity: { provisionedBytes: number } };
  t.equal(st.capacity.provisionedBytes, 1536 * MiB, 'status provisions the grown size');

  // Attached, file not open: grows now through qemu-img.
  const r2 = (await cliJson(h, 'volume', 'resize', 'v', '--size', '2G')) as { resize: { how: string; from: number } };
  t.equal(r2.resize.how, 'qemu-img', 'attached and not open: qemu-img through the mount');
  t.equal(r2.resize.from, 1536 * MiB, 'from the size of the image');
  t.equal((await info(h, 'v'))['virtual-size'], 2 * GiB);
  await checkClean(t, h, 'v', 'grown while attached');
  t.equal((await record(h, 'v')).virtualSize, 2 * GiB, 'the record follows');

  // Attached and open (no QMP socket): refused, nothing changes.
  const fh = await open(image(h, 'v'), 'r');
  try {
    const busy = await cli(h, 'volume', 'resize', 'v', '--size', '3G');
    t.equal(busy.code, 1);
    t.match(busy.stderr, /BUSY.*open.*QMP/, 'open without a QMP socket: refused, saying why');
  } finally {
    await fh.close();
  }
  t.equal((await info(h, 'v'))['virtual-size'], 2 * GiB, 'the image is unchanged');
  t.equal((await record(h, 'v')).virtualSize, 2 * GiB, 'the record is unchanged');

  t.equal((await cli(h, 'detach', 'v')).code, 0);
  t.equal((await cli(h, 'attach', 'v')).code, 0, 'attach again: restored from the 2 GiB snapshot');
  t.equal((await info(h, 'v'))['virtual-size'], 2 * GiB);
  await checkClean(t, h, 'v', 'the snapshot of the grown image restores clean');
  t.notMatch(await qemuIo(h, 'v', 'read -P 0xab 0 1M', 'read -P 0xcd 1400M 1M'), /Pattern verification failed|error/i, 'old and new data read back');
  t.equal((await cli(h, 'detach', 'v')).code, 0);

  // A volume from the 64 MiB snapshot: smaller refused, larger allowed and grown at its first attach.
  const small = await cli(h, 'volume', 'create', 'w', '--from', snap, '--size', '32M');
  t.equal(small.code, 2, 'smaller than the snapshot: refused');
  t.match(small.stderr, /at least/);
  t.equal((await cli(h, 'volume', 'create', 'w', '--from', snap, '--size', '3G')).code, 0, 'larger than the snapshot: allowed');
  t.equal((await record(h, 'w')).virtualSize, 3 * GiB);
  t.equal((await cli(h, 'attach', 'w')).code, 0);
  t.equal((await info(h, 'w'))['virtual-size'], 3 * GiB, 'its first attach grows the image');
  await checkClean(t, h, 'w', 'a larger volume from a smaller snapshot');
  t.notMatch(await qemuIo(h, 'w', 'read -P 0xab 0 1M', 'read -P 0xac 60M 1M'), /Pattern verification failed|error/i, 'with the snapshot data');
  t.equal((await cli(h, 'detach', 'w')).code, 0);

  // The API: a bad size is invalid; an unknown volume is NOT_FOUND.
  await t.rejects(call(socket(h), 'POST', '/v1/volumes/v/resize', { size: true }), { code: 'INVALID_ARGUMENT' });
  await t.rejects(call(socket(h), 'POST', '/v1/volumes/nope/resize', { size: '1G' }), { code: 'NOT_FOUND' });
  await kill(h, 'SIGTERM');
});

t.test('a volume a VM has open grows through QMP block_resize', async (t) => {
  const h = await makeHost(t, 'host-qmp-resize');
  await serve(h);
  t.equal((await cli(h, 'volume', 'create', 'vm', '--size', '64M', '--cluster-size', '4K')).code, 0);
  const islandQmp = join(h.dataDir, 'island-qmp.sock');
  t.equal((await cli(h, 'attach', 'vm', '--qmp', islandQmp)).code, 0);
  const q = await TestQemu.start(h.dataDir, image(h, 'vm'), { directIo: true, islandQmp });
  t.teardown(() => q.kill());
  await q.qemuIo('write -P 0x5a 0 1M');
  const r = (await cliJson(h, 'volume', 'resize', 'vm', '--size', '1200M')) as { resize: { how: string; to: number } };
  t.equal(r.resize.how, 'block_resize', 'open by a VM with a QMP socket: block_resize');
  const nodes = (await q.cmd('query-named-block-nodes', { flat: true })) as { 'node-name': string; image: { 'virtual-size': number } }[];
  t.equal(nodes.find((n) => n['node-name'] === 'd0')?.image['virtual-size'], 1200 * MiB, 'QEMU sees the new size');
  await q.qemuIo('write -P 0x5b 1100M 1M');
  await q.quit();
  // QEMU's shutdown takes a final snapshot; wait for it before checking the file.
  await waitFor('the snapshot after QEMU quit', async () => ((await cliJson(h, 'snapshot', 'list', 'vm')).snapshots as unknown[]).length === 1, 60_000);
  t.equal((await info(h, 'vm'))['virtual-size'], 1200 * MiB, 'the image on the mount has the new size');
  await checkClean(t, h, 'vm', 'grown under a running VM');
  t.notMatch(await qemuIo(h, 'vm', 'read -P 0x5a 0 1M', 'read -P 0x5b 1100M 1M'), /Pattern verification failed|error/i, 'data before and after the resize');
  t.equal((await record(h, 'vm')).virtualSize, 1200 * MiB, 'the record follows');
  t.equal((await cli(h, 'detach', 'vm')).code, 0);
  await kill(h, 'SIGTERM');
});

t.test('a volume whose local copy is not served is not resized (it stays this host\'s)', async (t) => {
  const h = await makeHost(t, 'host-unopened');
  await serve(h);
  t.equal((await cli(h, 'volume', 'create', 'u', '--size', '16M')).code, 0);
  t.equal((await cli(h, 'attach', 'u')).code, 0);
  await kill(h, 'SIGKILL');
  await writeFile(join(h.dataDir, 'volumes', 'u', 'state'), Buffer.alloc(4096, 0x5a));
  await serve(h);
  const st = (await cliJson(h, 'status')) as { unopened: { name: string }[] };
  t.same(st.unopened.map((u) => u.name), ['u'], 'its local copy is not served');
  const before = await record(h, 'u');
  const r = await cli(h, 'volume', 'resize', 'u', '--size', '32M');
  t.equal(r.code, 1);
  t.match(r.stderr, /BUSY.*not served/, 'refused, saying why');
  const after = await record(h, 'u');
  t.same({ size: after.virtualSize, generation: after.generation, status: after.status }, { size: before.virtualSize, generation: before.generation, status: before.status }, 'the record and the generation are unchanged');
  await kill(h, 'SIGTERM');
});
