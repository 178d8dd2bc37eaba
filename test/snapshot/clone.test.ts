/**
 * Volumes created from another volume's snapshot, on a real Swift: the new volume holds the
 * snapshot's image at once (restored lazily, filled behind), its first snapshot is
 * incremental on the source's tree, the source is pinned until then, and once it has its
 * own snapshot the clone outlives the source snapshot and the source volume through GC.
 */
import { join } from 'node:path';
import t from 'tap';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { cli, cliJson, image, makeHost, run, serve, useS3 } from '../helpers/daemon.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`clone tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  t.test('volume create --from: instant, incremental, and independent of its source once snapshotted', async (t) => {
    const bucket = uniqueBucket('clone');
    const h = await makeHost(t, 'clone-host');
    h.env = { ISLAND_GC_GRACE: '0', ISLAND_TEST_SWITCHES: '1' };
    await useS3(h, swift, bucket);
    await serve(h);
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    const repo = new Repository(store, { host: 'checker' });
    const exportOf = async (id: string, file: string): Promise<string> => {
      const m = await findSnapshot(repo, id);
      const out = join(h.dataDir, file);
      await exportSnapshot(repo, m as NonNullable<typeof m>, out);
      return out;
    };

    await cliJson(h, 'volume', 'create', 'golden', '--size', '3G');
    await cliJson(h, 'attach', 'golden');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x51 0 8M', '-c', 'write -P 0x52 2G 1M', image(h, 'golden')]);
    const s1 = ((await cliJson(h, 'snapshot', 'create', 'golden')).snapshots as { id: string }[])[0]?.id as string;
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x53 0 1M', image(h, 'golden')]);
    await cliJson(h, 'snapshot', 'create', 'golden');

    // Bad input first.
    const unknown = await cli(h, 'volume', 'create', 'nope', '--from', '01J0000000000000000000000Z');
    t.match(unknown.stderr, /NOT_FOUND/, `an unknown snapshot: ${unknown.stderr.trim()}`);
    const malformed = await cli(h, 'volume', 'create', 'nope', '--from', 'not-a-snapshot');
    t.equal(malformed.code, 2, `a malformed id is invalid input: ${malformed.stderr.trim()}`);
    const sized = await cli(h, 'volume', 'create', 'nope', '--from', s1, '--size', '2G');
    t.match(sized.stderr, /INVALID_ARGUMENT.*at least/, 'a size below the image\'s is refused (a larger one is allowed: test/daemon/resize.test.ts)');

    const v = await cliJson(h, 'volume', 'create', 'clone', '--from', s1);
    t.equal(v.virtualSize, 3 * 1024 ** 3, 'the size comes from the snapshot\'s image');
    t.same(v.source, { volume: 'golden', id: s1 }, 'the record names its source');
    const refused = await cli(h, 'snapshot', 'delete', s1);
    t.match(refused.stderr, /PINNED.*clone/, 'the source snapshot cannot be deleted while the clone has no snapshot of its own');

    await cliJson(h, 'attach', 'clone');
    const src = await exportOf(s1, 's1.qcow2');
    t.match((await run('qemu-img', ['compare', src, image(h, 'clone')])).stdout, /Images are identical/, 'the clone reads exactly the source snapshot');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x61 1G 64k', image(h, 'clone')]);
    const c1 = ((await cliJson(h, 'snapshot', 'create', 'clone')).snapshots as { id: string; parent: string | null; changedClusters: number; uploadedBlobs: number }[])[0];
    t.equal(c1?.parent, null, 'the clone\'s first snapshot starts its own chain');
    t.ok((c1?.changedClusters ?? 99) <= 6, `and is incremental on the source's tree (${c1?.changedClusters} clusters changed)`);
    const m1 = await findSnapshot(repo, c1?.id as string);
    t.same(m1?.base, { volume: 'golden', id: s1 }, 'the manifest records its base');

    // The source snapshot and the source volume go; GC runs; the clone's snapshot is whole.
    const del = await cliJson(h, 'snapshot', 'delete', s1);
    t.same(del.deleted, [s1], 'the clone pin was released by the clone\'s first snapshot');
    await cliJson(h, 'detach', 'golden');
    // The volume first: while it exists, the snapshot it restores from cannot be deleted.
    await cliJson(h, 'volume', 'delete', 'golden');
    for (const s of (await cliJson(h, 'snapshot', 'list', 'golden')).snapshots as { id: string; deleted: boolean }[]) if (!s.deleted) await cliJson(h, 'snapshot', 'delete', s.id);
    const gc = await cliJson(h, 'gc');
    t.ok((gc.releasedSnapshots as string[]).includes(s1), 'GC collected the source snapshot');
    const after = await exportOf(c1?.id as string, 'c1.qcow2');
    t.match((await run('qemu-img', ['compare', after, image(h, 'clone')])).stdout, /Images are identical/, 'the clone\'s snapshot restores exactly after its source is gone');
    const rd = await run('qemu-io', ['-c', 'read -P 0x51 1M 7M', '-c', 'read -P 0x52 2G 1M', '-c', 'read -P 0x61 1G 64k', after]);
    t.notMatch(rd.stdout, /Pattern verification failed/, 'with the source\'s data and the clone\'s own write');
  });
}
