/**
 * The write path in C (native/volume/, through NativeVolume) against the TypeScript engine, the
 * oracle: one seeded request stream (writes of every size and offset, whole clusters of zeros,
 * fsyncs, seals with readSealed / markUploaded / complete / abandon, truncates, discards, the
 * flush that starts a new intent epoch) runs through the oracle on the in-memory file system and
 * through the C path on a real directory. After every step the bitmap files must be equal byte
 * for byte, and per file the ordered list of bitmap operations (page, slot, fdatasync) the C
 * path logged must equal what the oracle did; image bytes are compared every few steps and at
 * the end, sealed clusters as they are read.
 */
import t, { type Test } from 'tap';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Volume } from '../../src/volume/engine.js';
import { MemFs, type MemOp } from '../../src/volume/memfs.js';
import { NativeVolume, nativeWritePathAvailable, type NativeOp } from '../../src/volume/native-volume.js';
import type { ChangeTracker } from '../../src/volume/tracking.js';
import type { Seal } from '../../src/volume/seal.js';
import type { PresentFetcher } from '../../src/volume/setup.js';
import { Rng } from '../../src/util/random.js';
import { choosePage, PAGE_KIND_DIRTY, PAGE_KIND_INTENT, PAGE_KIND_PRESENT, type PageKind } from '../../src/volume/bitmap-page.js';

const BITMAPS = ['dirty.0', 'dirty.1', 'intent', 'present'];
const SNAPS = ['01HZY5J8X3M6QK2V9T4N7RBCDF', '01HZY5J8X3M6QK2V9T4N7RBCDG', '01HZY5J8X3M6QK2V9T4N7RBCDH'];
const BASE_SNAP = '01HZY5J8X3M6QK2V9T4N7RBCD0';

interface Config {
  seed: number;
  clusterSize: number;
  regionSize: number;
  /** Writes land below this. */
  span: number;
  steps: number;
  sideLogBudget: number;
  /** Restored from a base snapshot of this many bytes (0: a new volume). */
  baseLength: number;
}

/** Oracle operations per file, as the C path logs them. */
function oracleOp(op: MemOp): { file: string; entry: string } | null {
  const file = basename(op.path);
  if (BITMAPS.includes(file)) {
    if (op.op === 'write') {
      const pos = op.pos ?? 0;
      const page = Math.floor(pos / 8192);
      const slot = op.len === 8192 ? 2 : (pos / 4096) % 2;
      return { file, entry: `p${page}s${slot}` };
    }
    if (op.op === 'datasync') return { file, entry: 'sync' };
    return null;
  }
  if (file === 'image.qcow2' && op.op === 'datasync') return { file: 'image', entry: 'sync' };
  return null;
}

function nativeOp(op: NativeOp): { file: string; entry: string } | null {
  if (op.op === 'page') return { file: op.file, entry: `p${op.a}s${op.b}` };
  if (op.op === 'sync') return { file: op.file, entry: 'sync' };
  return null;
}

const KINDS: Record<string, PageKind> = { 'dirty.0': PAGE_KIND_DIRTY, 'dirty.1': PAGE_KIND_DIRTY, intent: PAGE_KIND_INTENT, present: PAGE_KIND_PRESENT };

function pageDifference(file: string, mine: Buffer, theirs: Buffer): string | null {
  const pages = Math.ceil(Math.max(mine.length, theirs.length) / 8192);
  for (let i = 0; i < pages; i++) {
    const a = choosePage(mine, i * 8192, KINDS[file]!, i, file, i * 8192);
    const b = choosePage(theirs, i * 8192, KINDS[file]!, i, file, i * 8192);
    if (a.slotGenerations[0] !== b.slotGenerations[0] || a.slotGenerations[1] !== b.slotGenerations[1]) return `page ${i}: slot generations ${a.slotGenerations.join('/')} vs ${b.slotGenerations.join('/')}`;
    if ((a.content === null) !== (b.content === null)) return `page ${i}: one side empty`;
    if (a.content !== null && b.content !== null) {
      if (a.content.stamp !== b.content.stamp) return `page ${i}: stamp ${a.content.stamp} vs ${b.content.stamp}`;
      if (!Buffer.from(a.content.payload).equals(Buffer.from(b.content.payload))) return `page ${i}: payload of the newest copy differs`;
    }
  }
  return null;
}

function baseContent(len: number, seed: number): Buffer {
  const b = new Rng(seed).bytes(len);
  // Some base clusters are zero, so an install punches a hole.
  b.fill(0, 0, Math.min(len, 8192));
  return b;
}

function fetcherOf(base: Buffer, C: number): PresentFetcher {
  return {
    async fetch(first: number, count: number): Promise<Buffer> {
      await new Promise((r) => setImmediate(r));
      return Buffer.from(base.subarray(first * C, Math.min(base.length, (first + count) * C)));
    },
  };
}

async function run(t: Test, cfg: Config): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'island-native-diff-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const C = cfg.clusterSize;
  const base = cfg.baseLength > 0 ? baseContent(cfg.baseLength, cfg.seed + 1) : null;
  const common = {
    name: 'v',
    virtualSize: 1024 * 1024 * 1024,
    clusterSize: C,
    regionSize: cfg.regionSize,
    generation: 1,
    flushIntervalMs: 0,
    sideLogBudget: cfg.sideLogBudget,
    ...(base !== null ? { baseSnapshot: BASE_SNAP, baseLength: base.length, fetcher: fetcherOf(base, C) } : {}),
  };
  const fs = new MemFs();
  const oracle = await Volume.create('/vols/v', { ...common, fs });
  const native = await NativeVolume.create(join(dir, 'v'), { ...common, opLog: true });
  t.teardown(async () => {
    await oracle.close().catch(() => undefined);
    await native.close().catch(() => undefined);
  });
  const expected = new Map<string, string[]>();
  const got = new Map<string, string[]>();
  const push = (m: Map<string, string[]>, e: { file: string; entry: string } | null): void => {
    if (e === null) return;
    const list = m.get(e.file) ?? [];
    list.push(e.entry);
    m.set(e.file, list);
  };
  fs.onOp = (op) => push(expected, oracleOp(op));
  const tracker = (oracle as unknown as { tracker: ChangeTracker }).tracker;
  const rng = new Rng(cfg.seed);
  let seal: { o: Seal; n: Seal } | null = null;
  let sealAge = 0;
  const log: string[] = [];
  let rawDiffers = 0;

  const compareFiles = async (step: number, what: string): Promise<boolean> => {
    for (const e of native.takeOps()) push(got, nativeOp(e));
    let ok = true;
    for (const f of [...BITMAPS, 'image']) {
      const ea = expected.get(f) ?? [];
      const gb = got.get(f) ?? [];
      if (ea.join(' ') !== gb.join(' ')) {
        ok = false;
        let i = 0;
        while (ea[i] === gb[i]) i++;
        t.equal(gb.slice(i).join(' '), ea.slice(i).join(' '), `step ${step} (${what}): operations on ${f} from its operation ${i} on`);
      }
    }
    for (const f of BITMAPS) {
      if (f === 'present' && base === null) continue;
      const mine = await readFile(join(dir, 'v', f));
      const theirs = fs.contents(`/vols/v/${f}`);
      if (mine.equals(theirs)) continue;
      rawDiffers++;
      // Equal pages: the same winning copy (generation, stamp, payload) and the same slot
      // generations. The older copy's payload may differ: the oracle encodes a page when its
      // write runs, and bits set between the take and the write land in it or in the next one.
      const diff = pageDifference(f, mine, theirs);
      if (diff !== null) {
        ok = false;
        t.fail(`step ${step} (${what}): ${f}: ${diff}`);
      }
    }
    return ok;
  };
  const compareImage = async (step: number, what: string): Promise<boolean> => {
    const mine = await readFile(join(dir, 'v', 'image.qcow2'));
    const theirs = fs.contents('/vols/v/image.qcow2');
    if (mine.length !== theirs.length || !mine.equals(theirs)) {
      t.fail(`step ${step} (${what}): image differs (${mine.length} vs ${theirs.length} bytes)`);
      return false;
    }
    t.equal(native.length, oracle.length, `step ${step}: length`);
    return true;
  };
  /** Both sides with nothing in the background (a seal's and an abandon's persist). */
  const settle = async (): Promise<void> => {
    await tracker.persist();
    await native.persistDirty();
  };

  for (let step = 0; step < cfg.steps; step++) {
    const k = rng.int(100);
    let what: string;
    const len0 = oracle.length;
    if (k < 55) {
      const kind = rng.int(4);
      let off: number;
      let size: number;
      if (kind === 0) {
        // Whole clusters, aligned, some of them zero.
        off = rng.int(Math.floor(cfg.span / C)) * C;
        size = (1 + rng.int(4)) * C;
      } else if (kind === 1) {
        off = rng.int(cfg.span);
        size = 1 + rng.int(3 * C);
      } else if (kind === 2) {
        off = rng.int(Math.max(1, len0 + C)); // around the end: growth
        size = 1 + rng.int(C);
      } else {
        off = rng.int(cfg.span);
        size = 1 + rng.int(512);
      }
      const buf = rng.bytes(size);
      const zeroAt = rng.int(3);
      if (zeroAt === 0) buf.fill(0);
      else if (zeroAt === 1) {
        for (let c = Math.ceil(off / C); (c + 1) * C <= off + size; c++) if (rng.chance(0.5)) buf.fill(0, c * C - off, (c + 1) * C - off);
      }
      what = `write ${off}+${size}`;
      const [a, b] = await Promise.all([oracle.write(buf, off), native.write(buf, off)]);
      t.equal(b, a, what);
    } else if (k < 63) {
      what = 'fsync';
      await oracle.fsync();
      await native.fsync();
    } else if (k < 70) {
      const off = rng.int(Math.max(1, len0));
      const size = 1 + rng.int(4 * C);
      what = `discard ${off}+${size}`;
      await oracle.discard(off, size);
      await native.discard(off, size);
    } else if (k < 74) {
      const to = rng.chance(0.5) ? Math.max(0, len0 - rng.int(4 * C)) : len0 + rng.int(4 * C);
      what = `truncate ${to}`;
      await oracle.truncate(to);
      await native.truncate(to);
    } else if (k < 78) {
      what = 'flush';
      await oracle.flushBitmaps();
      await native.flushBitmaps();
    } else if (k < 86 && seal === null) {
      what = 'seal';
      const o = await oracle.seal();
      const n = await native.seal();
      t.equal(n.epoch, o.epoch, 'sealed epoch');
      t.equal(n.length, o.length, 'sealed length');
      t.same([...n.clusters()], [...o.clusters()], 'sealed clusters');
      seal = { o, n };
      sealAge = 0;
    } else if (k < 94) {
      // Upload part of the open seal: read some clusters, compare, mark them uploaded.
      what = 'upload';
      if (seal !== null && seal.o.status === 'open' && seal.n.status === 'open') {
        const list = [...seal.o.clusters()];
        for (let i = 0; i < Math.min(4, list.length); i++) {
          const c = list[rng.int(list.length)]!;
          let a: Buffer | null = null;
          try {
            a = await seal.o.readSealed(c);
          } catch {
            a = null; // already uploaded
          }
          if (a === null) continue;
          const b = await seal.n.readSealed(c);
          if (!b.equals(a)) t.fail(`step ${step}: sealed cluster ${c} differs`);
          seal.o.markUploaded(c);
          seal.n.markUploaded(c);
        }
      }
    } else {
      what = 'end seal';
      if (seal !== null) {
        if (seal.o.status === 'open' || seal.n.status === 'open') {
          t.equal(seal.n.status, seal.o.status, `step ${step}: seal status`);
          if (rng.chance(0.6)) {
            // Every remaining cluster as the snapshot would read it, then complete.
            for (const c of seal.o.clusters()) {
              const a = await seal.o.readSealed(c).catch(() => null);
              if (a === null) continue;
              const b = await seal.n.readSealed(c);
              if (!b.equals(a)) t.fail(`step ${step}: sealed cluster ${c} differs`);
            }
            const id = SNAPS[rng.int(SNAPS.length)]!;
            await seal.o.complete(id);
            await seal.n.complete(id);
            t.equal(native.committedSnapshot, oracle.committedSnapshot, 'committed snapshot');
          } else {
            await seal.o.abandon();
            await seal.n.abandon();
          }
        }
        seal = null;
      }
    }
    if (seal !== null) {
      sealAge++;
      await settle();
      t.equal(seal.n.status, seal.o.status, `step ${step}: seal status after ${what}`);
      if (seal.o.status !== 'open') seal = null;
    }
    log.push(what);
    const ok = await compareFiles(step, what);
    if (!ok || step % 10 === 9) {
      if (!(await compareImage(step, what)) || !ok) {
        t.comment(`steps so far: ${log.slice(-12).join('; ')}`);
        return;
      }
    }
  }
  await compareImage(cfg.steps, 'end');
  for (let c = 0; c < Math.ceil(oracle.length / C); c++) {
    if (native.isDirty(c) !== oracle.isDirty(c)) {
      t.fail(`cluster ${c}: dirty ${native.isDirty(c)} vs ${oracle.isDirty(c)}`);
      break;
    }
  }
  t.same([...native.dirtyClusters()], [...oracle.dirtyClusters()], 'the current epoch\'s dirty clusters');
  await oracle.close();
  await native.close();
  await compareFiles(cfg.steps, 'close');
  t.comment(`bitmap files differing byte for byte (older copies) at ${rawDiffers} comparisons`);
  const s = native.stats();
  if (base !== null) t.ok(s.fetchedClusters > 0 && s.fetchedClusters === oracle.stats().fetchedClusters, `misses were fetched and installed (${s.fetchedClusters} clusters, as the oracle)`);
  t.ok(s.writes > 0 && s.fsyncs > 0, `the stream wrote (${s.writes} writes, ${s.zeroClusters} zero clusters, ${s.sideLogCopies} side log copies, ${s.seals} seals)`);
}

const skip = nativeWritePathAvailable() ? false : 'the native addon is not built (scripts/build-native.sh)';

t.test('4 KiB clusters, 64 KiB regions, a small image', { skip }, async (t) => {
  await run(t, { seed: 1, clusterSize: 4096, regionSize: 65536, span: 2 * 1024 * 1024, steps: 300, sideLogBudget: 1 << 30, baseLength: 0 });
});

t.test('side log budget exhausted: seals abandoned by writes', { skip }, async (t) => {
  await run(t, { seed: 2, clusterSize: 4096, regionSize: 65536, span: 1024 * 1024, steps: 200, sideLogBudget: 3 * 4096, baseLength: 0 });
});

t.test('512-byte clusters over several bitmap pages', { skip }, async (t) => {
  await run(t, { seed: 3, clusterSize: 512, regionSize: 1024 * 1024, span: 40 * 1024 * 1024, steps: 150, sideLogBudget: 1 << 30, baseLength: 0 });
});

t.test('a restored volume: misses fetched and installed, present pages', { skip }, async (t) => {
  await run(t, { seed: 4, clusterSize: 4096, regionSize: 65536, span: 1024 * 1024, steps: 250, sideLogBudget: 1 << 30, baseLength: 1024 * 1024 });
});
