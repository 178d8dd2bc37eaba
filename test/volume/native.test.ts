import { spawnSync } from 'node:child_process';
import { closeSync, constants as fsc, openSync } from 'node:fs';
import { cp, mkdir, mkdtemp, open, readFile, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import t, { type Test } from 'tap';
import {
  DEFAULT_EXTENTS_PER_CALL,
  MAX_EXTENTS_PER_CALL,
  NATIVE_ADDON_PATH,
  dataExtents,
  eachDataExtent,
  nativeAvailable,
  punchHole,
  seekData,
  seekHole,
} from '../../src/volume/native.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

if (!nativeAvailable()) {
  t.fail(`the native addon does not load from ${NATIVE_ADDON_PATH}: run scripts/build-native.sh`);
  t.end();
  process.exit(1);
}

const dir = await mkdtemp(join(tmpdir(), 'island-native-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

let fileNo = 0;
async function newFile(t: Test): Promise<FileHandle> {
  const fh = await open(join(dir, `f${fileNo++}`), 'w+');
  t.teardown(() => fh.close().catch(() => {}));
  return fh;
}

/** Polls `cond` on the event loop until it holds, failing after `ms`. */
async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

function alignDown(n: number, blk: number): number {
  return Math.floor(n / blk) * blk;
}

function alignUp(n: number, blk: number): number {
  return Math.ceil(n / blk) * blk;
}

/** The extent a write of `len` bytes at `off` allocates: whole file system blocks. */
function blockExtent(off: number, len: number, blk: number): [number, number] {
  return [alignDown(off, blk), alignUp(off + len, blk) - alignDown(off, blk)];
}

// Hole tracking depends on the file system: ext4, xfs, btrfs and tmpfs have it, some do not.
const holesTracked = await (async () => {
  const fh = await open(join(dir, 'probe'), 'w+');
  try {
    await fh.truncate(1 * MiB);
    await fh.write(Buffer.alloc(4 * KiB, 1), 0, 4 * KiB, 512 * KiB);
    return (await seekData(fh.fd, 0)) === 512 * KiB;
  } finally {
    await fh.close();
  }
})();
const sparse = holesTracked ? {} : { skip: `the file system of ${dir} does not track holes` };

t.test('finds the data extents of a sparse file, aligned to the block size', sparse, async (t) => {
  const fh = await newFile(t);
  const blk = (await fh.stat()).blksize;
  // Three writes, two of them not block-aligned, then a long hole up to 64 MiB.
  const writes: Array<[number, number]> = [
    [0, 3000],
    [1 * MiB, 8 * KiB],
    [10 * MiB + 1000, 5000],
  ];
  for (const [off, len] of writes) await fh.write(Buffer.alloc(len, 0xab), 0, len, off);
  await fh.truncate(64 * MiB);
  const expected = writes.map(([off, len]) => blockExtent(off, len, blk));
  const [e0, e1, e2] = expected as [[number, number], [number, number], [number, number]];

  t.same(await dataExtents(fh.fd, 0, 64 * MiB), { extents: expected, next: null }, 'the whole file in one page');
  t.same(await dataExtents(fh.fd, 0, 1 * GiB), { extents: expected, next: null }, 'a range past the end of the file');

  // One extent per page: each page says where the next one starts.
  t.same(await dataExtents(fh.fd, 0, 64 * MiB, 1), { extents: [e0], next: e1[0] });
  t.same(await dataExtents(fh.fd, e1[0], 64 * MiB, 1), { extents: [e1], next: e2[0] });
  t.same(await dataExtents(fh.fd, e2[0], 64 * MiB, 1), { extents: [e2], next: null }, 'a full last page has no next');
  t.same(await dataExtents(fh.fd, 0, 64 * MiB, 2), { extents: [e0, e1], next: e2[0] });

  const walked: Array<[number, number]> = [];
  for await (const e of eachDataExtent(fh.fd, 0, 64 * MiB, { pageSize: 1 })) walked.push(e);
  t.same(walked, expected, 'eachDataExtent walks every page');

  // Clipping to the range asked for.
  t.same((await dataExtents(fh.fd, 1000, e1[0] + 4 * KiB)).extents, [
    [1000, e0[1] - 1000],
    [e1[0], 4 * KiB],
  ]);
  t.same(await dataExtents(fh.fd, 2 * MiB, 10 * MiB), { extents: [], next: null }, 'a range inside a hole');
  t.same(await dataExtents(fh.fd, 5 * MiB, 5 * MiB), { extents: [], next: null }, 'an empty range');
  t.same(await dataExtents(fh.fd, 64 * MiB, 128 * MiB), { extents: [], next: null }, 'a range past the end');
});

t.test('seekData and seekHole at the edges of data, holes and the end of the file', sparse, async (t) => {
  const fh = await newFile(t);
  const blk = (await fh.stat()).blksize;
  await fh.write(Buffer.alloc(blk, 1), 0, blk, 0);
  await fh.write(Buffer.alloc(2 * blk, 2), 0, 2 * blk, 1 * MiB);
  await fh.truncate(4 * MiB);
  const fd = fh.fd;

  t.equal(await seekData(fd, 0), 0, 'data at 0');
  t.equal(await seekData(fd, blk - 1), blk - 1, 'inside data: the offset itself');
  t.equal(await seekHole(fd, 0), blk, 'the hole after the first block');
  t.equal(await seekHole(fd, blk), blk, 'inside a hole: the offset itself');
  t.equal(await seekData(fd, blk), 1 * MiB, 'next data after the hole');
  t.equal(await seekData(fd, 1 * MiB - 1), 1 * MiB, 'one byte before data');
  t.equal(await seekHole(fd, 1 * MiB), 1 * MiB + 2 * blk, 'end of the second extent');
  t.equal(await seekData(fd, 1 * MiB + 2 * blk - 1), 1 * MiB + 2 * blk - 1, 'last byte of data');
  t.equal(await seekData(fd, 1 * MiB + 2 * blk), null, 'no data after the last extent, before the end of the file');
  t.equal(await seekHole(fd, 4 * MiB - 1), 4 * MiB - 1, 'last byte of the file is in the trailing hole');
  t.equal(await seekData(fd, 4 * MiB), null, 'no data at the end of the file');
  t.equal(await seekHole(fd, 4 * MiB), 4 * MiB, 'at the end of the file: the offset itself');
  t.equal(await seekHole(fd, 100 * MiB), 100 * MiB, 'past the end of the file: the offset itself');
  t.equal(await seekData(fd, 100 * MiB), null, 'no data past the end of the file');

  const full = await newFile(t);
  await full.write(Buffer.alloc(10_000, 3), 0, 10_000, 0);
  t.equal(await seekHole(full.fd, 0), 10_000, 'a file without holes: its end is the hole');
  t.same(await dataExtents(full.fd, 0, 1 * MiB), { extents: [[0, 10_000]], next: null }, 'its one extent ends at the end of the file');
});

t.test('punchHole frees an aligned range, which then reads zeros and is a hole', sparse, async (t) => {
  const fh = await newFile(t);
  const size = 256 * KiB;
  await fh.write(Buffer.alloc(size, 0x5a), 0, size, 0);
  await fh.datasync();
  const before = await fh.stat();

  await punchHole(fh.fd, 64 * KiB, 64 * KiB);
  const after = await fh.stat();
  t.equal(after.size, size, 'the size does not change');
  t.ok(after.blocks <= before.blocks - (64 * KiB) / 512, `blocks went from ${before.blocks} to ${after.blocks} (512-byte units)`);

  const buf = Buffer.alloc(size);
  await fh.read(buf, 0, size, 0);
  t.ok(buf.subarray(64 * KiB, 128 * KiB).equals(Buffer.alloc(64 * KiB)), 'the punched range reads zeros');
  t.ok(buf.subarray(0, 64 * KiB).equals(Buffer.alloc(64 * KiB, 0x5a)), 'the data before it is intact');
  t.ok(buf.subarray(128 * KiB).equals(Buffer.alloc(128 * KiB, 0x5a)), 'the data after it is intact');
  t.equal(await seekHole(fh.fd, 0), 64 * KiB, 'the range is a hole');
  t.equal(await seekData(fh.fd, 64 * KiB), 128 * KiB, 'data resumes after it');
  t.same((await dataExtents(fh.fd, 0, size)).extents, [
    [0, 64 * KiB],
    [128 * KiB, 128 * KiB],
  ]);

  await punchHole(fh.fd, 100, 50);
  await fh.read(buf, 0, 256, 0);
  t.ok(buf.subarray(100, 150).equals(Buffer.alloc(50)), 'an unaligned punch zeroes its bytes');
  t.equal(buf[99], 0x5a, 'the byte before an unaligned punch is intact');
  t.equal(buf[150], 0x5a, 'the byte after an unaligned punch is intact');
  t.equal(await seekData(fh.fd, 0), 0, 'an unaligned punch inside a block leaves the block allocated');

  await punchHole(fh.fd, 1 * MiB, 64 * KiB);
  t.equal((await fh.stat()).size, size, 'punching past the end of the file does not grow it');
  await punchHole(fh.fd, 0, 0);
  t.equal((await fh.stat()).size, size, 'a zero-length punch does nothing');
});

t.test('syscall failures are LOCAL_IO with the errno name', async (t) => {
  const path = join(dir, 'closed');
  const fd = openSync(path, 'w+');
  closeSync(fd);
  const ebadf = { code: 'LOCAL_IO', details: { errno: 'EBADF', fd } };
  await t.rejects(seekData(fd, 0), { ...ebadf, details: { ...ebadf.details, op: 'seekData', syscall: 'lseek(SEEK_DATA)' } });
  await t.rejects(seekHole(fd, 0), { ...ebadf, details: { ...ebadf.details, op: 'seekHole', syscall: 'lseek(SEEK_HOLE)' } });
  await t.rejects(punchHole(fd, 0, 4096), { ...ebadf, details: { ...ebadf.details, op: 'punchHole', syscall: 'fallocate' } });
  await t.rejects(dataExtents(fd, 0, 4096), { ...ebadf, details: { ...ebadf.details, op: 'dataExtents' } });

  const never = 2 ** 31 - 1;
  await t.rejects(seekData(never, 0), { code: 'LOCAL_IO', details: { errno: 'EBADF' } }, 'an fd that was never open');

  const ro = openSync(path, 'r');
  t.teardown(() => closeSync(ro));
  await t.rejects(punchHole(ro, 0, 4096), { code: 'LOCAL_IO', details: { errno: 'EBADF' } }, 'punching a read-only fd');

  const fifo = join(dir, 'not-seekable');
  t.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  const rw = openSync(fifo, fsc.O_RDWR | fsc.O_NONBLOCK);
  t.teardown(() => closeSync(rw));
  await t.rejects(seekData(rw, 0), { code: 'LOCAL_IO', details: { errno: 'ESPIPE' } }, 'seeking a pipe');
  await t.rejects(dataExtents(rw, 0, 10), { code: 'LOCAL_IO', details: { errno: 'ESPIPE' } }, 'listing a pipe');
});

t.test('bad arguments are INVALID_ARGUMENT and never reach the addon', async (t) => {
  const bad = { code: 'INVALID_ARGUMENT' };
  const fh = await newFile(t);
  const fd = fh.fd;
  for (const f of [-1, 1.5, NaN, Infinity, 2 ** 31, '3' as unknown as number, undefined as unknown as number]) {
    await t.rejects(seekData(f, 0), bad, `seekData fd ${String(f)}`);
    await t.rejects(seekHole(f, 0), bad, `seekHole fd ${String(f)}`);
    await t.rejects(punchHole(f, 0, 1), bad, `punchHole fd ${String(f)}`);
    await t.rejects(dataExtents(f, 0, 1), bad, `dataExtents fd ${String(f)}`);
  }
  for (const o of [-1, 0.5, 2 ** 53, NaN, -Infinity, 10n as unknown as number, null as unknown as number]) {
    await t.rejects(seekData(fd, o), bad, `seekData offset ${String(o)}`);
    await t.rejects(seekHole(fd, o), bad, `seekHole offset ${String(o)}`);
    await t.rejects(punchHole(fd, o, 1), bad, `punchHole offset ${String(o)}`);
    await t.rejects(punchHole(fd, 0, o), bad, `punchHole length ${String(o)}`);
    await t.rejects(dataExtents(fd, o, 1), bad, `dataExtents start ${String(o)}`);
    await t.rejects(dataExtents(fd, 0, o), bad, `dataExtents end ${String(o)}`);
  }
  await t.rejects(punchHole(fd, 2 ** 53 - 10, 100), bad, 'offset + length past 2^53 - 1');
  await t.rejects(dataExtents(fd, 10, 5), bad, 'start past end');
  for (const m of [0, -1, 1.5, MAX_EXTENTS_PER_CALL + 1, NaN]) {
    await t.rejects(dataExtents(fd, 0, 10, m), bad, `maxExtents ${m}`);
  }
  t.same(await dataExtents(fd, 0, 10, MAX_EXTENTS_PER_CALL), { extents: [], next: null }, 'the largest page size is accepted');
  t.ok(DEFAULT_EXTENTS_PER_CALL <= MAX_EXTENTS_PER_CALL);
});

t.test('calls wait on the thread pool while the event loop keeps running', async (t) => {
  // Occupy every pool thread with an open() of a FIFO that has no writer yet: a call queued
  // behind them cannot run, yet timers keep firing. A synchronous implementation would
  // have answered already; this one answers once a writer releases the pool.
  const poolSize = Number(process.env['UV_THREADPOOL_SIZE']) || 4;
  const fifo = join(dir, 'gate');
  t.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  const fh = await newFile(t);
  await fh.write(Buffer.alloc(4096, 1), 0, 4096, 0);

  const readers = Array.from({ length: poolSize }, () => open(fifo, 'r'));
  let writer: number | undefined;
  let released = false;
  const release = async (): Promise<void> => {
    released = true;
    // O_NONBLOCK: fails with ENXIO until a reader is waiting, instead of blocking this thread.
    await until(() => {
      try {
        writer ??= openSync(fifo, fsc.O_WRONLY | fsc.O_NONBLOCK);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENXIO') return false;
        throw err;
      }
    }, 'a reader of the gate FIFO');
    for (const r of await Promise.all(readers)) await r.close();
    if (writer !== undefined) closeSync(writer);
  };
  t.teardown(() => (released ? undefined : release()));

  let settled = false;
  const pending = seekHole(fh.fd, 0).finally(() => {
    settled = true;
  });
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  t.teardown(() => clearInterval(timer));
  await until(() => ticks >= 20, '20 timer ticks');
  t.equal(settled, false, `after ${ticks} timer ticks the call still waits for a pool thread`);

  await release();
  t.equal(await pending, 4096, 'it answers once the pool is free');
});

t.test('many calls in parallel give the same answers and leave the event loop free', sparse, async (t) => {
  // A fragmented file: one block of data every other block, 2048 extents.
  const fh = await newFile(t);
  const blk = (await fh.stat()).blksize;
  const extents = 2048;
  for (let i = 0; i < extents; i++) await fh.write(Buffer.alloc(blk, 7), 0, blk, 2 * i * blk);
  const size = 2 * extents * blk;
  await fh.truncate(size);
  const expected = Array.from({ length: extents }, (_, i): [number, number] => [2 * i * blk, blk]);

  const wantPage = JSON.stringify({ extents: expected, next: null });

  // The timer keeps ticking while the calls run on the pool; its longest gap is reported.
  let ticks = 0;
  let last = performance.now();
  let longest = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
    ticks++;
  }, 1);
  t.teardown(() => clearInterval(timer));
  const started = performance.now();
  const wrong: string[] = [];
  const check = (what: string, got: unknown, want: unknown): void => {
    if (got !== want) wrong.push(`${what}: got ${String(got)}, want ${String(want)}`);
  };
  const calls: Array<Promise<void>> = [];
  for (let i = 0; i < 200; i++) {
    if (i % 4 === 0) calls.push(dataExtents(fh.fd, 0, size, MAX_EXTENTS_PER_CALL).then((p) => check('dataExtents', JSON.stringify(p), wantPage)));
    const off = (i * 7919 * blk + (i % blk)) % size;
    const block = Math.floor(off / blk);
    const inData = block % 2 === 0;
    const nextBlock = (block + 1) * blk;
    calls.push(seekData(fh.fd, off).then((r) => check(`seekData ${off}`, r, inData ? off : nextBlock < size ? nextBlock : null)));
    calls.push(seekHole(fh.fd, off).then((r) => check(`seekHole ${off}`, r, inData ? nextBlock : off)));
  }
  await Promise.all(calls);
  const elapsed = performance.now() - started;
  t.same(wrong, [], `${calls.length} calls in parallel answer what the layout says`);
  t.ok(ticks >= 1, `the timer ticked ${ticks} times in ${elapsed.toFixed(0)} ms; longest gap ${longest.toFixed(1)} ms`);
});

t.test('the addon is found relative to the module, and its absence is NATIVE_MISSING', async (t) => {
  // Copies of src/ elsewhere: without an addon next to them, with a broken one, with the real one.
  const message = 'island native addon not built: run scripts/build-native.sh (needs g++, make, python3)';
  const src = resolve(import.meta.dirname, '../../src');
  const copy = async (name: string, addon?: Buffer): Promise<typeof import('../../src/volume/native.js')> => {
    const root = join(dir, name);
    await cp(src, join(root, 'src'), { recursive: true });
    await writeFile(join(root, 'package.json'), JSON.stringify({ type: 'module' }));
    if (addon) {
      await mkdir(join(root, 'native/build/Release'), { recursive: true });
      await writeFile(join(root, 'native/build/Release/island_native.node'), addon);
    }
    return (await import(pathToFileURL(join(root, 'src/volume/native.ts')).href)) as typeof import('../../src/volume/native.js');
  };

  const missing = await copy('missing');
  t.equal(missing.NATIVE_ADDON_PATH, join(dir, 'missing/native/build/Release/island_native.node'));
  t.equal(missing.nativeAvailable(), false, 'not available');
  await t.rejects(missing.seekData(0, 0), { code: 'NATIVE_MISSING', message, details: { path: missing.NATIVE_ADDON_PATH } });
  await t.rejects(missing.dataExtents(0, 0, 1), { code: 'NATIVE_MISSING', message });
  await t.rejects(missing.seekData(-1, 0), { code: 'INVALID_ARGUMENT' }, 'arguments are checked first');

  const broken = await copy('broken', Buffer.from('not a shared object'));
  t.equal(broken.nativeAvailable(), false, 'a file that does not load is not available');
  const err = await broken.punchHole(0, 0, 1).catch((e: unknown) => e);
  t.match(err, { code: 'NATIVE_MISSING', message });
  t.ok((err as Error).cause instanceof Error, 'the load error is kept as the cause');

  const real = await copy('real', await readFile(NATIVE_ADDON_PATH));
  t.equal(real.nativeAvailable(), true, 'the real addon next to a copy of src/ loads');
  const fh = await newFile(t);
  await fh.write(Buffer.alloc(100, 1), 0, 100, 0);
  t.equal(await real.seekHole(fh.fd, 0), 100);
});
