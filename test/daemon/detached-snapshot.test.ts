/**
 * snapshot create on a volume attached nowhere: a new snapshot sharing the tree of the one
 * the volume restores from (nothing uploaded), which the next attach (any host) restores;
 * for a volume created from a snapshot it is the first own snapshot and frees the source.
 */
import t from 'tap';
import { cli, cliJson, image, kill, makeHost, run, serve } from '../helpers/daemon.js';

interface Snap {
  id: string;
  parent: string | null;
  uploadedBytes: number;
  changedClusters: number;
}

t.test('a detached volume is snapshotted without moving data', async (t) => {
  const a = await makeHost(t, 'host-a');
  const b = await makeHost(t, 'host-b', a.storeDir);
  await serve(a);
  await serve(b);
  t.equal((await cli(a, 'volume', 'create', 'vol', '--size', '8M')).code, 0);

  const empty = await cli(a, 'snapshot', 'create', 'vol', '--json');
  t.equal((JSON.parse(empty.stdout) as { error: { code: string } }).error.code, 'NOT_FOUND', 'a volume that never held data has nothing to snapshot');

  t.equal((await cli(a, 'attach', 'vol')).code, 0);
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 256k', image(a, 'vol')]);
  t.equal((await cli(a, 'detach', 'vol')).code, 0);
  const final = ((await cliJson(a, 'snapshot', 'list', 'vol')) as { snapshots: Snap[] }).snapshots.at(-1) as Snap;

  const r = (await cliJson(b, 'snapshot', 'create', 'vol')) as { snapshots: Snap[] };
  const s = r.snapshots[0] as Snap;
  t.equal(s.parent, final.id, 'its parent is the snapshot the volume restored from');
  t.equal(s.uploadedBytes, 0, 'nothing uploaded');
  t.equal(s.changedClusters, 0, 'nothing changed');
  const v = (await cliJson(a, 'volume', 'show', 'vol')) as { status: string };
  t.equal(v.status, 'available', 'the volume is released again');

  // The new snapshot is the head: host B restores it, with the data written on host A.
  t.equal((await cli(b, 'attach', 'vol')).code, 0);
  const read = await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 1M 256k', image(b, 'vol')]);
  t.match(read.stdout, /read 262144\/262144/, 'the data is there');
  // While attached on B, a detached snapshot from A is refused naming B.
  const busy = await cli(a, 'snapshot', 'create', 'vol', '--json');
  t.match(JSON.parse(busy.stdout), { error: { code: 'ATTACHED_ELSEWHERE' } });
  t.equal((await cli(b, 'detach', 'vol')).code, 0);

  // A clone's first snapshot, taken detached, holds what it needs: its source is unpinned.
  t.equal((await cli(a, 'volume', 'create', 'clone', '--from', s.id)).code, 0);
  const pinned = await cli(a, 'snapshot', 'delete', s.id, '--json');
  t.match(JSON.parse(pinned.stdout), { error: { code: 'PINNED' } }, 'the source is pinned by the clone');
  const c = ((await cliJson(a, 'snapshot', 'create', 'clone')) as { snapshots: Snap[] }).snapshots[0] as Snap;
  t.equal(c.parent, null, 'a first own snapshot');
  t.equal((await cli(a, 'snapshot', 'delete', s.id)).code, 0, 'the source can be deleted now');
  t.equal((await cli(a, 'attach', 'clone')).code, 0);
  const back = await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 1M 256k', image(a, 'clone')]);
  t.match(back.stdout, /read 262144\/262144/, 'the clone restores from its own snapshot');
  t.equal((await cli(a, 'detach', 'clone')).code, 0);
  await kill(a, 'SIGTERM');
  await kill(b, 'SIGTERM');
});

t.test('the snapshot a detached volume restores from is not deleted when that would roll it back', async (t) => {
  const h = await makeHost(t, 'host-a');
  await serve(h);
  t.equal((await cli(h, 'volume', 'create', 'vol', '--size', '8M')).code, 0);
  const writeAndDetach = async (pattern: number): Promise<string> => {
    t.equal((await cli(h, 'attach', 'vol')).code, 0);
    await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} 0 64k`, image(h, 'vol')]);
    t.equal((await cli(h, 'detach', 'vol')).code, 0);
    return (((await cliJson(h, 'snapshot', 'list', 'vol')) as { snapshots: Snap[] }).snapshots.at(-1) as Snap).id;
  };
  const f1 = await writeAndDetach(0x11);
  const f2 = await writeAndDetach(0x22);

  const r = await cli(h, 'snapshot', 'delete', f2, '--json');
  const err = (JSON.parse(r.stdout) as { error: { code: string; message: string; details: Record<string, unknown> } }).error;
  t.equal(err.code, 'BUSY', 'the head of a detached volume is not deleted');
  t.match(err.message, /restores from/, 'and the message says why');
  t.same(err.details, { volume: 'vol', snapshot: f2, reason: 'head', fallback: f1 }, 'naming the snapshot it would roll back to');
  t.equal((await cli(h, 'snapshot', 'delete', f1)).code, 0, 'an older snapshot is deleted');

  // A snapshot of the detached volume holds the same image as the one before it: deleting it loses nothing.
  const s3 = (((await cliJson(h, 'snapshot', 'create', 'vol')) as { snapshots: Snap[] }).snapshots[0] as Snap).id;
  t.equal((await cli(h, 'snapshot', 'delete', s3)).code, 0, 'a head sharing the image of the one before it is deleted');
  t.match(JSON.parse((await cli(h, 'snapshot', 'delete', f2, '--json')).stdout), { error: { code: 'BUSY', details: { fallback: null } } }, 'the only snapshot left would roll back to an empty disk');
  t.equal((await cli(h, 'attach', 'vol')).code, 0);
  t.match((await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x22 0 64k', image(h, 'vol')])).stdout, /read 65536\/65536/, 'the volume still restores its newest data');
  // While attached here, the snapshot the next one builds on stays until that next one exists.
  t.match(JSON.parse((await cli(h, 'snapshot', 'delete', f2, '--json')).stdout), { error: { code: 'BUSY', message: /builds on/, details: { reason: 'parent' } } }, 'the parent of an attached volume is not deleted');
  t.equal((await cli(h, 'snapshot', 'create', 'vol')).code, 0);
  t.equal((await cli(h, 'snapshot', 'delete', f2)).code, 0, 'after the next snapshot it is deleted');
  t.equal((await cli(h, 'detach', 'vol')).code, 0);
  // Without a record the volume restores nothing: its snapshots can all go.
  const last = (((await cliJson(h, 'snapshot', 'list', 'vol')) as { snapshots: (Snap & { deleted: boolean })[] }).snapshots.filter((s) => !s.deleted));
  t.equal((await cli(h, 'volume', 'delete', 'vol')).code, 0);
  for (const s of last) t.equal((await cli(h, 'snapshot', 'delete', s.id)).code, 0, 'deleted once the volume is gone');
  await kill(h, 'SIGTERM');
});

t.test('revert a detached volume to one of its snapshots', async (t) => {
  const h = await makeHost(t, 'host-a');
  await serve(h);
  t.equal((await cli(h, 'volume', 'create', 'vol', '--size', '8M')).code, 0);
  t.equal((await cli(h, 'volume', 'create', 'other', '--size', '8M')).code, 0);
  const writeAndDetach = async (pattern: number): Promise<string> => {
    t.equal((await cli(h, 'attach', 'vol')).code, 0);
    await run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} 0 64k`, image(h, 'vol')]);
    t.equal((await cli(h, 'detach', 'vol')).code, 0);
    return (((await cliJson(h, 'snapshot', 'list', 'vol')) as { snapshots: Snap[] }).snapshots.at(-1) as Snap).id;
  };
  const f1 = await writeAndDetach(0x11);
  const f2 = await writeAndDetach(0x22);

  const refused = async (args: string[], code: string, what: string): Promise<void> => {
    const r = await cli(h, ...args, '--json');
    t.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, code, what);
  };
  await refused(['volume', 'revert', 'other', '--to', f1], 'NOT_FOUND', "another volume's snapshot");
  await refused(['volume', 'revert', 'vol', '--to', 'not-an-id'], 'INVALID_ARGUMENT', 'a malformed id');
  await refused(['volume', 'revert', 'nobody', '--to', f1], 'NOT_FOUND', 'an unknown volume');
  t.equal((await cli(h, 'attach', 'vol')).code, 0);
  await refused(['volume', 'revert', 'vol', '--to', f1], 'BUSY', 'an attached volume');
  t.equal((await cli(h, 'detach', 'vol')).code, 0);
  const f3 = (((await cliJson(h, 'snapshot', 'list', 'vol')) as { snapshots: Snap[] }).snapshots.at(-1) as Snap).id;

  const r = (await cliJson(h, 'volume', 'revert', 'vol', '--to', f1)) as { snapshot: Snap; volume: { status: string } };
  t.equal(r.snapshot.parent, f1, 'the new snapshot follows the target');
  t.equal(r.snapshot.uploadedBytes, 0, 'nothing uploaded');
  t.equal(r.volume.status, 'available');
  t.equal((await cli(h, 'attach', 'vol')).code, 0);
  t.match((await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x11 0 64k', image(h, 'vol')])).stdout, /read 65536\/65536/, 'the next attach restores the target\'s data');
  t.equal((await cli(h, 'detach', 'vol')).code, 0);
  const ids = ((await cliJson(h, 'snapshot', 'list', 'vol')) as { snapshots: Snap[] }).snapshots.map((s) => s.id);
  t.ok(ids.includes(f2) && ids.includes(f3), 'the snapshots after the target remain');
  t.equal((await cli(h, 'snapshot', 'delete', f2, f3)).code, 0, 'and can be deleted: the volume no longer restores from them');
  await kill(h, 'SIGTERM');
});
