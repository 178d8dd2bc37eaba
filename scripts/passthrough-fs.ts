/**
 * A minimal fuse-native passthrough file system: the yardstick for island's FUSE data path
 * (scripts/bench-fuse.ts). It shows the regular files of one local directory and passes
 * reads, writes, fsync and truncation straight to them, with nothing in between: what the
 * binding itself can carry, the ceiling for any file system served from Node with it.
 * Files are not created, removed or renamed through it (ENOSYS): the bench lays them out
 * in the backing directory beforehand.
 *
 *   npx tsx scripts/passthrough-fs.ts --backing DIR --mount MNT [--cached]
 *
 * Mounted with the options island uses: big_writes through fsname (fuse-native has no option
 * for it) and no per-request timeout. Prints `ready MNT` on stdout once mounted; SIGTERM or
 * SIGINT unmounts and exits (exit 1 when the mount is busy and stays mounted).
 *
 * O_DIRECT. A client that opens with O_DIRECT (fio direct=1, QEMU cache.direct=on) gets a
 * backing descriptor opened with O_DIRECT as well, so a read really comes from the disk, as
 * it would from a local file; a passthrough that dropped it would serve reads from the page
 * cache and look faster than the disk. The buffers libfuse hands over are not aligned as
 * O_DIRECT requires, so data goes through aligned bounce buffers. A request whose offset or
 * length is not aligned uses a second, buffered descriptor. `--cached` strips O_DIRECT
 * instead and keeps every file in the page cache: what island's engine does with its image.
 *
 * Never call into the mount from this process (no *Sync calls on its paths): the kernel
 * waits on this event loop for the answer.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import fs from 'node:fs';
import { constants as osc } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import Fuse from 'fuse-native';

// Reads and writes run on libuv's pool; its default of 4 threads would serialise parallel
// requests. Same value as island's daemon, so both are measured with the same pool.
process.env.UV_THREADPOOL_SIZE ??= '32';

const { values } = parseArgs({
  options: {
    backing: { type: 'string' },
    mount: { type: 'string' },
    cached: { type: 'boolean', default: false },
  },
});
if (!values.backing || !values.mount) {
  process.stderr.write('usage: passthrough-fs.ts --backing DIR --mount MNT [--cached]\n');
  process.exit(2);
}
const backing = values.backing;
const mountpoint = values.mount;
const keepDirect = !values.cached;

/** The host's O_DIRECT (0o40000 on x86-64, 0o200000 on arm64), as the kernel passes it in open flags. */
const O_DIRECT = fsc.O_DIRECT;
/** Offsets, lengths and buffer addresses aligned to 4 KiB satisfy O_DIRECT on any block device. */
const DIO_ALIGN = 4096;
/** libfuse 2.9 caps reads and writes at 128 KiB: one slot holds any request. */
const SLOT_BYTES = 128 * 1024;
/** Slots per slab: more than libfuse's worker threads have in flight in practice. */
const SLOTS_PER_SLAB = 64;
/** Memory addresses tried when looking for an aligned one: malloc aligns to 16 at least. */
const ADDRESS_STEP = 16;

type Cb = (...args: unknown[]) => void;

/** A raw descriptor (a FileHandle would close it when collected). */
const openFd = promisify(fs.open);

/** fuse-native takes errors as negative errno values. */
const EBADF = -osc.errno.EBADF;
const EIO = -osc.errno.EIO;
const ENOMEM = -osc.errno.ENOMEM;

/** A negative errno for fuse-native from a Node fs error (whose errno is already negative). */
function errnoOf(err: NodeJS.ErrnoException | null): number {
  return typeof err?.errno === 'number' && err.errno < 0 ? err.errno : EIO;
}

/**
 * Aligned memory for O_DIRECT. Node cannot tell a buffer's address, so each slab is
 * over-allocated and probed: an O_DIRECT read into the slab at successive offsets fails
 * with EINVAL until the address is aligned. The probe file is unlinked at once; its
 * descriptor lives as long as the process.
 */
class AlignedPool {
  private readonly free: Buffer[] = [];

  private constructor(private readonly probeFd: number) {}

  static async open(dir: string): Promise<AlignedPool> {
    const path = join(dir, `.passthrough-probe-${process.pid}`);
    await fsp.writeFile(path, Buffer.alloc(2 * DIO_ALIGN, 1));
    const fd = await openFd(path, fsc.O_RDONLY | O_DIRECT);
    await fsp.unlink(path);
    return new AlignedPool(fd);
  }

  /** `bytes` of aligned memory (a multiple of DIO_ALIGN). */
  async aligned(bytes: number): Promise<Buffer> {
    const raw = Buffer.allocUnsafeSlow(bytes + DIO_ALIGN);
    for (let at = 0; at < DIO_ALIGN; at += ADDRESS_STEP) {
      const ok = await new Promise<boolean>((resolve) => {
        fs.read(this.probeFd, raw, at, DIO_ALIGN, 0, (err) => resolve(err === null));
      });
      if (ok) return raw.subarray(at, at + bytes);
    }
    throw new Error('no O_DIRECT-aligned address found in a fresh buffer');
  }

  async get(len: number): Promise<Buffer> {
    if (len > SLOT_BYTES) return this.aligned(Math.ceil(len / DIO_ALIGN) * DIO_ALIGN);
    if (this.free.length === 0) {
      const slab = await this.aligned(SLOT_BYTES * SLOTS_PER_SLAB);
      for (let i = 0; i < SLOTS_PER_SLAB; i++) this.free.push(slab.subarray(i * SLOT_BYTES, (i + 1) * SLOT_BYTES));
    }
    return this.free.pop()!;
  }

  put(buf: Buffer): void {
    if (buf.length === SLOT_BYTES) this.free.push(buf);
  }
}

interface Handle {
  /** The descriptor for aligned requests: O_DIRECT when the client asked for it. */
  fd: number;
  /** Buffered descriptor for unaligned requests on an O_DIRECT handle; else the same as fd. */
  buffered: number;
  direct: boolean;
}

const pool = await AlignedPool.open(backing);
const handles = new Map<number, Handle>();
let nextHandle = 1;

function real(path: string): string {
  return join(backing, path);
}

function aligned(pos: number, len: number): boolean {
  return pos % DIO_ALIGN === 0 && len % DIO_ALIGN === 0;
}

function closeHandle(h: Handle): void {
  fs.close(h.fd, () => undefined);
  if (h.buffered !== h.fd) fs.close(h.buffered, () => undefined);
}

function directRead(h: Handle, buf: Buffer, len: number, pos: number, cb: Cb): void {
  pool.get(len).then((bounce) => {
    fs.read(h.fd, bounce, 0, len, pos, (err, n) => {
      if (!err) bounce.copy(buf, 0, 0, n);
      pool.put(bounce);
      cb(err ? errnoOf(err) : n);
    });
  }, () => cb(ENOMEM));
}

function directWrite(h: Handle, buf: Buffer, len: number, pos: number, cb: Cb): void {
  pool.get(len).then((bounce) => {
    buf.copy(bounce, 0, 0, len);
    fs.write(h.fd, bounce, 0, len, pos, (err, n) => {
      pool.put(bounce);
      cb(err ? errnoOf(err) : n);
    });
  }, () => cb(ENOMEM));
}

const ops = {
  init: (cb: Cb) => cb(0),
  getattr: (path: string, cb: Cb) => fs.lstat(real(path), (err, st) => (err ? cb(errnoOf(err)) : cb(0, st))),
  fgetattr: (path: string, _fd: number, cb: Cb) => fs.lstat(real(path), (err, st) => (err ? cb(errnoOf(err)) : cb(0, st))),
  readdir: (path: string, cb: Cb) => fs.readdir(real(path), (err, names) => (err ? cb(errnoOf(err)) : cb(0, names))),
  open: (path: string, flags: number, cb: Cb) => {
    const direct = keepDirect && (flags & O_DIRECT) !== 0;
    const base = flags & ~O_DIRECT;
    fs.open(real(path), direct ? base | O_DIRECT : base, (err, fd) => {
      if (err) return cb(errnoOf(err));
      const done = (buffered: number): void => {
        const id = nextHandle++;
        handles.set(id, { fd, buffered, direct });
        cb(0, id);
      };
      if (!direct) return done(fd);
      fs.open(real(path), base, (err2, buffered) => {
        if (err2) {
          fs.close(fd, () => undefined);
          return cb(errnoOf(err2));
        }
        done(buffered);
      });
    });
  },
  release: (_path: string, id: number, cb: Cb) => {
    const h = handles.get(id);
    handles.delete(id);
    if (h) closeHandle(h);
    cb(0);
  },
  read: (_path: string, id: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
    const h = handles.get(id);
    if (!h) return cb(EBADF);
    if (h.direct && aligned(pos, len)) return directRead(h, buf, len, pos, cb);
    fs.read(h.buffered, buf, 0, len, pos, (err, n) => cb(err ? errnoOf(err) : n));
  },
  write: (_path: string, id: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
    const h = handles.get(id);
    if (!h) return cb(EBADF);
    if (h.direct && aligned(pos, len)) return directWrite(h, buf, len, pos, cb);
    fs.write(h.buffered, buf, 0, len, pos, (err, n) => cb(err ? errnoOf(err) : n));
  },
  fsync: (_path: string, datasync: boolean, id: number, cb: Cb) => {
    const h = handles.get(id);
    if (!h) return cb(EBADF);
    const fd = h.buffered; // an fsync of either descriptor covers the file
    (datasync ? fs.fdatasync : fs.fsync)(fd, (err) => cb(err ? errnoOf(err) : 0));
  },
  flush: (_path: string, _id: number, cb: Cb) => cb(0),
  truncate: (path: string, size: number, cb: Cb) => fs.truncate(real(path), size, (err) => cb(err ? errnoOf(err) : 0)),
  ftruncate: (_path: string, id: number, size: number, cb: Cb) => {
    const h = handles.get(id);
    if (!h) return cb(EBADF);
    fs.ftruncate(h.buffered, size, (err) => cb(err ? errnoOf(err) : 0));
  },
  utimens: (path: string, atime: number, mtime: number, cb: Cb) =>
    fs.utimes(real(path), new Date(atime), new Date(mtime), (err) => cb(err ? errnoOf(err) : 0)),
};

const fuse = new Fuse(mountpoint, ops, { timeout: false, mkdir: true, force: true, fsname: 'passthrough,big_writes', subtype: 'passthrough' });

await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
process.stdout.write(`ready ${mountpoint}\n`);

let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  fuse.unmount((err) => {
    if (err) {
      process.stderr.write(`passthrough-fs: cannot unmount ${mountpoint}: ${err.message}\n`);
      process.exit(1);
    }
    process.exit(0);
  });
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
