/**
 * Damaged, missing and old local state: what island may not do is serve a volume as if a
 * damaged bitmap were empty. When it cannot prove what changed, the cluster counts as
 * changed; when it cannot prove a cluster is local, the volume is refused
 * (LOCAL_STATE_DAMAGED). Also: the committed snapshot id and the filled mark in the state
 * record, a create killed at any step, and the migration of version 1 directories.
 */
import t from 'tap';
import { crc32 } from 'node:zlib';
import { Volume, hasVolumeState, inspectVolume } from '../../src/volume/engine.js';
import { MemFs } from '../../src/volume/memfs.js';
import { slotOffset, BITMAP_PAGE_SIZE } from '../../src/volume/bitmap-page.js';
import { ST_CRC, ST_FLAGS, ST_VERSION, STATE_RECORD_SIZE, encodeState, readState, readStateRecord } from '../../src/volume/state.js';
import { Rng } from '../../src/util/random.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const C = 64 * KiB;
const BASE = '01HZY5J8X3M6QK2V9T4N7RBCDE';
const SNAP = '01HZY5J8X3M6QK2V9T4N7RBCDF';
const SNAP2 = '01HZY5J8X3M6QK2V9T4N7RBCDG';
const DIR = '/vols/v';
const noTimer = { flushIntervalMs: 0 };

function pattern(len: number, seed: number): Buffer {
  return new Rng(seed).bytes(len);
}

function garbage(len: number): Buffer {
  return Buffer.alloc(len, 0x5a);
}

/** A logger that keeps its warnings. */
function recorder(): { warnings: string[]; logger: { warn(o: object, m: string): void; info(): void; debug(): void } } {
  const warnings: string[] = [];
  return { warnings, logger: { warn: (_o, m) => warnings.push(m), info: () => undefined, debug: () => undefined } };
}

/** A restored volume whose cluster 1 holds fsynced guest data (and cluster 0 fetched base content). */
async function restoredWithGuestData(fs: MemFs): Promise<{ fetcher: { fetch(first: number, count: number): Promise<Buffer> }; guest: Buffer }> {
  const base = Buffer.alloc(8 * C, 0xbb);
  const fetcher = { fetch: async (first: number, count: number) => base.subarray(first * C, (first + count) * C) };
  const v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, baseSnapshot: BASE, baseLength: base.length, fs, fetcher, ...noTimer });
  await v.read(Buffer.alloc(10), 0);
  const guest = pattern(C, 1);
  await v.write(guest, C);
  await v.fsync();
  await v.close();
  return { fetcher, guest };
}

t.test('a deleted present file refuses the open: LOCAL_STATE_DAMAGED, naming the file and the way out', async (t) => {
  const fs = new MemFs();
  const { fetcher } = await restoredWithGuestData(fs);
  await fs.unlink(`${DIR}/present`);
  await t.rejects(Volume.open(DIR, { fs, fetcher, ...noTimer }), { code: 'LOCAL_STATE_DAMAGED', message: /\/vols\/v\/present: the present bitmap is missing.*island fsck --local.*restore/ });
  const seen = await inspectVolume(DIR, fs);
  t.match(seen.presentUnreadable, { code: 'LOCAL_STATE_DAMAGED' }, 'fsck --local sees it too');
});

t.test('garbage over the first slot of a present page is damage, not a torn first write', async (t) => {
  const fs = new MemFs();
  const { fetcher, guest } = await restoredWithGuestData(fs);
  fs.poke(`${DIR}/present`, slotOffset(0, 0), garbage(BITMAP_PAGE_SIZE));
  const v = await Volume.open(DIR, { fs, fetcher, ...noTimer });
  t.teardown(() => v.close());
  t.ok(v.isPresent(1), 'the second copy of the page says cluster 1 is local');
  const b = Buffer.alloc(C);
  await v.read(b, C);
  t.same(b, guest, 'fsynced guest data is served, not refetched base content');
});

t.test('a corrupt state record or a missing image: LOCAL_STATE_DAMAGED, and hasVolumeState still says a volume is here', async (t) => {
  const fs = new MemFs();
  await cleanlyStopped(fs);
  await fs.unlink(`${DIR}/image.qcow2`);
  await fs.syncDir(DIR);
  await t.rejects(Volume.open(DIR, { fs, ...noTimer }), { code: 'LOCAL_STATE_DAMAGED', message: /image\.qcow2: the image is missing/ });
  const g = new MemFs();
  await cleanlyStopped(g);
  g.poke(`${DIR}/state`, 40, Buffer.from([0xff]));
  t.equal(await hasVolumeState(DIR, g), true, 'damaged, not absent');
  await t.rejects(Volume.open(DIR, { fs: g, ...noTimer }), { code: 'LOCAL_STATE_DAMAGED', message: /state: the state record is corrupt.*checksum/ });
  await t.rejects(Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 2, fs: g, ...noTimer }), { code: 'ALREADY_EXISTS' }, 'create never overwrites a damaged volume');
});

t.test('garbage over both slots of a present page refuses the open', async (t) => {
  const fs = new MemFs();
  const { fetcher } = await restoredWithGuestData(fs);
  fs.poke(`${DIR}/present`, slotOffset(0, 0), garbage(2 * BITMAP_PAGE_SIZE));
  await t.rejects(Volume.open(DIR, { fs, fetcher, ...noTimer }), { code: 'LOCAL_STATE_DAMAGED' });
});

/** A volume with a write at 5 MiB whose dirty bit is only in memory (its intent bit is durable), then a crash. */
async function crashedWithIntent(fs: MemFs): Promise<void> {
  const v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, regionSize: MiB, fs, ...noTimer });
  await (await v.seal()).complete(SNAP);
  await v.write(pattern(C, 2), 5 * MiB);
  await v.fsync();
  fs.crash();
}

t.test('garbage intent after a crash: the marked regions are still rescanned', async (t) => {
  for (const [what, len] of [
    ['the first slot', BITMAP_PAGE_SIZE],
    ['both slots', 2 * BITMAP_PAGE_SIZE],
  ] as const) {
    const fs = new MemFs();
    await crashedWithIntent(fs);
    fs.poke(`${DIR}/intent`, slotOffset(0, 0), garbage(len));
    const v = await Volume.open(DIR, { fs, ...noTimer });
    t.ok(v.isDirty((5 * MiB) / C), `garbage over ${what}: the write is dirty`);
    await v.close();
  }
});

t.test('a missing intent file after a crash: every region is rescanned', async (t) => {
  const fs = new MemFs();
  await crashedWithIntent(fs);
  await fs.unlink(`${DIR}/intent`);
  await fs.syncDir(DIR);
  const { warnings, logger } = recorder();
  const v = await Volume.open(DIR, { fs, logger, ...noTimer });
  t.teardown(() => v.close());
  t.ok(v.isDirty((5 * MiB) / C));
  t.ok(v.recovery.damaged.includes('intent'));
  t.ok(warnings.some((w) => /intent bitmap file missing/.test(w)));
});

/** A volume with cluster 3 written and closed cleanly (its dirty bit persisted). */
async function cleanlyStopped(fs: MemFs): Promise<void> {
  const v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, fs, ...noTimer });
  await (await v.seal()).complete(SNAP);
  await v.write(Buffer.alloc(10, 1), 3 * C);
  await v.close();
}

t.test('garbage dirty pages after a clean stop still count: the clean mark does not hide damage', async (t) => {
  for (const len of [BITMAP_PAGE_SIZE, 2 * BITMAP_PAGE_SIZE]) {
    const fs = new MemFs();
    await cleanlyStopped(fs);
    for (const f of ['dirty.0', 'dirty.1']) fs.poke(`${DIR}/${f}`, slotOffset(0, 0), garbage(len));
    const v = await Volume.open(DIR, { fs, ...noTimer });
    t.equal(v.recovery.clean, true);
    t.ok(v.isDirty(3), `garbage over ${len} bytes: cluster 3 is dirty`);
    await v.close();
  }
});

t.test('a missing dirty file: every cluster is dirty, with a warning', async (t) => {
  for (const f of ['dirty.0', 'dirty.1']) {
    const fs = new MemFs();
    await cleanlyStopped(fs);
    await fs.unlink(`${DIR}/${f}`);
    await fs.syncDir(DIR);
    const { warnings, logger } = recorder();
    const v = await Volume.open(DIR, { fs, logger, ...noTimer });
    t.ok(v.isDirty(3), `${f} deleted: cluster 3 is dirty`);
    t.equal([...v.dirtyClusters()].length, Math.ceil(v.length / C), 'so is every cluster of the image');
    t.same(v.recovery.damaged, [f]);
    t.ok(warnings.some((w) => /dirty bitmap file missing/.test(w)));
    await v.close();
    const w = await Volume.open(DIR, { fs, ...noTimer });
    t.same(w.recovery.damaged, [], 'the file is back after the open');
    t.ok(w.isDirty(3));
    await w.close();
  }
});

t.test('a truncated dirty file: the pages it lost are unreadable, never empty', async (t) => {
  const fs = new MemFs();
  await cleanlyStopped(fs);
  for (const f of ['dirty.0', 'dirty.1']) await (await fs.open(`${DIR}/${f}`, 'r+')).truncate(0);
  const v = await Volume.open(DIR, { fs, ...noTimer });
  t.teardown(() => v.close());
  t.ok(v.isDirty(3));
  t.ok(v.recovery.unreadablePages >= 1, `${v.recovery.unreadablePages} pages lost to the truncation`);
});

t.test('a create killed at any step leaves either a volume or a directory the next create starts over in', async (t) => {
  let ops = 0;
  const count = new MemFs({ onOp: () => ops++ });
  await (await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, fs: count, ...noTimer })).close();
  const total = ops;
  let startedOver = 0;
  for (let k = 1; k <= total; k++) {
    let seen = 0;
    const fs = new MemFs();
    fs.onOp = () => {
      if (++seen === k) fs.crash(new Rng(k));
    };
    await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, fs, ...noTimer }).then(
      (v) => v.close().catch(() => undefined),
      () => undefined,
    );
    fs.onOp = undefined;
    if (await hasVolumeState(DIR, fs)) {
      const v = await Volume.open(DIR, { fs, ...noTimer });
      await v.close();
      continue;
    }
    startedOver++;
    await t.rejects(Volume.open(DIR, { fs, ...noTimer }), { code: 'NOT_FOUND', message: /holds no volume state.*create the volume again/ });
    const v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 2, fs, ...noTimer });
    t.equal(v.generation, 2);
    await v.close();
  }
  t.ok(startedOver > 0, `${startedOver} of ${total} crash points left no volume, and create started over`);
});

t.test('the committed snapshot id and the filled mark live in the state record', async (t) => {
  const fs = new MemFs();
  const fresh = await Volume.create('/vols/n', { name: 'n', virtualSize: 64 * MiB, generation: 1, fs, ...noTimer });
  t.equal(fresh.committedSnapshot, null, 'a new volume has none');
  await fresh.close();
  const fetcher = { fetch: async (_f: number, count: number) => Buffer.alloc(count * C) };
  let v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, baseSnapshot: BASE, baseLength: 4 * C, fs, fetcher, ...noTimer });
  t.equal(v.committedSnapshot, BASE, 'a restored volume starts equal to its base');
  t.equal(v.filled, false);
  t.same([...v.dirtyClusters()], [], 'nothing changed since its base');
  fs.crash();
  v = await Volume.open(DIR, { fs, fetcher, ...noTimer });
  t.equal(v.committedSnapshot, BASE, 'survives a crash right after the create');
  await v.prefetch(0, 3);
  await v.fsync();
  await v.markFilled();
  await v.write(Buffer.alloc(10, 1), 2 * C);
  const seal = await v.seal();
  await t.rejects(seal.complete('not-a-snapshot'), { code: 'INVALID_ARGUMENT' });
  t.equal(seal.status, 'open', 'a bad id changes nothing');
  await seal.complete(SNAP);
  t.equal(v.committedSnapshot, SNAP);
  fs.crash();
  v = await Volume.open(DIR, { fs, fetcher, ...noTimer });
  t.equal(v.committedSnapshot, SNAP, 'the committed id survives a crash');
  t.equal(v.filled, true, 'so does the filled mark');
  await v.markAllDirty();
  t.equal(v.committedSnapshot, null, 'marking everything dirty forgets the committed snapshot');
  fs.crash();
  v = await Volume.open(DIR, { fs, fetcher, ...noTimer });
  t.equal(v.committedSnapshot, null);
  t.equal([...v.dirtyClusters()].length, 4, 'and every cluster stays dirty');
  const seen = await inspectVolume(DIR, fs);
  t.equal(seen.committedSnapshot, null);
  t.ok(seen.mayHaveChanged(0), 'without a committed snapshot every cluster may have changed');
  await v.close();
  const news = await Volume.create('/vols/r', { name: 'r', virtualSize: 64 * MiB, generation: 1, baseSnapshot: BASE, baseLength: 4 * C, committedSnapshot: null, fs, fetcher, ...noTimer });
  t.equal([...news.dirtyClusters()].length, 4, 'a restored volume equal to no known snapshot starts all dirty');
  await news.close();
});

t.test('a crash at every step of complete leaves the old pair or the new one, never a mix', async (t) => {
  let total = 0;
  {
    const fs = new MemFs();
    const v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, fs, ...noTimer });
    const seal = await v.seal();
    fs.onOp = () => total++;
    await seal.complete(SNAP);
    fs.onOp = undefined;
    await v.close();
  }
  const outcomes = new Set<string>();
  for (let k = 1; k <= total + 1; k++) {
    const fs = new MemFs();
    const v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, fs, ...noTimer });
    await (await v.seal()).complete(SNAP);
    await v.write(Buffer.alloc(10, 1), 9 * C);
    const seal = await v.seal();
    const before = await readState(fs, DIR);
    let seen = 0;
    fs.onOp = () => {
      if (++seen === k) fs.crash(new Rng(k));
    };
    await seal.complete(SNAP2).catch(() => undefined);
    fs.onOp = undefined;
    if (seen < k) fs.crash(new Rng(k));
    const after = await readState(fs, DIR);
    const pair = `${after.committedSnapshot}@${after.completedEpoch}`;
    if (after.committedSnapshot === SNAP) t.equal(after.completedEpoch, before.completedEpoch, `crash at op ${k}: the old id with the old completed epoch`);
    else if (after.committedSnapshot === SNAP2) t.equal(after.completedEpoch, seal.epoch, `crash at op ${k}: the new id with the new completed epoch`);
    else t.fail(`crash at op ${k}: committed ${pair}`);
    outcomes.add(after.committedSnapshot ?? 'null');
    const w = await Volume.open(DIR, { fs, ...noTimer });
    t.equal(w.committedSnapshot, after.committedSnapshot);
    if (w.committedSnapshot === SNAP) t.ok(w.isDirty(9), 'the change not in a completed snapshot is still dirty');
    await w.close();
  }
  t.same([...outcomes].sort(), [SNAP, SNAP2].sort(), 'both outcomes occurred');
});

/** Turn the version 2 directory in `dir` into what version 1 left: record, side files. */
async function makeV1(fs: MemFs, dir: string, lastSnapshot: string | null, filled: string | null): Promise<void> {
  const s = await readState(fs, dir);
  const b = encodeState({ ...s, committedSnapshot: null, filled: false, syncedPages: { dirty0: 0, dirty1: 0, intent: 0, present: 0 } });
  b.writeUInt16BE(1, ST_VERSION);
  b.writeUInt16BE(b.readUInt16BE(ST_FLAGS) & 1, ST_FLAGS);
  b.writeUInt32BE(crc32(b.subarray(0, ST_CRC)) >>> 0, ST_CRC);
  const f = await fs.open(`${dir}/state`, 'r+');
  await f.write(b, 0, STATE_RECORD_SIZE, 0);
  await f.datasync();
  for (const [name, text] of [
    ['last-snapshot', lastSnapshot],
    ['filled', filled],
  ] as const) {
    if (text === null) continue;
    const g = await fs.open(`${dir}/${name}`, 'create');
    await g.write(Buffer.from(text), 0, text.length, 0);
    await g.datasync();
  }
  await fs.syncDir(dir);
}

t.test('version 1 directories migrate on open', async (t) => {
  const fetcher = { fetch: async (_f: number, count: number) => Buffer.alloc(count * C) };
  const cases = [
    { what: 'a valid last-snapshot', last: `${SNAP}\n`, committed: SNAP, allDirty: false },
    { what: 'no last-snapshot', last: null, committed: null, allDirty: true },
    { what: 'a garbage last-snapshot', last: '/etc/passwd\n', committed: null, allDirty: true },
    { what: 'a last-snapshot past any id length', last: `${SNAP}${'x'.repeat(200)}`, committed: null, allDirty: true },
  ];
  for (const c of cases) {
    const fs = new MemFs();
    const v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, baseSnapshot: BASE, baseLength: 4 * C, fs, fetcher, ...noTimer });
    await v.write(Buffer.alloc(10, 1), C);
    await v.close();
    await makeV1(fs, DIR, c.last, `${BASE}\n`);
    t.equal((await readStateRecord(fs, DIR)).version, 1);
    const seen = await inspectVolume(DIR, fs);
    t.equal(seen.committedSnapshot, c.committed, `${c.what}: fsck --local reads it as the migration will`);
    const { warnings, logger } = recorder();
    const w = await Volume.open(DIR, { fs, fetcher, logger, ...noTimer });
    t.equal(w.recovery.migratedFrom, 1);
    t.equal(w.committedSnapshot, c.committed, `${c.what}: committed ${c.committed}`);
    t.equal(w.filled, true, 'filled names the base: filled');
    t.ok(w.isDirty(1), 'the change is still dirty');
    t.equal(w.isDirty(3), c.allDirty, c.allDirty ? 'unknown committed snapshot: every cluster is dirty' : 'untouched clusters stay clean');
    t.equal(warnings.some((m) => /every cluster counts as changed/.test(m)), c.allDirty, 'a warning says the next snapshot uploads everything');
    t.equal((await readStateRecord(fs, DIR)).version, 2, 'the record is version 2');
    t.equal(await fs.exists(`${DIR}/last-snapshot`), false, 'last-snapshot is gone');
    t.equal(await fs.exists(`${DIR}/filled`), false, 'filled is gone');
    await w.close();
    // After the migration no side file is trusted.
    const g = await fs.open(`${DIR}/last-snapshot`, 'create');
    await g.write(Buffer.from(SNAP2), 0, 26, 0);
    const x = await Volume.open(DIR, { fs, fetcher, ...noTimer });
    t.equal(x.committedSnapshot, c.committed, 'a side file written later is ignored');
    await x.close();
  }
});

t.test('a migration killed at any step is done again or already done', async (t) => {
  for (let k = 1; k < 60; k += 3) {
    const fs = new MemFs();
    const v = await Volume.create(DIR, { name: 'v', virtualSize: 64 * MiB, generation: 1, fs, ...noTimer });
    await v.write(Buffer.alloc(10, 1), C);
    await v.close();
    await makeV1(fs, DIR, `${SNAP}\n`, null);
    let seen = 0;
    fs.onOp = () => {
      if (++seen === k) fs.crash(new Rng(k));
    };
    await Volume.open(DIR, { fs, ...noTimer }).then(
      (w) => w.close().catch(() => undefined),
      () => undefined,
    );
    fs.onOp = undefined;
    if (seen < k) fs.crash(new Rng(k));
    const w = await Volume.open(DIR, { fs, ...noTimer });
    t.equal(w.committedSnapshot, SNAP, `crash at op ${k}: the committed id is kept`);
    t.ok(w.isDirty(1));
    await w.close();
  }
});
