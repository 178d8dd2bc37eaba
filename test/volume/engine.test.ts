import t, { type Test } from 'tap';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createQcow2Image, parseQcow2Header } from '../../src/format/qcow2.js';
import { Volume, type SealAbandonedEvent } from '../../src/volume/engine.js';
import { MemFs, type MemOp } from '../../src/volume/memfs.js';
import type { LocalFile, LocalFs } from '../../src/volume/files.js';
import { nativeAvailable } from '../../src/volume/native.js';
import { slotOffset } from '../../src/volume/bitmap-page.js';
import { Rng } from '../../src/util/random.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const C = 64 * KiB;
const SNAP = '01HZY5J8X3M6QK2V9T4N7RBCDF';

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'island-engine-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function pattern(len: number, seed: number): Buffer {
  return new Rng(seed).bytes(len);
}

async function readAll(v: Volume): Promise<Buffer> {
  const b = Buffer.alloc(v.length);
  const n = await v.read(b, 0);
  return b.subarray(0, n);
}

/** A LocalFile's methods, bound, so a test can replace some of them. */
function bindFile(f: LocalFile): LocalFile {
  return {
    path: f.path,
    read: (buf, off, len, pos) => f.read(buf, off, len, pos),
    write: (buf, off, len, pos) => f.write(buf, off, len, pos),
    datasync: () => f.datasync(),
    sync: () => f.sync(),
    truncate: (len) => f.truncate(len),
    size: () => f.size(),
    canPunchHoles: () => f.canPunchHoles(),
    punchHole: (pos, len) => f.punchHole(pos, len),
    dataExtents: (start, end) => f.dataExtents(start, end),
    close: () => f.close(),
  };
}

async function memVolume(fs: MemFs, opts: { regionSize?: number; sideLogBudget?: number; clusterSize?: number } = {}): Promise<Volume> {
  return Volume.create('/vols/v', { name: 'v', virtualSize: 64 * MiB, generation: 1, fs, flushIntervalMs: 0, ...opts });
}

t.test('a new volume holds island\'s own qcow2 header, sparse, and all of it is dirty', async (t) => {
  const dir = await tempDir(t);
  const v = await Volume.create(join(dir, 'v'), { name: 'v', virtualSize: 10 * 1024 * MiB, generation: 7, flushIntervalMs: 0 });
  t.teardown(() => v.close());
  const expected = createQcow2Image({ virtualSize: 10 * 1024 * MiB, clusterSize: C });
  t.equal(v.length, expected.length);
  t.same(await readAll(v), expected);
  t.equal(parseQcow2Header(await readAll(v)).virtualSize, 10 * 1024 * MiB);
  t.same([...v.dirtyClusters()], Array.from({ length: expected.length / C }, (_, i) => i));
  t.equal(v.isPresent(12345), true, 'a new volume has every cluster present');
  await t.rejects(Volume.create(join(dir, 'v'), { name: 'v', virtualSize: MiB, generation: 1 }), { code: 'ALREADY_EXISTS' });
  await t.rejects(Volume.create(join(dir, 'w'), { name: 'Bad/Name', virtualSize: MiB, generation: 1 }), { code: 'INVALID_ARGUMENT' });
});

t.test('reads and writes at any offset and length, growth, short reads past the end', async (t) => {
  const dir = await tempDir(t);
  const v = await Volume.create(join(dir, 'v'), { name: 'v', virtualSize: 64 * MiB, generation: 1, flushIntervalMs: 0 });
  t.teardown(() => v.close());
  const model = Buffer.alloc(4 * MiB);
  let len = v.length;
  (await readAll(v)).copy(model);
  const rng = new Rng(1);
  for (let i = 0; i < 200; i++) {
    const off = rng.int(3 * MiB);
    const n = 1 + rng.int(rng.chance(0.5) ? 1000 : 300 * KiB);
    const data = rng.chance(0.2) ? Buffer.alloc(n) : rng.bytes(n);
    t.equal(await v.write(data, off), n) || t.fail('write');
    data.copy(model, off);
    len = Math.max(len, off + n);
  }
  t.equal(v.length, len);
  t.same(await readAll(v), model.subarray(0, len), 'whole image equals the model');
  for (let i = 0; i < 100; i++) {
    const off = rng.int(len + 100 * KiB);
    const buf = Buffer.alloc(1 + rng.int(200 * KiB), 0xaa);
    const n = await v.read(buf, off);
    const expect = Math.max(0, Math.min(buf.length, len - off));
    if (n !== expect || !buf.subarray(0, n).equals(model.subarray(off, off + n))) t.fail(`read ${off}+${buf.length}`);
  }
  t.equal(await v.read(Buffer.alloc(10), len + 5), 0, 'past the end: nothing');
  await t.rejects(v.write(Buffer.alloc(1), -1), { code: 'INVALID_ARGUMENT' });
  await t.rejects(v.write(Buffer.alloc(1), 2 ** 53), { code: 'INVALID_ARGUMENT' });
  await t.rejects(v.write(Buffer.alloc(10), 2 ** 52 - 5), { code: 'TOO_LARGE' });
  t.equal((await stat(join(dir, 'v', 'image.qcow2'))).size, len);
});

t.test('truncate both ways: content, size and dirty clusters', async (t) => {
  const dir = await tempDir(t);
  const v = await Volume.create(join(dir, 'v'), { name: 'v', virtualSize: 64 * MiB, generation: 1, flushIntervalMs: 0 });
  t.teardown(() => v.close());
  await v.write(pattern(10 * C, 2), 10 * C);
  const s = await v.seal();
  await s.complete(SNAP);
  t.same([...v.dirtyClusters()], []);
  await v.truncate(15 * C + 100);
  t.equal(v.length, 15 * C + 100);
  t.same([...v.dirtyClusters()], [15, 16, 17, 18, 19], 'the cut cluster and those past the new end');
  await v.truncate(25 * C);
  const img = await readAll(v);
  t.same(img.subarray(10 * C, 15 * C + 100), pattern(10 * C, 2).subarray(0, 5 * C + 100));
  t.ok(img.subarray(15 * C + 100).every((b) => b === 0), 'grown part reads zeros');
  t.same([...v.dirtyClusters()], [15, 16, 17, 18, 19, 20, 21, 22, 23, 24]);
  t.equal((await stat(join(dir, 'v', 'image.qcow2'))).size, 25 * C);
});

t.test('whole zero clusters stay sparse and are still dirty', { skip: nativeAvailable() ? false : 'native addon not built: no hole punching' }, async (t) => {
  const dir = await tempDir(t);
  const v = await Volume.create(join(dir, 'v'), { name: 'v', virtualSize: 64 * MiB, generation: 1, flushIntervalMs: 0 });
  t.teardown(() => v.close());
  const path = join(dir, 'v', 'image.qcow2');
  await v.write(pattern(8 * C, 3), 16 * C);
  await v.fsync();
  const full = (await stat(path)).blocks * 512;
  const s = await v.seal();
  await s.complete(SNAP);
  // Zeros over data: clusters 17-20 (plus partial zeros at both ends, written as data).
  await v.write(Buffer.alloc(4 * C + 200), 17 * C - 100);
  await v.fsync();
  const after = (await stat(path)).blocks * 512;
  t.ok(full - after >= 4 * C, `4 clusters freed (${full} -> ${after} bytes allocated)`);
  t.same([...v.dirtyClusters()], [16, 17, 18, 19, 20, 21], 'zero clusters are dirty like any other change');
  t.equal(v.stats().zeroClusters, 4);
  const back = Buffer.alloc(6 * C);
  await v.read(back, 16 * C);
  const expect = pattern(8 * C, 3).subarray(0, 6 * C);
  expect.fill(0, C - 100, 5 * C + 100);
  t.same(back, expect);
  // Zeros past the end grow the image without allocating it.
  const before = (await stat(path)).blocks * 512;
  await v.write(Buffer.alloc(32 * C), 64 * C);
  t.equal(v.length, 96 * C);
  t.equal((await stat(path)).size, 96 * C);
  t.ok((await stat(path)).blocks * 512 - before <= 4 * KiB, 'growth by zeros allocates (almost) nothing');
});

t.test('exactly one fdatasync per fsync in the common case', async (t) => {
  const fs = new MemFs();
  const v = await memVolume(fs);
  t.teardown(() => v.close());
  const syncs: MemOp[] = [];
  await v.write(Buffer.alloc(100, 1), 5 * C); // pays the region's intent
  fs.onOp = (op) => {
    if (op.op === 'datasync' || op.op === 'sync' || op.op === 'syncDir') syncs.push(op);
  };
  const before = v.stats();
  for (let i = 0; i < 20; i++) {
    await v.write(pattern(3000, i), 5 * C + i * 3000);
    await v.write(pattern(C, i), 20 * C + i * C);
    await v.fsync();
  }
  const after = v.stats();
  t.equal(after.fsyncs - before.fsyncs, 20);
  t.equal(after.fdatasyncs.total - before.fdatasyncs.total, 20, 'one fdatasync per fsync, counted by the engine');
  t.same(
    syncs.map((s) => s.op + ' ' + s.path),
    Array(20).fill('datasync /vols/v/image.qcow2'),
    'and seen by the file system: only the image',
  );
});

t.test('the intent bit is durable before the first write to a region, and only then', async (t) => {
  const fs = new MemFs();
  const v = await memVolume(fs, { regionSize: 1 * MiB });
  t.teardown(() => v.close());
  let log: string[] = [];
  fs.onOp = (op) => {
    if (op.op !== 'read') log.push(`${op.op} ${op.path.replace('/vols/v/', '')}`);
  };
  await v.write(Buffer.alloc(10, 1), 3 * MiB + 5);
  t.same(log, ['write intent', 'datasync intent', 'write image.qcow2'], 'intent page, its sync, then the data');
  log = [];
  await v.write(Buffer.alloc(10, 1), 3 * MiB + 50 * KiB);
  t.same(log, ['write image.qcow2'], 'a later write to the region pays nothing');
  log = [];
  await v.write(Buffer.alloc(2 * KiB, 1), 4 * MiB - KiB); // spans regions 3 and 4
  t.same(log, ['write intent', 'datasync intent', 'write image.qcow2'], 'one page write covers both regions');

  // Concurrent first writes to several regions share one group commit.
  log = [];
  await Promise.all([10, 11, 12, 13].map((r) => v.write(Buffer.alloc(10, 2), r * MiB)));
  const commits = log.filter((l) => l === 'datasync intent').length;
  t.ok(commits <= 2, `${commits} intent fdatasyncs for four regions (the first, then one shared by the rest)`);
  t.equal(log.filter((l) => l.startsWith('write image')).length, 4);
  t.ok(log.indexOf('datasync intent') < log.indexOf('write image.qcow2'));

  // A new intent epoch: dirty bits persisted BEFORE the state record clears the intent bits.
  log = [];
  await v.flushBitmaps();
  const dirtySync = log.findIndex((l) => /^datasync dirty/.test(l));
  const rename = log.indexOf('rename state.tmp');
  t.ok(dirtySync >= 0 && rename > dirtySync, `dirty synced before the state record (${log.join(', ')})`);
  t.equal(v.stats().intentEpochs, 1);
  log = [];
  await v.write(Buffer.alloc(10, 1), 3 * MiB + 5);
  t.same(log, ['write intent', 'datasync intent', 'write image.qcow2'], 'after the intent epoch ends, the region pays again');
});

t.test('a zero cluster persists its dirty bit before punching the hole', async (t) => {
  const fs = new MemFs();
  const v = await memVolume(fs);
  t.teardown(() => v.close());
  await v.write(pattern(4 * C, 4), 8 * C);
  await (await v.seal()).complete(SNAP); // clusters 8-11 clean again
  await v.write(Buffer.alloc(1, 1), 8 * C); // the region's intent bit is durable
  const log: string[] = [];
  fs.onOp = (op) => log.push(`${op.op} ${op.path.replace('/vols/v/', '')}`);
  await v.write(Buffer.alloc(2 * C), 9 * C);
  const punch = log.indexOf('punch image.qcow2');
  const dirty = log.findIndex((l) => /^datasync dirty/.test(l));
  t.ok(dirty >= 0 && punch > dirty, log.join(', '));
  t.equal(fs.allocatedBytes('/vols/v/image.qcow2') < 4 * C + 4 * C, true);
});

t.test('seal: O(1) swap, reads as of the seal despite overwrites, one seal at a time', async (t) => {
  const fs = new MemFs({ rng: new Rng(9), maxYields: 3 });
  const v = await memVolume(fs);
  t.teardown(() => v.close());
  await (await v.seal()).complete(SNAP); // forget the header clusters
  const old = pattern(6 * C, 5);
  await v.write(old, 10 * C);
  const seal = await v.seal();
  t.equal(seal.clusterCount, 6);
  t.same([...seal.clusters()], [10, 11, 12, 13, 14, 15]);
  t.same([...v.dirtyClusters()], [], 'the current epoch starts empty');
  await t.rejects(v.seal(), { code: 'BUSY' });

  // Overwrite while reading concurrently: each read must give the content at the seal.
  const reads: Array<Promise<Buffer>> = [];
  const writes: Array<Promise<number>> = [];
  for (let c = 10; c < 16; c++) {
    reads.push(seal.readSealed(c));
    writes.push(v.write(pattern(C, 100 + c), c * C));
    reads.push(seal.readSealed(c));
  }
  await Promise.all(writes);
  const got = await Promise.all(reads);
  for (let i = 0; i < got.length; i++) {
    const c = 10 + Math.floor(i / 2);
    t.same(got[i], old.subarray((c - 10) * C, (c - 9) * C), `cluster ${c} as sealed`);
  }
  t.equal(v.stats().sideLogCopies, 6);
  t.equal(v.stats().sideLogBytes, 6 * C);
  seal.markUploaded(10);
  await new Promise((r) => setImmediate(r));
  t.equal(v.stats().sideLogBytes, 5 * C, 'markUploaded frees the copy');
  await t.rejects(seal.readSealed(10), { code: 'INVALID_ARGUMENT' });
  await t.rejects(seal.readSealed(3), { code: 'INVALID_ARGUMENT' }, 'not a sealed cluster');
  t.same([...v.dirtyClusters()], [10, 11, 12, 13, 14, 15], 'the overwrites are dirty in the new epoch');
  await seal.complete(SNAP);
  t.equal(seal.status, 'completed');
  t.equal(v.stats().sideLogBytes, 0);
  const again = await v.seal();
  t.same([...again.clusters()], [10, 11, 12, 13, 14, 15]);
  await again.abandon();
  await v.write(Buffer.alloc(1, 1), 30 * C);
  t.same([...v.dirtyClusters()], [10, 11, 12, 13, 14, 15, 30], 'abandon merges the sealed set back');
});

t.test('readSealed notices a write that raced its image read (sequence counter) and reads the copy', async (t) => {
  const mem = new MemFs();
  // Hold the next image read until released, so a write can land in the middle of it.
  let hold: { started: () => void; release: Promise<void> } | null = null;
  const fs: LocalFs = {
    open: async (path, mode) => {
      const f = await mem.open(path, mode);
      const read: LocalFile['read'] = async (buf, off, len, pos) => {
        const h = hold;
        if (h !== null && path.endsWith('image.qcow2')) {
          hold = null;
          h.started();
          await h.release;
        }
        return f.read(buf, off, len, pos);
      };
      return { ...bindFile(f), read };
    },
    exists: (p) => mem.exists(p),
    mkdir: (p) => mem.mkdir(p),
    rename: (a, b) => mem.rename(a, b),
    unlink: (p) => mem.unlink(p),
    syncDir: (p) => mem.syncDir(p),
  };
  const v = await memVolume(mem, {});
  await v.close();
  const w = await Volume.open('/vols/v', { fs, flushIntervalMs: 0 });
  t.teardown(() => w.close());
  await (await w.seal()).complete(SNAP);
  const old = pattern(C, 13);
  await w.write(old, 7 * C);
  const seal = await w.seal();
  let release = (): void => undefined;
  const started = new Promise<void>((resolve) => {
    hold = { started: resolve, release: new Promise<void>((r) => (release = r)) };
  });
  const reading = seal.readSealed(7);
  await started; // readSealed is inside its image read
  await w.write(pattern(C, 14), 7 * C); // copies the old content aside, then overwrites
  release();
  t.same(await reading, old, 'the content at the seal, not the overwrite');
  t.equal(w.stats().readSealedRetries, 1);
});

t.test('past the side log budget the seal is abandoned, never the guest write', async (t) => {
  const fs = new MemFs();
  const v = await memVolume(fs, { sideLogBudget: 2 * C });
  t.teardown(() => v.close());
  await (await v.seal()).complete(SNAP);
  await v.write(pattern(4 * C, 6), 0);
  const seal = await v.seal();
  const events: SealAbandonedEvent[] = [];
  v.on('seal-abandoned', (e: SealAbandonedEvent) => events.push(e));
  await v.write(Buffer.alloc(10, 1), 0);
  await v.write(Buffer.alloc(10, 1), C);
  t.equal(seal.status, 'open');
  await v.write(Buffer.alloc(10, 1), 2 * C); // a third copy does not fit
  t.equal(seal.status, 'abandoned');
  t.match(seal.abandonReason, /budget/);
  t.equal(events.length, 1);
  await t.rejects(seal.readSealed(3), { code: 'ABORTED' });
  await t.rejects(seal.complete(SNAP), { code: 'ABORTED' });
  t.same([...v.dirtyClusters()], [0, 1, 2, 3], 'nothing forgotten');
  const b = Buffer.alloc(10);
  await v.read(b, 2 * C);
  t.same(b, Buffer.alloc(10, 1));
  t.equal(v.stats().sideLogBytes, 0);
});

t.test('after a crash: dirty = saved dirty ∪ allocated clusters of intent regions; sealed epochs come back', async (t) => {
  const fs = new MemFs();
  let v = await memVolume(fs, { regionSize: MiB });
  await (await v.seal()).complete(SNAP);
  await v.write(pattern(C, 7), 2 * MiB + 3 * C); // region 2, dirty bit only in memory
  await v.write(pattern(C, 8), 5 * MiB); // region 5
  await v.fsync();
  const seal = await v.seal();
  await v.write(pattern(100, 9), 7 * MiB); // region 7, new epoch
  await seal.readSealed(2 * MiB / C + 3);
  fs.crash(); // the seal was never completed
  v = await Volume.open('/vols/v', { fs, flushIntervalMs: 0 });
  t.teardown(() => v.close());
  t.equal(v.recovery.clean, false);
  t.ok(v.recovery.rescannedRegions >= 2, `rescanned ${v.recovery.rescannedRegions} regions`);
  const dirty = new Set(v.dirtyClusters());
  for (const c of [2 * MiB / C + 3, 5 * MiB / C]) t.ok(dirty.has(c), `cluster ${c} is dirty`);
  t.ok(dirty.size < 40, `holes of rescanned regions are skipped (${dirty.size} dirty)`);
  const b = Buffer.alloc(C);
  await v.read(b, 5 * MiB);
  t.same(b, pattern(C, 8), 'fsynced data survived');

  await v.close();
  await v.close(); // twice is fine
  await t.rejects(v.read(Buffer.alloc(1), 0), { code: 'INVALID_ARGUMENT' });
  const w = await Volume.open('/vols/v', { fs, flushIntervalMs: 0 });
  t.equal(w.recovery.clean, true);
  t.equal(w.recovery.rescannedRegions, 0, 'after a clean close nothing is rescanned');
  t.same(new Set(w.dirtyClusters()), dirty, 'and the dirty set is kept');
  await w.close();
});

t.test('a new intent epoch keeps the old intent bits visible until the state record moves on', async (t) => {
  const fs = new MemFs();
  const v = await memVolume(fs, { regionSize: MiB });
  await (await v.seal()).complete(SNAP);
  await v.write(pattern(C, 11), 2 * MiB); // region 2: intent bit durable, dirty bit in memory only
  await v.fsync();
  fs.onOp = (op) => {
    if (op.op === 'write' && op.path.includes('dirty')) throw new Error('injected disk error');
  };
  await t.rejects(v.flushBitmaps(), /injected/, 'new intent epoch begun, dirty bits not persisted');
  fs.onOp = undefined;
  await v.write(Buffer.alloc(10, 1), 5 * MiB); // region 5: an intent page of the new epoch (same page as region 2)
  await v.fsync();
  fs.crash();
  const w = await Volume.open('/vols/v', { fs, flushIntervalMs: 0 });
  t.teardown(() => w.close());
  t.ok(w.isDirty((2 * MiB) / C), 'the write of the old intent epoch is still found by the rescan');
  t.ok(w.isDirty((5 * MiB) / C));
});

t.test('dirty pages of the sealed epoch are persisted before those of the current epoch', async (t) => {
  // The current epoch reuses the file of the epoch before the seal; bits an abandoned seal
  // merged back must be durable in the sealed epoch's file before that file is overwritten.
  const fs = new MemFs();
  const v = await memVolume(fs, { regionSize: MiB });
  await (await v.seal()).complete(SNAP);
  const x = 40;
  const y = 140; // same bitmap page as x, another intent region
  await v.write(pattern(C, 12), x * C);
  await v.fsync();
  await v.flushBitmaps(); // x's dirty bit durable in its epoch's file; its intent bit retired
  const first = await v.seal();
  let failDirty = (): boolean => true;
  fs.onOp = (op) => {
    if (op.op === 'write' && op.path.includes('dirty') && failDirty()) throw new Error('injected disk error');
  };
  await first.abandon().catch(() => undefined); // x merged into the current epoch, not persisted
  await v.seal(); // x sealed again; the new current epoch uses x's old file
  await v.write(Buffer.alloc(10, 1), y * C);
  let n = 0;
  failDirty = () => ++n === 2; // the first page write succeeds, the second fails
  await v.flushBitmaps().catch(() => undefined);
  fs.onOp = undefined;
  fs.crash();
  const w = await Volume.open('/vols/v', { fs, flushIntervalMs: 0 });
  t.teardown(() => w.close());
  t.ok(w.isDirty(x), 'the change merged back from the abandoned seal is not lost');
});

t.test('bitmap pages damaged on disk', async (t) => {
  const fs = new MemFs();
  const v = await memVolume(fs);
  await (await v.seal()).complete(SNAP);
  await v.write(Buffer.alloc(10, 1), 3 * C);
  await v.close();
  // One copy of a page torn: the other copy is used.
  const w0 = await Volume.open('/vols/v', { fs, flushIntervalMs: 0 });
  await w0.close(); // wrote page 0 of the new epoch's file once more, to slot 0 (its first write filled both)
  // Slot 1 holds the older copy in both files (a torn write only ever hits an unsynced copy).
  for (const f of ['dirty.0', 'dirty.1']) fs.poke(`/vols/v/${f}`, slotOffset(0, 1) + 1000, Buffer.alloc(512, 0x77));
  const w1 = await Volume.open('/vols/v', { fs, flushIntervalMs: 0 });
  t.ok(w1.recovery.repairedPages >= 1, `${w1.recovery.repairedPages} pages read from their other copy`);
  t.equal(w1.recovery.unreadablePages, 0);
  t.ok(w1.isDirty(3));
  t.equal(w1.isDirty(4), false);
  await w1.close();
  // Both copies destroyed: every cluster of the page counts as dirty.
  for (const f of ['dirty.0', 'dirty.1']) fs.poke(`/vols/v/${f}`, slotOffset(0, 0), Buffer.alloc(8192, 0x77));
  const w2 = await Volume.open('/vols/v', { fs, flushIntervalMs: 0 });
  t.equal(w2.recovery.unreadablePages, 2);
  t.ok(w2.isDirty(3) && w2.isDirty(30000), 'over-approximated, never lost');
  await w2.close();
});

t.test('an unreadable present page refuses the open (a refetch could overwrite guest data)', async (t) => {
  const fs = new MemFs();
  const fetcher = { fetch: async (_first: number, count: number) => Buffer.alloc(count * C, 1) };
  const v = await Volume.create('/vols/p', { name: 'p', virtualSize: 64 * MiB, generation: 1, baseSnapshot: '01HZY5J8X3M6QK2V9T4N7RBCDE', baseLength: 8 * C, fs, fetcher, flushIntervalMs: 0 });
  await v.read(Buffer.alloc(10), 0);
  await v.close();
  fs.poke('/vols/p/present', slotOffset(0, 0), Buffer.alloc(8192, 0x33));
  await t.rejects(Volume.open('/vols/p', { fs, fetcher, flushIntervalMs: 0 }), { code: 'LOCAL_STATE_DAMAGED', message: /present: present bitmap page 0 is unreadable.*island fsck --local/ });
});

t.test('restored volume: supplied base content fills only what is still missing', async (t) => {
  const fs = new MemFs();
  const baseImage = pattern(8 * C, 33);
  const fetcher = { fetch: async (first: number, count: number) => baseImage.subarray(first * C, (first + count) * C) };
  const v = await Volume.create('/vols/s', { name: 's', virtualSize: 64 * MiB, generation: 1, baseSnapshot: '01HZY5J8X3M6QK2V9T4N7RBCDE', baseLength: baseImage.length, fs, fetcher, flushIntervalMs: 0 });
  await v.write(Buffer.alloc(C, 7), 3 * C);
  await v.supply(3, baseImage.subarray(3 * C, 4 * C));
  await v.supply(5, baseImage.subarray(5 * C, 6 * C));
  await v.supply(100, Buffer.alloc(C)); // past the base: ignored
  t.ok(v.isPresent(5), 'a missing cluster is stored');
  const b = Buffer.alloc(C);
  await v.read(b, 3 * C);
  t.ok(b.equals(Buffer.alloc(C, 7)), 'a cluster the guest wrote is never overwritten');
  await v.read(b, 5 * C);
  t.ok(b.equals(baseImage.subarray(5 * C, 6 * C)));
  await v.close();
});

t.test('restored volume: a sequential reader of missing clusters gets them read ahead', async (t) => {
  const fs = new MemFs();
  const clusters = 256;
  const baseImage = pattern(clusters * C, 21);
  const fetched: Array<[number, number]> = [];
  const fetcher = {
    async fetch(first: number, count: number): Promise<Buffer> {
      fetched.push([first, count]);
      return baseImage.subarray(first * C, (first + count) * C);
    },
  };
  const v = await Volume.create('/vols/ra', { name: 'ra', virtualSize: 64 * MiB, generation: 1, baseSnapshot: '01HZY5J8X3M6QK2V9T4N7RBCDE', baseLength: baseImage.length, fs, fetcher, flushIntervalMs: 0 });
  const b = Buffer.alloc(128 * 1024);
  for (let off = 0; off < baseImage.length; off += b.length) {
    await v.read(b, off);
    t.ok(b.equals(baseImage.subarray(off, off + b.length)), `bytes at ${off}`);
  }
  const reads = baseImage.length / b.length;
  t.ok(fetched.length < reads / 2, `${fetched.length} fetches for ${reads} reads of 128 KiB`);
  t.ok(fetched.some(([, n]) => n * C >= 1024 * 1024), 'the windows grow past 1 MiB');
  const covered = new Set(fetched.flatMap(([f, n]) => Array.from({ length: n }, (_, i) => f + i)));
  t.equal(covered.size, clusters, 'every cluster fetched');
  t.equal(fetched.reduce((a, [, n]) => a + n, 0), clusters, 'and none twice');

  // Out of order: no read-ahead.
  const w = await Volume.create('/vols/rb', { name: 'rb', virtualSize: 64 * MiB, generation: 1, baseSnapshot: '01HZY5J8X3M6QK2V9T4N7RBCDE', baseLength: baseImage.length, fs, fetcher, flushIntervalMs: 0 });
  fetched.length = 0;
  for (const c of [200, 10, 120, 40]) await w.read(Buffer.alloc(C), c * C);
  t.same(fetched, [[200, 1], [10, 1], [120, 1], [40, 1]], 'random reads fetch only what they read');
  await v.close();
  await w.close();
});

t.test('restored volume: lazy fetch, present bits durable before the flush reply', async (t) => {
  const fs = new MemFs();
  const baseImage = pattern(20 * C + 512, 10);
  const fetched: Array<[number, number]> = [];
  const fetcher = {
    async fetch(first: number, count: number): Promise<Buffer> {
      fetched.push([first, count]);
      return baseImage.subarray(first * C, Math.min((first + count) * C, baseImage.length));
    },
  };
  const v = await Volume.create('/vols/r', { name: 'r', virtualSize: 64 * MiB, generation: 1, baseSnapshot: '01HZY5J8X3M6QK2V9T4N7RBCDE', baseLength: baseImage.length, fs, fetcher, flushIntervalMs: 0 });
  t.equal(v.length, baseImage.length);
  t.same([...v.dirtyClusters()], [], 'a restored volume starts clean');
  t.equal(v.isPresent(0), false);
  const b = Buffer.alloc(3 * C);
  await v.read(b, C + 10);
  t.same(b, baseImage.subarray(C + 10, 4 * C + 10));
  t.same(fetched, [[1, 4]], 'one fetch for the missing run');
  await v.read(b, C + 10);
  t.equal(fetched.length, 1, 'then local');
  await v.write(Buffer.alloc(C, 3), 8 * C); // whole cluster: no fetch
  await v.write(Buffer.alloc(10, 4), 10 * C + 5); // partial: fetch first
  t.same(fetched, [
    [1, 4],
    [10, 1],
  ]);
  const before = v.stats().fdatasyncs;
  await v.fsync();
  const after = v.stats().fdatasyncs;
  t.equal(after.image - before.image, 1);
  t.equal(after.present - before.present, 1, 'present bits changed: their pages are synced before the reply');
  await v.fsync();
  t.equal(v.stats().fdatasyncs.total - after.total, 1, 'nothing changed: one fdatasync');
  fs.crash();
  const w = await Volume.open('/vols/r', { fs, fetcher, flushIntervalMs: 0 });
  t.ok(w.isPresent(8) && w.isPresent(10) && w.isPresent(2), 'present bits survive the crash');
  t.equal(w.isPresent(15), false);
  const c10 = Buffer.alloc(C);
  await w.read(c10, 10 * C);
  const expect = Buffer.from(baseImage.subarray(10 * C, 11 * C));
  expect.fill(4, 5, 15);
  t.same(c10, expect, 'fsynced partial write over fetched base content');
  await w.close();
  const nofetch = await Volume.open('/vols/r', { fs, flushIntervalMs: 0 });
  await t.rejects(nofetch.read(Buffer.alloc(10), 15 * C), { code: 'LOCAL_IO', message: /not local/ });
  await nofetch.close();
});
