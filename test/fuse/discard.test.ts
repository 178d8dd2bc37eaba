/**
 * QEMU's discard and write-zeroes reach island as FALLOCATE (PUNCH_HOLE, ZERO_RANGE) on the
 * volume's file, which the write path treats as a write: the punched clusters are changed
 * (dirty), so the next snapshot has them as zero clusters (holes: no blob, nothing stored),
 * and a restore on another host reads zeros there, through qcow2 and in the raw image. A
 * punch on a restored cluster that was never fetched makes it present (zero): the fill does
 * not bring the base's bytes back. Run with ISLAND_WRITE_PATH=typescript for the other write
 * path; on the fuse-native transport discards do not reach island at all (its binding has no
 * fallocate), which the test checks instead.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { cli, cliJson, image, makeHost, run, serve } from '../helpers/daemon.js';

const MiB = 2 ** 20;

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
  offset?: number;
}

/** Where the guest range [from, from+len) lies in the image file (qemu-img map): host offsets. */
async function hostRanges(file: string, from: number, len: number): Promise<[number, number][]> {
  const map = JSON.parse((await run('qemu-img', ['map', '--output=json', file])).stdout) as MapEntry[];
  const out: [number, number][] = [];
  for (const e of map) {
    if (!e.data || e.offset === undefined) continue;
    const a = Math.max(e.start, from);
    const b = Math.min(e.start + e.length, from + len);
    if (a < b) out.push([e.offset + (a - e.start), b - a]);
  }
  return out;
}

/** Clusters of `size` wholly inside the ranges. */
function wholeClusters(ranges: [number, number][], size: number): number {
  let n = 0;
  for (const [off, len] of ranges) n += Math.max(0, Math.floor((off + len) / size) - Math.ceil(off / size));
  return n;
}

async function io(args: string[]): Promise<string> {
  const r = await run('qemu-io', args);
  return r.stdout + r.stderr;
}

interface SnapshotOut {
  id: string;
  zeroClusters: number;
  changedClusters: number;
}

async function snapshot(h: Parameters<typeof cliJson>[0]): Promise<SnapshotOut> {
  return ((await cliJson(h, 'snapshot', 'create', 'trim')) as unknown as { snapshots: SnapshotOut[] }).snapshots[0];
}

if (!existsSync('/usr/bin/qemu-io') || !existsSync('/dev/fuse')) {
  t.skip('QEMU or /dev/fuse missing');
} else if (process.env.ISLAND_FUSE === 'fuse-native') {
  // The fuse-native binding (libfuse 2) has no fallocate operation: the kernel answers
  // QEMU's FALLOCATE with EOPNOTSUPP itself and discards never reach island (docs/fuse.md).
  t.test('on fuse-native a discard does not reach island and changes nothing', async (t) => {
    const h = await makeHost(t, 'trim-fn');
    await serve(h);
    await cliJson(h, 'volume', 'create', 'trim', '--size', '1G');
    await cliJson(h, 'attach', 'trim');
    const f = image(h, 'trim');
    await io(['-t', 'none', '-c', 'write -P 0x77 0 2M', '-c', 'flush', f]);
    const [off, len] = (await hostRanges(f, 0, 2 * MiB))[0];
    await io(['-f', 'raw', '-d', 'unmap', '-t', 'none', '-c', `discard ${off} ${len}`, f]).catch(() => '');
    t.notMatch(await io(['-f', 'raw', '-c', `read -P 0x77 ${off} ${len}`, f]), /verification failed/, 'the data is still there');
  });
} else {
  t.test('discard and write-zeroes from QEMU are zero in a restore elsewhere and cost nothing in the store', async (t) => {
    const store = await mkdtemp(join(tmpdir(), 'island-discard-store-'));
    t.teardown(() => rm(store, { recursive: true, force: true }));
    const a = await makeHost(t, 'trim-a', store);
    const b = await makeHost(t, 'trim-b', store);
    await serve(a);
    await serve(b);
    await cliJson(a, 'volume', 'create', 'trim', '--size', '1G', '--cluster-size', '64K');
    await cliJson(a, 'attach', 'trim');
    const f = image(a, 'trim');
    t.notMatch(await io(['-t', 'none', '-c', 'write -P 0x77 0 12M', '-c', 'flush', f]), /error|fail/i, 'data written');
    const s1 = await snapshot(a);

    // Where the guest ranges lie in the image, before qcow2 frees them.
    const discarded = await hostRanges(f, 0, 2 * MiB);
    const zeroed = await hostRanges(f, 4 * MiB, 2 * MiB);
    const rawZero = await hostRanges(f, 8 * MiB, MiB);
    const later = await hostRanges(f, 10 * MiB, 2 * MiB);
    t.ok(discarded.length > 0 && zeroed.length > 0 && rawZero.length > 0 && later.length > 0, 'the ranges are allocated in the image');

    // qcow2 discard and write-zeroes with unmap: qcow2 frees the clusters and, with
    // discard=unmap, punches them in the file (FALLOCATE PUNCH_HOLE).
    const q = await io(['-d', 'unmap', '-t', 'none', '-c', 'discard 0 2M', '-c', 'write -z -u 4M 2M', '-c', 'flush', f]);
    t.notMatch(q, /error|fail/i, `qemu-io discard and write -z: ${q.trim()}`);
    // Write-zeroes on the file itself (FALLOCATE ZERO_RANGE, QEMU's write-zeroes on a raw file).
    const [zoff, zlen] = rawZero[0];
    const r = await io(['-f', 'raw', '-t', 'none', '-c', `write -z ${zoff} ${zlen}`, '-c', 'flush', f]);
    t.notMatch(r, /error|fail/i, `raw write -z: ${r.trim()}`);
    t.match((await run('qemu-img', ['check', f])).stdout, /No errors were found/, 'the image stays a valid qcow2');
    for (const [off, len] of [...discarded, ...zeroed, ...rawZero]) {
      t.notMatch(await io(['-f', 'raw', '-c', `read -P 0 ${off} ${len}`, f]), /verification failed/, `file bytes ${off}+${len} read zero here`);
    }

    const s2 = await snapshot(a);
    const punched = wholeClusters([...discarded, ...zeroed, ...rawZero], 65536);
    t.ok(punched >= 32, `at least 32 whole clusters were punched (${punched})`);
    t.ok(s2.zeroClusters >= punched, `the snapshot after them has them as changed zero clusters, stored as holes (${s2.zeroClusters}; the first had ${s1.zeroClusters})`);
    t.ok(s2.changedClusters >= punched, 'they count as changed');
    t.equal((await cli(a, 'detach', 'trim')).code, 0, 'detached from a');

    // Another host restores the volume: lazily, with no background fill, so the last part
    // is still in the store when it is punched there.
    await cliJson(b, 'attach', 'trim', '--no-fill');
    const g = image(b, 'trim');
    for (const [p, off, len] of [['0', '0', '2M'], ['0', '4M', '2M'], ['0', '8M', '1M'], ['0x77', '2M', '2M'], ['0x77', '6M', '2M'], ['0x77', '9M', '1M']]) {
      t.notMatch(await io(['-c', `read -P ${p} ${off} ${len}`, g]), /verification failed|error/i, `guest ${off}+${len} reads ${p} on b`);
    }
    for (const [off, len] of [...discarded, ...zeroed, ...rawZero]) {
      t.notMatch(await io(['-f', 'raw', '-c', `read -P 0 ${off} ${len}`, g]), /verification failed/, `file bytes ${off}+${len} are zero in b's restore`);
    }
    // A punch over clusters b never fetched: they become present and zero, and stay so.
    const [loff, llen] = later[0];
    t.notMatch(await io(['-f', 'raw', '-d', 'unmap', '-t', 'none', '-c', `discard ${loff} ${llen}`, '-c', 'flush', g]), /error|fail/i, 'raw discard of unfetched clusters');
    t.notMatch(await io(['-f', 'raw', '-c', `read -P 0 ${loff} ${llen}`, g]), /verification failed/, 'they read zero');
    const s3 = await snapshot(b);
    t.ok(s3.zeroClusters >= wholeClusters([[loff, llen]], 65536), `and are zero clusters of the next snapshot (${s3.zeroClusters})`);
    t.equal((await cli(b, 'detach', 'trim')).code, 0, 'detached from b');
    await cliJson(a, 'attach', 'trim');
    t.notMatch(await io(['-f', 'raw', '-c', `read -P 0 ${loff} ${llen}`, f]), /verification failed/, 'a restore of that snapshot reads them zero');
    t.equal((await cli(a, 'detach', 'trim')).code, 0);
  });
}
