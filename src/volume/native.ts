/**
 * Sparse-file primitives Node does not offer: find where a local file holds data and where
 * it has holes, and punch holes into it. This is the only module of island that loads the
 * native addon (native/, built by scripts/build-native.sh into
 * native/build/Release/island_native.node); the rest of island calls the functions below.
 *
 * Every call runs its syscalls on the libuv thread pool and returns a promise: they can
 * block on the disk, and the daemon serves FUSE from this event loop. The pool is shared
 * with fs, so at most MAX_CALLS_IN_FLIGHT calls are on it at once; the rest wait here, in
 * order. Seeks on one open file take the kernel's file-position lock, so parallel scans of
 * one fd go no faster than one after the other: callers scan a file one call at a time.
 *
 * The seeks (seekData, seekHole, dataExtents) move the file position of `fd`. island reads
 * and writes volume files only at explicit positions, so nothing depends on it.
 *
 * Errors (IslandError codes):
 *   NATIVE_MISSING    the addon is not built or does not load (tried once, at the first call)
 *   LOCAL_IO          a syscall failed; details.errno is its errno name ('EBADF', ...),
 *                     details.syscall the call, details.fd and the offsets the arguments
 *   INVALID_ARGUMENT  a bad fd, offset or length; caught before anything reaches the addon
 */
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { IslandError } from '../errors.js';
import { throwIfAborted } from '../store/keys.js';
import { Semaphore } from '../store/limit.js';

/** The built addon. This file sits in src/volume/ or dist/volume/: two levels below the package root. */
export const NATIVE_ADDON_PATH = fileURLToPath(new URL('../../native/build/Release/island_native.node', import.meta.url));

/** The addon contract this module speaks (ISLAND_NATIVE_ABI in native/island_native.c). */
const NATIVE_ABI = 2;

const MISSING_MESSAGE = 'island native addon not built: run scripts/build-native.sh (needs g++, make, python3)';

/**
 * Most extents one dataExtents call returns: the addon's own bound (1 MiB of scratch memory
 * and a few milliseconds of one pool thread on a badly fragmented file).
 */
export const MAX_EXTENTS_PER_CALL = 65536;

/** Extents per call when the caller does not say: 16 KiB of results, well under a millisecond. */
export const DEFAULT_EXTENTS_PER_CALL = 1024;

/**
 * Addon calls on the libuv pool at once: half of its default 4 threads, so the fs reads and
 * writes that serve FUSE always find a free thread, however many scans or punches are queued.
 */
export const MAX_CALLS_IN_FLIGHT = 2;
const inFlight = new Semaphore(MAX_CALLS_IN_FLIGHT);

/** Largest fd the addon accepts (a C int). */
const MAX_FD = 2 ** 31 - 1;

/** What native/island_native.c exports; see the comment at its top. */
interface Addon {
  readonly abi: number;
  readonly maxExtentsPerCall: number;
  /** -1 when there is no data at or after offset. */
  seekData(fd: number, offset: number): Promise<number>;
  /** -1 when offset is at or past the end of the file. */
  seekHole(fd: number, offset: number): Promise<number>;
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /** extents: flat (offset, length) pairs; next: -1 when the range is exhausted. */
  dataExtents(fd: number, start: number, end: number, max: number): Promise<{ extents: Float64Array; next: number }>;
  /** flock(LOCK_EX | LOCK_NB): false when another open file holds the lock. */
  lockExclusive(fd: number): Promise<boolean>;
}

let loaded: { addon: Addon } | { error: IslandError } | undefined;

function load(): { addon: Addon } | { error: IslandError } {
  if (loaded) return loaded;
  try {
    const addon = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as Partial<Addon> | null;
    if (addon?.abi !== NATIVE_ABI || addon.maxExtentsPerCall !== MAX_EXTENTS_PER_CALL || typeof addon.dataExtents !== 'function') {
      loaded = {
        error: new IslandError('NATIVE_MISSING', 'island native addon is out of date: run scripts/build-native.sh (needs g++, make, python3)', {
          details: { path: NATIVE_ADDON_PATH, abi: addon?.abi, expectedAbi: NATIVE_ABI },
        }),
      };
    } else {
      loaded = { addon: addon as Addon };
    }
  } catch (err) {
    loaded = { error: new IslandError('NATIVE_MISSING', MISSING_MESSAGE, { cause: err, details: { path: NATIVE_ADDON_PATH } }) };
  }
  return loaded;
}

function addon(): Addon {
  const r = load();
  if ('error' in r) throw r.error;
  return r.addon;
}

/**
 * The loaded addon object itself, for the native volume write path (native-volume.ts, whose
 * exports native/volume/addon.c lists). NATIVE_MISSING when it is not built.
 */
export function nativeAddonObject(): object {
  return addon();
}

/** True when the addon is built and loads; the first call tries to load it. */
export function nativeAvailable(): boolean {
  return 'addon' in load();
}

// ---------- arguments ----------

function checkFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0 || fd > MAX_FD) {
    throw new IslandError('INVALID_ARGUMENT', `fd must be an integer in [0, ${MAX_FD}], got ${String(fd)}`, { details: { fd } });
  }
}

function checkOffset(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new IslandError('INVALID_ARGUMENT', `${name} must be a non-negative safe integer, got ${String(value)}`, { details: { [name]: value } });
  }
}

// ---------- errors ----------

/** errno number -> name; the first name wins where two share a number (EAGAIN, ENOTSUP). */
const ERRNO_NAMES = new Map<number, string>();
for (const [name, n] of Object.entries(osConstants.errno)) if (!ERRNO_NAMES.has(n)) ERRNO_NAMES.set(n, name);

/** A rejection of the addon as an IslandError: LOCAL_IO for a failed syscall, INTERNAL otherwise. */
function callError(op: string, args: Record<string, unknown>, err: unknown): IslandError {
  const e = err as { errno?: unknown; syscall?: unknown; message?: unknown } | null;
  if (typeof e?.errno !== 'number') {
    const message = typeof e?.message === 'string' ? e.message : String(err);
    return new IslandError('INTERNAL', `${op}: ${message}`, { cause: err, details: { op, ...args } });
  }
  const errno = ERRNO_NAMES.get(e.errno) ?? `errno ${e.errno}`;
  const syscall = typeof e.syscall === 'string' ? e.syscall : op;
  return new IslandError('LOCAL_IO', `${op} on fd ${String(args['fd'])} failed: ${syscall}: ${errno}`, {
    cause: err,
    details: { op, ...args, syscall, errno },
  });
}

async function call<T>(op: string, args: Record<string, unknown>, f: (a: Addon) => Promise<T>): Promise<T> {
  const a = addon();
  try {
    return await inFlight.run(() => f(a));
  } catch (err) {
    throw callError(op, args, err);
  }
}

// ---------- the API ----------

/**
 * The first offset at or after `offset` that holds data (lseek SEEK_DATA), or null when
 * no data follows (past the last data byte, or at or past the end of the file).
 */
export async function seekData(fd: number, offset: number): Promise<number | null> {
  checkFd(fd);
  checkOffset('offset', offset);
  const r = await call('seekData', { fd, offset }, (a) => a.seekData(fd, offset));
  return r < 0 ? null : r;
}

/**
 * The first offset at or after `offset` that is in a hole (lseek SEEK_HOLE). The end of the
 * file counts as a hole, so a file without holes answers its size; at or past the end of the
 * file everything is a hole and the answer is `offset` itself.
 */
export async function seekHole(fd: number, offset: number): Promise<number> {
  checkFd(fd);
  checkOffset('offset', offset);
  const r = await call('seekHole', { fd, offset }, (a) => a.seekHole(fd, offset));
  return r < 0 ? offset : r;
}

/**
 * Deallocates [offset, offset + length) (fallocate PUNCH_HOLE | KEEP_SIZE): the range reads
 * as zeros afterwards, the blocks it covers entirely are freed, partial blocks at its edges
 * are zeroed in place, and the file size does not change. A zero length does nothing. A file
 * system without hole punching rejects with LOCAL_IO and errno ENOTSUP.
 */
export async function punchHole(fd: number, offset: number, length: number): Promise<void> {
  checkFd(fd);
  checkOffset('offset', offset);
  checkOffset('length', length);
  if (!Number.isSafeInteger(offset + length)) {
    throw new IslandError('INVALID_ARGUMENT', `offset + length is past 2^53 - 1 (${offset} + ${length})`, { details: { offset, length } });
  }
  if (length === 0) return;
  await call('punchHole', { fd, offset, length }, (a) => a.punchHole(fd, offset, length));
}

/** One page of data extents, and where the next page starts. */
export interface ExtentPage {
  /** Data extents as [offset, length], ascending, clipped to the range asked for. */
  extents: Array<[offset: number, length: number]>;
  /** Offset of the next data extent when the page is full; null when the range is exhausted. */
  next: number | null;
}

/**
 * The data extents inside [start, end), at most `maxExtents` of them (SEEK_DATA and SEEK_HOLE
 * in a loop, on one pool thread). Extents follow the file system's allocation, so they are
 * aligned to its block size except where clipped to the range or ended by the end of the
 * file. When `next` is not null, ask again from `next` for the rest.
 */
export async function dataExtents(fd: number, start: number, end: number, maxExtents = DEFAULT_EXTENTS_PER_CALL): Promise<ExtentPage> {
  checkFd(fd);
  checkOffset('start', start);
  checkOffset('end', end);
  if (start > end) {
    throw new IslandError('INVALID_ARGUMENT', `start ${start} is past end ${end}`, { details: { start, end } });
  }
  if (!Number.isInteger(maxExtents) || maxExtents < 1 || maxExtents > MAX_EXTENTS_PER_CALL) {
    throw new IslandError('INVALID_ARGUMENT', `maxExtents must be an integer in [1, ${MAX_EXTENTS_PER_CALL}], got ${String(maxExtents)}`, {
      details: { maxExtents },
    });
  }
  const r = await call('dataExtents', { fd, start, end }, (a) => a.dataExtents(fd, start, end, maxExtents));
  const extents: Array<[number, number]> = [];
  for (let i = 0; i + 1 < r.extents.length; i += 2) extents.push([r.extents[i] ?? 0, r.extents[i + 1] ?? 0]);
  return { extents, next: r.next < 0 ? null : r.next };
}

/**
 * Take the exclusive advisory lock of an open file (flock LOCK_EX | LOCK_NB), without
 * waiting: true when this open file now holds it, false when another one does. The kernel
 * releases it when the file's last descriptor closes, also when the process is killed, so a
 * lock never outlives its holder.
 */
export async function lockExclusive(fd: number): Promise<boolean> {
  checkFd(fd);
  return call('lockExclusive', { fd }, (a) => a.lockExclusive(fd));
}

export interface EachDataExtentOptions {
  /** Extents fetched per addon call (default DEFAULT_EXTENTS_PER_CALL). */
  pageSize?: number;
  /** Stops the walk between pages with ABORTED. */
  signal?: AbortSignal;
}

/** Every data extent inside [start, end) as [offset, length], one dataExtents page at a time. */
export async function* eachDataExtent(fd: number, start: number, end: number, opts: EachDataExtentOptions = {}): AsyncGenerator<[number, number]> {
  let from: number | null = start;
  while (from !== null) {
    throwIfAborted(opts.signal);
    const page: ExtentPage = await dataExtents(fd, from, end, opts.pageSize);
    yield* page.extents;
    from = page.next;
  }
}
