/**
 * NativeVolume (the write path in C) on the cases a seeded stream rarely reaches: misses of a
 * restored volume (a sealed cluster that is not local, a fetch that fails, a whole-cluster
 * write racing the fetch of its cluster), I/O after close, and a reopen after a clean close.
 */
import t, { type Test } from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { codeOf } from '../../src/errors.js';
import { NativeVolume, nativeWritePathAvailable } from '../../src/volume/native-volume.js';
import type { PresentFetcher } from '../../src/volume/setup.js';
import { Rng } from '../../src/util/random.js';
import { createVolume, openVolume } from '../../src/volume/write-path.js';
import type { FuseVolume } from '../../src/fuse/adapter.js';

const C = 4096;
const BASE = '01HZY5J8X3M6QK2V9T4N7RBCD0';
const SNAP = '01HZY5J8X3M6QK2V9T4N7RBCD1';
const skip = nativeWritePathAvailable() ? false : 'the native addon is not built';

async function codeOfRejection(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return codeOf(err);
  }
  return undefined;
}

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'island-native-volume-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A fetcher over `base` that can be told to fail or to hold its answers until released. */
function controlledFetcher(base: Buffer): PresentFetcher & { failNext: number; hold: Promise<void> | null; calls: Array<[number, number]> } {
  const f = {
    failNext: 0,
    hold: null as Promise<void> | null,
    calls: [] as Array<[number, number]>,
    async fetch(first: number, count: number): Promise<Buffer> {
      f.calls.push([first, count]);
      if (f.hold !== null) await f.hold;
      if (f.failNext > 0) {
        f.failNext--;
        throw new Error('the store is unreachable');
      }
      return Buffer.from(base.subarray(first * C, Math.min(base.length, (first + count) * C)));
    },
  };
  return f;
}

async function restored(t: Test, base: Buffer, fetcher: PresentFetcher): Promise<NativeVolume> {
  const dir = await tempDir(t);
  const v = await NativeVolume.create(join(dir, 'v'), { name: 'v', virtualSize: 1024 * 1024, clusterSize: C, regionSize: 16 * C, generation: 1, flushIntervalMs: 0, baseSnapshot: BASE, baseLength: base.length, fetcher });
  t.teardown(() => v.close());
  return v;
}

t.test('a read of missing clusters parks until they are fetched and installed', { skip }, async (t) => {
  const base = new Rng(1).bytes(32 * C);
  const fetcher = controlledFetcher(base);
  const v = await restored(t, base, fetcher);
  const buf = Buffer.alloc(3 * C);
  t.equal(await v.read(buf, 5 * C + 100), 3 * C);
  t.ok(buf.equals(base.subarray(5 * C + 100, 8 * C + 100)), 'base content');
  t.ok(v.isPresent(5) && v.isPresent(8), 'the clusters are present now');
  t.equal(v.stats().fetchedClusters, 4);
});

t.test('a failed fetch fails that read only (EIO); the next read fetches again', { skip }, async (t) => {
  const base = new Rng(2).bytes(16 * C);
  const fetcher = controlledFetcher(base);
  const v = await restored(t, base, fetcher);
  fetcher.failNext = 1;
  const buf = Buffer.alloc(C);
  t.equal(await codeOfRejection(v.read(buf, 3 * C)), 'LOCAL_IO', 'the read fails');
  t.notOk(v.isPresent(3));
  t.equal(await v.read(buf, 3 * C), C);
  t.ok(buf.equals(base.subarray(3 * C, 4 * C)));
});

t.test('a whole-cluster write wins over the fetch of its cluster that lands later', { skip }, async (t) => {
  const base = new Rng(3).bytes(16 * C);
  const fetcher = controlledFetcher(base);
  const v = await restored(t, base, fetcher);
  let release!: () => void;
  fetcher.hold = new Promise<void>((r) => (release = r));
  const reading = v.read(Buffer.alloc(10), 4 * C); // parks; the fetch of cluster 4 is held
  while (fetcher.calls.length === 0) await new Promise((r) => setImmediate(r));
  const mine = Buffer.alloc(C, 0x5a);
  await v.write(mine, 4 * C); // the whole cluster: present at once, no fetch needed
  release();
  await reading;
  const buf = Buffer.alloc(C);
  await v.read(buf, 4 * C);
  t.ok(buf.equals(mine), 'the guest write is kept');
  // A partial write over a missing cluster brings the base around it first.
  await v.write(Buffer.from('abc'), 9 * C + 10);
  await v.read(buf, 9 * C);
  const want = Buffer.from(base.subarray(9 * C, 10 * C));
  want.write('abc', 10);
  t.ok(buf.equals(want), 'base content around a partial write');
});

t.test('a sealed cluster that is not local is fetched for readSealed', { skip }, async (t) => {
  const base = new Rng(4).bytes(8 * C);
  const fetcher = controlledFetcher(base);
  const v = await restored(t, base, fetcher);
  await v.markAllDirty(); // the committed snapshot is forgotten: every cluster is a change
  t.equal(v.committedSnapshot, null);
  const s = await v.seal();
  t.equal(s.clusterCount, 8);
  const got = await s.readSealed(6);
  t.ok(got.equals(base.subarray(6 * C, 7 * C)), 'base content of a missing sealed cluster');
  for (const c of s.clusters()) s.markUploaded(c);
  await s.complete(SNAP);
  t.equal(v.committedSnapshot, SNAP);
  t.equal(v.stats().sealedClusters, 0);
});

t.test('closed: I/O is refused; reopened: the data and a clean recovery', { skip }, async (t) => {
  const dir = await tempDir(t);
  const opts = { name: 'v', virtualSize: 1024 * 1024, clusterSize: C, regionSize: 16 * C, generation: 1, flushIntervalMs: 0 };
  const v = await NativeVolume.create(join(dir, 'v'), opts);
  const data = new Rng(5).bytes(3 * C + 17);
  await v.write(data, 2 * C + 5);
  await v.write(Buffer.alloc(2 * C), 8 * C); // whole clusters of zeros: holes
  await v.close();
  t.equal(await codeOfRejection(v.write(data, 0)), 'INVALID_ARGUMENT', 'a write after close is refused');
  const again = await NativeVolume.open(join(dir, 'v'), { flushIntervalMs: 0 });
  t.teardown(() => again.close());
  t.ok(again.recovery.clean, 'closed cleanly');
  const buf = Buffer.alloc(data.length);
  await again.read(buf, 2 * C + 5);
  t.ok(buf.equals(data));
  t.ok(again.isDirty(2) && again.isDirty(5) && again.isDirty(8) && again.isDirty(9), 'changes since the create are still dirty');
});

t.test('sequential reads of missing clusters fetch ahead (fed by their misses, as for the native FUSE server)', { skip }, async (t) => {
  const base = new Rng(6).bytes(1024 * C);
  const fetcher = controlledFetcher(base);
  const v = await restored(t, base, fetcher);
  const buf = Buffer.alloc(64 * 1024);
  for (let off = 0; off < 1024 * 1024; off += buf.length) {
    await v.read(buf, off);
    if (!buf.equals(base.subarray(off, off + buf.length))) t.fail(`read at ${off}`);
  }
  // Poll until the read-ahead fetches settle (they are not awaited by the reads).
  const deadline = Date.now() + 10_000;
  while (!v.isPresent(300) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.ok(v.isPresent(300), 'clusters past the last read (255) were fetched ahead of it');
  t.ok(fetcher.calls.some(([, count]) => count > 16), `a fetch larger than one read (${JSON.stringify(fetcher.calls.slice(0, 6))})`);
});

t.test('either write path opens what the other closed', { skip }, async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'v');
  const data = new Rng(7).bytes(5 * C + 3);
  const a = await createVolume(path, { writePath: 'native', name: 'v', virtualSize: 1024 * 1024, clusterSize: C, generation: 1, flushIntervalMs: 0 });
  const served: FuseVolume = a; // what the fuse-native adapter asks of a volume
  await served.write(data, 3 * C + 1);
  await a.close();
  const b = await openVolume(path, { writePath: 'typescript', flushIntervalMs: 0 });
  const buf = Buffer.alloc(data.length);
  await b.read(buf, 3 * C + 1);
  t.ok(buf.equals(data), 'the TypeScript engine reads what the C path wrote');
  t.ok(b.recovery.clean && b.isDirty(3) && b.isDirty(8));
  await b.write(Buffer.alloc(C, 1), 20 * C);
  await b.close();
  const c = await openVolume(path, { writePath: 'native', flushIntervalMs: 0 });
  t.teardown(() => c.close());
  await c.read(buf.subarray(0, C), 20 * C);
  t.ok(buf.subarray(0, C).equals(Buffer.alloc(C, 1)), 'and the other way round');
  t.ok(c.isDirty(20));
  t.equal(await codeOfRejection(openVolume(path, { writePath: 'other' as 'native' })), 'INVALID_ARGUMENT');
});
