/**
 * Crash safety of the write path in C, proven on its own log (a SIGKILL cannot show a missing
 * fdatasync: the page cache survives the process). A seeded stream runs through NativeVolume
 * with the data log on; the log (every bitmap page write with its slot, image write, hole,
 * truncation and fdatasync, in order, with the bytes, and the state records JavaScript wrote)
 * is replayed into the in-memory file system, and the power is cut before every fdatasync and
 * every state record (sampled) with every unsynced 512-byte sector torn at random. The
 * TypeScript recovery then opens the directory and must find:
 *   - every byte of the image as of the last completed fsync, where nothing wrote since;
 *   - every cluster that differs from the snapshot the recovered state record names as
 *     committed dirty (change tracking never lost), or no committed snapshot at all.
 */
import t, { type Test } from 'tap';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Volume } from '../../src/volume/engine.js';
import { MemFs } from '../../src/volume/memfs.js';
import { NativeVolume, nativeWritePathAvailable, type NativeOp } from '../../src/volume/native-volume.js';
import { decodeState, writeState } from '../../src/volume/state.js';
import type { LocalFile } from '../../src/volume/files.js';
import { Rng } from '../../src/util/random.js';
import type { PresentFetcher } from '../../src/volume/setup.js';

const DIR = '/data/v';
const FILES = ['image.qcow2', 'dirty.0', 'dirty.1', 'intent', 'sidelog', 'state'];
const BASE_SNAP = '01HZY5J8X3M6QK2V9T4N7RBCD0';
const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const C = 4096;

function snapshotId(n: number): string {
  let tail = '';
  for (let i = 0; i < 4; i++) tail = CROCKFORD[(n >> (5 * i)) & 31]! + tail;
  return `01HZY5J8X3M6QK2V9T4N7R${tail}`;
}

interface FsyncMark {
  at: number;
  image: Buffer;
}

async function replay(initial: Map<string, Buffer>, ops: NativeOp[], upTo: number, rng: Rng): Promise<MemFs> {
  const fs = new MemFs();
  await fs.mkdir(DIR);
  const files = new Map<string, LocalFile>();
  for (const [name, bytes] of initial) {
    const f = await fs.open(`${DIR}/${name}`, 'create');
    if (bytes.length > 0) await f.write(bytes, 0, bytes.length, 0);
    await f.truncate(bytes.length);
    await f.datasync();
    if (name === 'state') await f.close();
    else files.set(name, f);
  }
  await fs.syncDir(DIR);
  const fileOf = (op: NativeOp): LocalFile => {
    const f = files.get(op.file === 'image' ? 'image.qcow2' : op.file);
    if (f === undefined) throw new Error(`replay: no file ${op.file}`);
    return f;
  };
  for (let i = 0; i < upTo; i++) {
    const op = ops[i]!;
    if (op.op === 'record') {
      await writeState(fs, DIR, decodeState(op.data!));
    } else if (op.op === 'page') {
      const d = op.data!;
      await fileOf(op).write(d, 0, d.length, (2 * op.a + (op.b === 2 ? 0 : op.b)) * 4096);
    } else if (op.op === 'sync') {
      await fileOf(op).datasync();
    } else if (op.op === 'write') {
      const d = op.data!;
      await fileOf(op).write(d, 0, d.length, op.a);
    } else if (op.op === 'punch') {
      await fileOf(op).punchHole(op.a, op.b);
    } else if (op.op === 'truncate') {
      await fileOf(op).truncate(op.a);
    }
  }
  fs.crash(rng);
  return fs;
}

function baseOf(len: number): Buffer {
  const b = new Rng(99).bytes(len);
  b.fill(0, 0, 2 * C);
  return b;
}

function fetcherOf(base: Buffer): PresentFetcher {
  return {
    async fetch(first: number, count: number): Promise<Buffer> {
      await new Promise((r) => setImmediate(r));
      return Buffer.from(base.subarray(first * C, Math.min(base.length, (first + count) * C)));
    },
  };
}

const skip = nativeWritePathAvailable() ? false : 'the native addon is not built';
t.test('a new volume: the C path\'s log, crashed before every sync with torn sectors, recovers without losing fsynced data or changes', { skip }, (t) => crashRun(t, 11, null));
t.test('a restored volume: the same, with present bits (a lost one would refetch over fsynced data)', { skip }, (t) => crashRun(t, 12, baseOf(384 * 1024)));

async function crashRun(t: Test, seed: number, base: Buffer | null): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'island-native-crash-'));
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const vdir = join(tmp, 'v');
  const restore = base === null ? {} : { baseSnapshot: BASE_SNAP, baseLength: base.length, fetcher: fetcherOf(base) };
  const native = await NativeVolume.create(vdir, { name: 'v', virtualSize: 64 * 1024 * 1024, clusterSize: C, regionSize: 16 * C, generation: 1, flushIntervalMs: 0, sideLogBudget: 8 * C, opLogData: true, ...restore });
  const initial = new Map<string, Buffer>();
  for (const f of base === null ? FILES : [...FILES, 'present']) initial.set(f, await readFile(join(vdir, f)));
  const rng = new Rng(seed);
  const ops: NativeOp[] = [];
  const drain = (): void => {
    ops.push(...native.takeOps());
  };
  // What the guest sees: the base content where nothing was written yet.
  let cur = base === null ? Buffer.from(initial.get('image.qcow2')!) : Buffer.from(base);
  const fsyncs: FsyncMark[] = [{ at: 0, image: Buffer.from(cur) }];
  const sealed = new Map<string, Buffer>();
  function sealedBase(b: Buffer): void {
    sealed.set(BASE_SNAP, Buffer.from(b));
  }
  if (base !== null) sealedBase(base);
  let ids = 0;
  const span = 512 * 1024;
  for (let step = 0; step < 160; step++) {
    const k = rng.int(100);
    if (k < 55) {
      const off = rng.chance(0.4) ? rng.int(span / C) * C : rng.int(span);
      const size = rng.chance(0.4) ? (1 + rng.int(3)) * C : 1 + rng.int(2 * C);
      const buf = rng.chance(0.3) ? Buffer.alloc(size) : rng.bytes(size);
      await native.write(buf, off);
      if (off + size > cur.length) cur = Buffer.concat([cur, Buffer.alloc(off + size - cur.length)]);
      buf.copy(cur, off);
    } else if (k < 68) {
      await native.fsync();
      drain();
      fsyncs.push({ at: ops.length, image: Buffer.from(cur) });
    } else if (k < 75) {
      const off = rng.int(cur.length);
      const size = 1 + rng.int(3 * C);
      await native.discard(off, size);
      cur.fill(0, off, Math.min(cur.length, off + size));
    } else if (k < 79) {
      const to = rng.chance(0.5) ? Math.max(C, cur.length - rng.int(3 * C)) : cur.length + rng.int(3 * C);
      await native.truncate(to);
      cur = to <= cur.length ? Buffer.from(cur.subarray(0, to)) : Buffer.concat([cur, Buffer.alloc(to - cur.length)]);
    } else if (k < 85) {
      await native.flushBitmaps();
    } else {
      const image = Buffer.from(cur);
      const s = await native.seal();
      for (let i = 0; i < 6 && rng.chance(0.7); i++) {
        // Writes while the seal is open go through the side log.
        const off = rng.int(span);
        const buf = rng.bytes(1 + rng.int(C));
        await native.write(buf, off);
        if (off + buf.length > cur.length) cur = Buffer.concat([cur, Buffer.alloc(off + buf.length - cur.length)]);
        buf.copy(cur, off);
      }
      if (s.status === 'open' && rng.chance(0.7)) {
        for (const c of s.clusters()) {
          const got = await s.readSealed(c);
          const want = image.subarray(c * C, Math.min(image.length, (c + 1) * C));
          if (!got.equals(want)) t.fail(`sealed cluster ${c} is not its content at the seal`);
          s.markUploaded(c);
        }
        const id = snapshotId(++ids);
        sealed.set(id, image);
        await s.complete(id);
      } else if (s.status === 'open') {
        await s.abandon();
      }
    }
    drain();
  }
  await native.close();
  drain();
  t.ok(ops.length > 0, `${ops.length} operations logged`);

  // Crash points: before every fdatasync and every state record (sampled), and at the end.
  let points = ops.flatMap((op, i) => (op.op === 'sync' || op.op === 'record' ? [i] : []));
  const pick = new Rng(5);
  while (points.length > 90) points.splice(pick.int(points.length), 1);
  points = [...points, ops.length];
  let lostBytes = 0;
  let lostChanges = 0;
  for (const at of points) {
    const fs = await replay(initial, ops, at, new Rng(at + 1));
    const v = await Volume.open(DIR, { fs, flushIntervalMs: 0, ...(base === null ? {} : { fetcher: fetcherOf(base) }) });
    const image = Buffer.alloc(v.length);
    await v.read(image, 0);
    // The last fsync completed before the crash, and what was written since.
    const mark = [...fsyncs].reverse().find((m) => m.at <= at)!;
    const touched: Array<[number, number]> = [];
    for (let i = mark.at; i < at; i++) {
      const op = ops[i]!;
      if (op.file !== 'image') continue;
      if (op.op === 'write') touched.push([op.a, op.a + (op.data?.length ?? 0)]);
      if (op.op === 'punch') touched.push([op.a, op.a + op.b]);
      if (op.op === 'truncate') touched.push([op.a, Infinity]);
    }
    const isTouched = (b: number): boolean => touched.some(([x, y]) => b >= x && b < y);
    const n = Math.min(mark.image.length, image.length);
    if (image.length < mark.image.length && !isTouched(image.length)) {
      lostBytes++;
      t.fail(`crash before op ${at}: the image shrank from ${mark.image.length} to ${image.length} bytes`);
    }
    for (let b = 0; b < n; b++) {
      if (image[b] !== mark.image[b] && !isTouched(b)) {
        lostBytes++;
        t.fail(`crash before op ${at}: fsynced byte ${b} lost`);
        break;
      }
    }
    const committed = v.committedSnapshot;
    if (committed !== null) {
      const base = sealed.get(committed);
      if (base === undefined) {
        t.fail(`crash before op ${at}: committed snapshot ${committed} was never completed`);
      } else {
        for (let c = 0; c * C < image.length; c++) {
          const mine = image.subarray(c * C, Math.min(image.length, (c + 1) * C));
          const theirs = Buffer.alloc(mine.length);
          if (c * C < base.length) base.copy(theirs, 0, c * C, Math.min(base.length, c * C + mine.length));
          if (!mine.equals(theirs) && !v.isDirty(c)) {
            lostChanges++;
            t.fail(`crash before op ${at}: cluster ${c} differs from snapshot ${committed} but is not dirty`);
            break;
          }
        }
      }
    }
    await v.close();
  }
  t.equal(lostBytes, 0, `no fsynced byte lost at ${points.length} crash points`);
  t.equal(lostChanges, 0, 'no change lost from the tracking');
  t.ok(sealed.size > (base === null ? 0 : 1), `${sealed.size} snapshots completed in the stream`);
  if (base !== null) t.ok(native.stats().fetchedClusters > 0, 'clusters were fetched and installed');
}
