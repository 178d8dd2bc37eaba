/**
 * Background fill of a restored volume, on a real Swift and a real FUSE mount: it brings
 * every cluster local (then the volume reads with the store gone, and the restore pin is
 * released), never overwrites what the guest wrote meanwhile, resumes after a daemon
 * SIGKILL, and reports its progress in island status.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { cli, cliJson, image, kill, makeHost, run, serve, useS3, waitFor, type Host } from '../helpers/daemon.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

interface FillOut {
  state: string;
  totalClusters: number;
  doneClusters: number;
  bytesFetched: number;
  failedClusters: number;
}

async function fillOf(h: Host, name: string): Promise<FillOut | null> {
  const s = (await cliJson(h, 'status')).volumes as { name: string; fill: FillOut | null }[];
  return s.find((v) => v.name === name)?.fill ?? null;
}

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`fill tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  /** Host A writes a volume with data spread over it and detaches (final snapshot). */
  async function source(t: Test, bucket: string, name: string): Promise<{ repo: Repository; snapshot: string; exported: string }> {
    const a = await makeHost(t, `${name}-a`);
    await useS3(a, swift, bucket);
    await serve(a);
    await cliJson(a, 'volume', 'create', name, '--size', '2G');
    await cliJson(a, 'attach', name);
    // Incompressible data (so the fill has bytes to move), 1 MiB every 160 MiB.
    const writes = [];
    for (let i = 0; i < 12; i++) {
      const src = join(a.dataDir, `random-${i}.bin`);
      await writeFile(src, randomBytes(1024 * 1024));
      writes.push('-c', `write -s ${src} ${i * 160}M 1M`);
    }
    await run('qemu-io', ['-t', 'none', ...writes, image(a, name)]);
    await cliJson(a, 'detach', name);
    const snapshot = ((await cliJson(a, 'snapshot', 'list', name)).snapshots as { id: string }[]).at(-1)?.id as string;
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    const repo = new Repository(store, { host: 'checker' });
    const exported = join(a.dataDir, `${name}-source.qcow2`);
    const m = await findSnapshot(repo, snapshot);
    await exportSnapshot(repo, m as NonNullable<typeof m>, exported);
    return { repo, snapshot, exported };
  }

  t.test('the fill brings every cluster local, releases the pin, and the volume then reads without the store', async (t) => {
    const bucket = uniqueBucket('fill');
    const { repo, snapshot, exported } = await source(t, bucket, 'filled');
    const b = await makeHost(t, 'filled-b');
    await useS3(b, swift, bucket);
    await serve(b);
    const r = await cli(b, 'attach', 'filled', '--wait-filled');
    t.equal(r.code, 0, `attach --wait-filled succeeds: ${r.stdout.trim()} ${r.stderr.trim()}`);
    t.match(r.stdout, /filled: \d+ clusters/, 'it says what it filled');
    const fill = await fillOf(b, 'filled');
    t.equal(fill?.state, 'done');
    t.ok((fill?.totalClusters ?? 0) >= 16, `every data cluster of the snapshot was counted (${fill?.totalClusters})`);
    t.equal(fill?.doneClusters, fill?.totalClusters, 'and is local');
    t.same(await repo.listPins(snapshot), [], 'the restore pin on the base is released once the volume is filled');

    // The store goes away: the filled volume reads (and compares) exactly as before.
    await kill(b, 'SIGTERM');
    await useS3(b, { ...swift, endpoint: 'http://127.0.0.1:9' }, bucket);
    await serve(b);
    t.match((await run('qemu-img', ['compare', exported, image(b, 'filled')])).stdout, /Images are identical/, 'qemu-img compare with the store unreachable: identical');
    t.equal((await fillOf(b, 'filled'))?.state, 'done', 'a restart remembers the fill is complete (no rescan of the store)');
  });

  t.test('guest writes during the fill are kept; a SIGKILL mid-fill resumes where it stopped', async (t) => {
    const bucket = uniqueBucket('fillrace');
    const { repo, exported } = await source(t, bucket, 'racing');
    const b = await makeHost(t, 'racing-b');
    await useS3(b, swift, bucket);
    await serve(b);
    // Slow the fill down so the guest's writes and the kill land in the middle of it.
    await cliJson(b, 'attach', 'racing', '--fill-rate', '1M');
    const f = image(b, 'racing');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0xee 1600M 1M', '-c', 'write -P 0xef 1760M 64k', f]);
    const before = await fillOf(b, 'racing');
    t.equal(before?.state, 'filling', `the fill is still running (${before?.doneClusters}/${before?.totalClusters})`);
    const dirty = ((await cliJson(b, 'status')).volumes as { dirtyClusters: number }[])[0]?.dirtyClusters ?? -1;
    t.ok(dirty >= 17 && dirty <= 40, `only the guest's writes and their qcow2 metadata are dirty, not what the fill brought (${dirty} clusters)`);
    await kill(b, 'SIGKILL');
    await serve(b);
    await waitFor('the fill resumed after the restart to complete', async () => (await fillOf(b, 'racing'))?.state === 'done', 120_000);
    // What the volume must hold: the source snapshot plus the guest's writes.
    const expected = join(b.dataDir, 'expected.qcow2');
    await copyFile(exported, expected);
    await run('qemu-io', ['-c', 'write -P 0xee 1600M 1M', '-c', 'write -P 0xef 1760M 64k', expected]);
    t.match((await run('qemu-img', ['compare', expected, f])).stdout, /Images are identical/, 'the guest writes survived the fill and the kill; the rest is the snapshot');
    const snap = ((await cliJson(b, 'snapshot', 'create', 'racing')).snapshots as { id: string; changedClusters: number }[])[0];
    // After the SIGKILL the volume rescans the coarse regions its intent bitmap marks, so
    // the snapshot may count more clusters than were written; its content is what counts.
    t.ok((snap?.changedClusters ?? 0) >= 17, `the next snapshot holds the guest's writes (${snap?.changedClusters} clusters)`);
    const out = join(b.dataDir, 'after.qcow2');
    const m = await findSnapshot(repo, snap?.id as string);
    await exportSnapshot(repo, m as NonNullable<typeof m>, out);
    t.match((await run('qemu-img', ['compare', out, f])).stdout, /Images are identical/, 'the new snapshot equals the local image');
  });
}
