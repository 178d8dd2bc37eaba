/**
 * Restore on attach across hosts, on a real Swift: a second daemon attaches a volume the
 * first detached and reads the latest snapshot's content exactly, fetched on first touch;
 * its writes land in its next, incremental snapshot. A corrupt blob fails only the read
 * that needs it, with EIO, and the daemon keeps serving.
 */
import { join } from 'node:path';
import t from 'tap';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { cliJson, image, log, makeHost, run, serve, useS3 } from '../helpers/daemon.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`restore tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  t.test('another host attaches the latest snapshot and reads it exactly, lazily', async (t) => {
    const bucket = uniqueBucket('restore');
    const a = await makeHost(t, 'region-a-1');
    const b = await makeHost(t, 'region-a-2');
    await useS3(a, swift, bucket);
    await useS3(b, swift, bucket);
    await serve(a);
    await serve(b);
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    const repo = new Repository(store, { host: 'checker' });

    await cliJson(a, 'volume', 'create', 'mover', '--size', '16G');
    await cliJson(a, 'attach', 'mover');
    const fa = image(a, 'mover');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0xa1 0 4M', '-c', 'write -P 0xa2 9G 2M', '-c', 'write -P 0xa3 15G 64k', fa]);
    await cliJson(a, 'detach', 'mover');
    const finalId = ((await cliJson(a, 'snapshot', 'list', 'mover')).snapshots as { id: string }[]).at(-1)?.id as string;

    const attached = await cliJson(b, 'attach', 'mover');
    t.equal(attached.host, 'region-a-2');
    const fb = image(b, 'mover');
    const status = (await cliJson(b, 'status')).volumes as { dirtyClusters: number }[];
    t.equal(status[0]?.dirtyClusters, 0, 'nothing is copied or marked at attach');
    const r = await run('qemu-io', ['-c', 'read -P 0xa1 0 4M', '-c', 'read -P 0xa2 9G 2M', '-c', 'read -P 0xa3 15G 64k', '-c', 'read -P 0 12G 1M', fb]);
    t.notMatch(r.stdout, /Pattern verification failed/, 'every pattern host A wrote reads back on host B');
    const out = join(b.dataDir, 'final.qcow2');
    const m = await findSnapshot(repo, finalId);
    await exportSnapshot(repo, m as NonNullable<typeof m>, out);
    t.match((await run('qemu-img', ['compare', out, fb])).stdout, /Images are identical/, 'qemu-img compare: the restored file equals the snapshot');

    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0xb1 2M 64k', fb]);
    const next = ((await cliJson(b, 'snapshot', 'create', 'mover')).snapshots as { id: string; changedClusters: number; parent: string }[])[0];
    t.equal(next?.parent, finalId, 'the next snapshot is incremental on the restored one');
    t.ok((next?.changedClusters ?? 99) <= 2, `only the cluster written on host B changed (${next?.changedClusters})`);
    const out2 = join(b.dataDir, 'next.qcow2');
    const m2 = await findSnapshot(repo, next?.id as string);
    await exportSnapshot(repo, m2 as NonNullable<typeof m2>, out2);
    t.match((await run('qemu-img', ['compare', out2, fb])).stdout, /Images are identical/, 'and it equals the image on host B');
  });

  t.test('a corrupt blob fails only its read, with EIO; everything else keeps serving', async (t) => {
    const bucket = uniqueBucket('corrupt');
    const a = await makeHost(t, 'writer-host');
    const b = await makeHost(t, 'reader-host');
    await useS3(a, swift, bucket);
    await useS3(b, swift, bucket);
    await serve(a);
    await serve(b);
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    await cliJson(a, 'volume', 'create', 'bad', '--size', '4G');
    await cliJson(a, 'attach', 'bad');
    await run('qemu-io', ['-c', 'write -P 0xc1 0 1M', '-c', 'write -P 0xc2 3G 64k', image(a, 'bad')]);
    await cliJson(a, 'detach', 'bad');
    // Flip one byte in the middle of every data pack: the blobs there no longer verify.
    const packs = (await store.list('data/', {})).items.filter((o) => o.key.startsWith('data/'));
    t.ok(packs.length > 0, `${packs.length} data pack(s) to damage`);
    for (const p of packs) {
      const bytes = await store.get(p.key);
      const i = 200; // inside the first blob frame's payload
      bytes[i] = (bytes[i] as number) ^ 0xff;
      await store.put(p.key, bytes);
    }
    await cliJson(b, 'attach', 'bad');
    const r = await run('qemu-io', ['-c', 'read 0 64k', image(b, 'bad')]).then((x) => x.stdout + x.stderr, (e: { stdout?: string; stderr?: string }) => (e.stdout ?? '') + (e.stderr ?? ''));
    t.match(r, /Input\/output error|I\/O error|EIO|Could not open/i, 'the read of a corrupt cluster fails with EIO');
    t.ok(b.child && b.child.exitCode === null, 'the daemon is still running');
    t.equal(((await cliJson(b, 'status')).volumes as unknown[]).length, 1, 'and still answers');
    t.match(await log(b), /volume bad cluster 0: pack [0-9a-f]{64} offset \d+/, 'the log names volume, cluster, pack and offset');
  });
}
