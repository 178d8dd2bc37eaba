/**
 * The FUSE adapter: a thin mapping of kernel requests onto volumes.
 *
 * The mount shows one regular file per served volume, `<name>.qcow2`, in its root and
 * nothing else. Reads, writes, fsync and truncation go straight to the volume engine;
 * every error becomes an errno through one table (errno.ts). Files cannot be created,
 * removed, renamed or linked by hand (EPERM). Several opens of one file are allowed
 * (QEMU reopens images when it changes permissions); exclusivity between VMs is QEMU's
 * own image locking, and island refuses to attach one volume twice.
 *
 * Permissions: the mount is allow_other (QEMU run by libvirt as its own user must open the
 * files) and default_permissions (the kernel checks each open against the owner, group and
 * mode getattr returns), so a local user opens a volume file only when fileOwner, fileGroup
 * and fileMode (or a later chown/chmod) give it that access. Owner, mode and the kept
 * extended attributes are per file, in memory, for as long as the file is on the mount
 * (attrs.ts): they are keyed by the volume object the table returns, so a detach (or a
 * snapshot unmount) drops them and the next attach starts from the configured defaults.
 *
 * Nothing here blocks the event loop: every handler answers through its callback after
 * asynchronous work. fuse-native's own per-request timeout is off (a lazy fetch may take
 * longer than 15 s; the engine bounds its waits), and big_writes is passed through the
 * fsname option (fuse-native has no option for it) so writes arrive in up to 128 KiB.
 * O_DIRECT in open flags is irrelevant here: the engine keeps its own descriptors.
 */
import { statfs } from 'node:fs/promises';
import Fuse from 'fuse-native';
import { IslandError } from '../errors.js';
import { FileAttrs, type FileDefaults } from './attrs.js';
import { ERR, fuseErrno } from './errno.js';

/** What the adapter needs of a volume (the engine's Volume satisfies it). */
export interface FuseVolume {
  readonly length: number;
  read(buf: Buffer, offset: number): Promise<number>;
  write(buf: Buffer, offset: number): Promise<number>;
  fsync(): Promise<void>;
  truncate(length: number): Promise<void>;
  /** fallocate(2) modes KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE; without it the file answers EOPNOTSUPP. */
  fallocate?(mode: number, offset: number, length: number): Promise<void>;
  /** A native volume handle (native/volume): the native server then serves the file in C alone. */
  readonly native?: unknown;
}

/** The set of volumes the mount shows, looked up per request (it may change). */
export interface VolumeTable {
  names(): string[];
  get(name: string): FuseVolume | undefined;
  /** Volumes whose file is read-only (e.g. a mounted snapshot). */
  readOnly?(name: string): boolean;
}

export interface FuseEvents {
  /** One completed request: for metrics. Never log per request at info level. */
  onOp?(op: string, ms: number, bytes: number, error: boolean): void;
  /** A request failed: name what and where (the caller logs it). */
  onError?(op: string, path: string, err: unknown): void;
}

export interface FuseMountOptions extends FuseEvents {
  mountpoint: string;
  table: VolumeTable;
  /** Directory whose file system's free space statfs reports (the data directory). */
  spaceDir: string;
  /** Owner, group and mode of the files (default: the daemon's own user and group, 0600). */
  files?: FileDefaults;
  debug?: boolean;
}

export const IMAGE_SUFFIX = '.qcow2';
const O_ACCMODE = 3;
const O_RDONLY = 0;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const STATFS_NAMEMAX = 255;
/** statfs fields are uint32 in fuse-native: scale the block size until counts fit. */
const U32 = 0xffff_ffff;

interface Handle {
  name: string;
  writable: boolean;
}

type Cb = (...args: unknown[]) => void;
type Signal = (result: number, ...rest: unknown[]) => void;

/**
 * fuse-native's own getxattr and listxattr handlers copy the answer into libfuse's buffer
 * without looking at its size and then report the answer's full length, and libfuse sends
 * that many bytes from a buffer of the size the caller asked for: an answer larger than the
 * caller's buffer would be read past its end. These replace them and answer ERANGE instead,
 * as getxattr(2) and listxattr(2) do (a size query, a buffer of 0 bytes, gets the length).
 */
class SizedXattrFuse extends Fuse {
  _op_getxattr(signal: Signal, path: string, name: string, buf: Buffer, position: number): void {
    this.ops.getxattr!(path, name, position, (err: number, value?: Buffer) => {
      if (err) return signal(err, buf.buffer);
      if (!value) return signal(ERR.ENODATA, buf.buffer);
      if (buf.length > 0 && value.length > buf.length) return signal(ERR.ERANGE, buf.buffer);
      if (buf.length > 0) value.copy(buf);
      signal(value.length, buf.buffer);
    });
  }

  _op_listxattr(signal: Signal, path: string, buf: Buffer): void {
    this.ops.listxattr!(path, (err: number, names?: string[]) => {
      if (err) return signal(err, buf.buffer);
      const list = Buffer.from((names ?? []).map((n) => n + '\0').join(''));
      if (buf.length > 0 && list.length > buf.length) return signal(ERR.ERANGE, buf.buffer);
      if (buf.length > 0) list.copy(buf);
      signal(list.length, buf.buffer);
    });
  }
}

export function fileName(volume: string): string {
  return volume + IMAGE_SUFFIX;
}

/** "/name.qcow2" -> "name"; anything else -> undefined. */
export function volumeOf(path: string): string | undefined {
  if (!path.startsWith('/') || !path.endsWith(IMAGE_SUFFIX)) return undefined;
  const name = path.slice(1, -IMAGE_SUFFIX.length);
  return name.length > 0 && !name.includes('/') ? name : undefined;
}

export class FuseMount {
  readonly transport = 'fuse-native' as const;
  private readonly fuse: Fuse;
  private readonly handles = new Map<number, Handle>();
  private nextFd = 1;
  private mounted = false;
  private readonly started = new Date();
  private readonly mtimes = new Map<string, Date>();
  /** Per file, keyed by the volume object: gone with the attachment (see the top comment). */
  private readonly attrs = new WeakMap<FuseVolume, FileAttrs>();
  private readonly defaults: FileDefaults;

  constructor(private readonly opts: FuseMountOptions) {
    this.defaults = opts.files ?? { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, mode: 0o600 };
    this.fuse = new SizedXattrFuse(opts.mountpoint, this.ops(), {
      timeout: false,
      mkdir: true,
      force: true,
      allowOther: true,
      defaultPermissions: true,
      fsname: 'island,big_writes',
      subtype: 'island',
      debug: opts.debug ?? false,
    });
  }

  /** Open handles of a volume's file (detach and shutdown refuse while it is open). */
  /** Nothing to do: every request looks its file up in the table. */
  refresh(): void {}

  openCount(name: string): number {
    let n = 0;
    for (const h of this.handles.values()) if (h.name === name) n++;
    return n;
  }

  describe(): Record<string, unknown> {
    return { transport: this.transport };
  }

  mount(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.fuse.mount((err) => {
        if (err) return reject(new IslandError('LOCAL_IO', `cannot mount ${this.opts.mountpoint}: ${err.message}`, { cause: err }));
        this.mounted = true;
        resolve();
      });
    });
  }

  unmount(): Promise<void> {
    if (!this.mounted) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.fuse.unmount((err) => {
        if (err) return reject(new IslandError('BUSY', `cannot unmount ${this.opts.mountpoint}: ${err.message}`, { cause: err }));
        this.mounted = false;
        resolve();
      });
    });
  }

  private fail(op: string, path: string, err: unknown, cb: (r: number) => void): void {
    this.opts.onError?.(op, path, err);
    cb(fuseErrno(err));
  }

  private volume(path: string): { name: string; vol: FuseVolume } | undefined {
    const name = volumeOf(path);
    const vol = name === undefined ? undefined : this.opts.table.get(name);
    return name !== undefined && vol ? { name, vol } : undefined;
  }

  private fileAttrs(vol: FuseVolume): FileAttrs {
    let a = this.attrs.get(vol);
    if (!a) this.attrs.set(vol, (a = new FileAttrs(this.defaults)));
    return a;
  }

  private fileStat(name: string, vol: FuseVolume): Record<string, unknown> {
    const ro = this.opts.table.readOnly?.(name) ?? false;
    const a = this.fileAttrs(vol);
    const mtime = this.mtimes.get(name) ?? this.started;
    const ctime = a.changed && a.changed > mtime ? a.changed : mtime;
    return {
      mode: S_IFREG | a.modeBits(ro),
      size: vol.length,
      nlink: 1,
      uid: a.uid,
      gid: a.gid,
      mtime,
      atime: mtime,
      ctime,
      blocks: Math.ceil(vol.length / 512),
      blksize: 65536,
    };
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private ops(): Record<string, (...args: any[]) => void> {
    const timed = (op: string, bytes: (r: number) => number, cb: Cb): ((r: number) => void) => {
      const t0 = performance.now();
      return (r: number) => {
        this.opts.onOp?.(op, performance.now() - t0, r > 0 ? bytes(r) : 0, r < 0);
        cb(r);
      };
    };
    return {
      init: (cb: Cb) => cb(0),
      statfs: (_path: unknown, cb: Cb) => {
        statfs(this.opts.spaceDir).then(
          (s) => {
            let bsize = s.bsize;
            let blocks = s.blocks;
            let bfree = s.bfree;
            let bavail = s.bavail;
            while (blocks > U32) {
              bsize *= 2;
              blocks = Math.floor(blocks / 2);
              bfree = Math.floor(bfree / 2);
              bavail = Math.floor(bavail / 2);
            }
            const files = this.opts.table.names().length;
            cb(0, { bsize, frsize: bsize, blocks, bfree, bavail, files, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: STATFS_NAMEMAX });
          },
          (err: unknown) => this.fail('statfs', '/', err, cb),
        );
      },
      getattr: (path: string, cb: Cb) => {
        if (path === '/') {
          return cb(0, { mode: S_IFDIR | 0o755, size: 4096, nlink: 2, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, mtime: this.started, atime: this.started, ctime: this.started });
        }
        const v = this.volume(path);
        if (!v) return cb(ERR.ENOENT);
        cb(0, this.fileStat(v.name, v.vol));
      },
      fgetattr: (path: string, _fd: number, cb: Cb) => {
        const v = this.volume(path);
        if (!v) return cb(ERR.ENOENT);
        cb(0, this.fileStat(v.name, v.vol));
      },
      readdir: (path: string, cb: Cb) => {
        if (path !== '/') return cb(ERR.ENOTDIR);
        cb(0, this.opts.table.names().map(fileName));
      },
      open: (path: string, flags: number, cb: Cb) => {
        const v = this.volume(path);
        if (!v) return cb(ERR.ENOENT);
        const writable = (flags & O_ACCMODE) !== O_RDONLY;
        if (writable && this.opts.table.readOnly?.(v.name)) return cb(ERR.EROFS);
        const fd = this.nextFd++;
        this.handles.set(fd, { name: v.name, writable });
        cb(0, fd);
      },
      release: (_path: string, fd: number, cb: Cb) => {
        this.handles.delete(fd);
        cb(0);
      },
      read: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
        const h = this.handles.get(fd);
        const vol = h ? this.opts.table.get(h.name) : undefined;
        if (!vol) return cb(ERR.EBADF);
        const done = timed('read', (n) => n, cb);
        vol.read(buf.subarray(0, len), pos).then(done, (err: unknown) => this.fail('read', path, err, done));
      },
      write: (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
        const h = this.handles.get(fd);
        const vol = h ? this.opts.table.get(h.name) : undefined;
        if (!h || !vol) return cb(ERR.EBADF);
        if (!h.writable) return cb(ERR.EBADF);
        // A volume can turn read-only under an open handle (fenced by another host).
        if (this.opts.table.readOnly?.(h.name)) return cb(ERR.EROFS);
        const done = timed('write', (n) => n, cb);
        this.mtimes.set(h.name, new Date());
        vol.write(buf.subarray(0, len), pos).then(done, (err: unknown) => this.fail('write', path, err, done));
      },
      fsync: (path: string, _datasync: unknown, fd: number, cb: Cb) => {
        const h = this.handles.get(fd);
        const vol = h ? this.opts.table.get(h.name) : undefined;
        if (!vol) return cb(ERR.EBADF);
        const done = timed('fsync', () => 0, cb);
        vol.fsync().then(() => done(0), (err: unknown) => this.fail('fsync', path, err, done));
      },
      flush: (_path: string, _fd: number, cb: Cb) => cb(0),
      truncate: (path: string, size: number, cb: Cb) => this.truncate(path, size, cb),
      ftruncate: (path: string, _fd: number, size: number, cb: Cb) => this.truncate(path, size, cb),
      utimens: (path: string, _a: unknown, _m: unknown, cb: Cb) => cb(this.volume(path) ? 0 : ERR.ENOENT),
      // The kernel has already checked the caller may (default_permissions); the root stays as it is.
      chmod: (path: string, mode: number, cb: Cb) => {
        const v = this.volume(path);
        if (!v) return cb(path === '/' ? ERR.EPERM : ERR.ENOENT);
        this.fileAttrs(v.vol).chmod(mode);
        cb(0);
      },
      chown: (path: string, uid: number, gid: number, cb: Cb) => {
        const v = this.volume(path);
        if (!v) return cb(path === '/' ? ERR.EPERM : ERR.ENOENT);
        this.fileAttrs(v.vol).chown(uid, gid);
        cb(0);
      },
      setxattr: (path: string, name: string, value: Buffer, _position: number, flags: number, cb: Cb) => {
        const v = this.volume(path);
        if (!v) return cb(path === '/' ? ERR.EPERM : ERR.ENOENT);
        cb(this.fileAttrs(v.vol).setXattr(name, value, flags));
      },
      getxattr: (path: string, name: string, _position: number, cb: Cb) => {
        const v = this.volume(path);
        if (!v) return cb(path === '/' ? ERR.ENODATA : ERR.ENOENT);
        const r = this.fileAttrs(v.vol).getXattr(name);
        if (typeof r === 'number') return cb(r);
        cb(0, r);
      },
      listxattr: (path: string, cb: Cb) => {
        const v = this.volume(path);
        if (!v) return path === '/' ? cb(0, []) : cb(ERR.ENOENT);
        cb(0, this.fileAttrs(v.vol).listXattrs());
      },
      removexattr: (path: string, name: string, cb: Cb) => {
        const v = this.volume(path);
        if (!v) return cb(path === '/' ? ERR.EPERM : ERR.ENOENT);
        cb(this.fileAttrs(v.vol).removeXattr(name));
      },
      create: (_path: string, _mode: number, cb: Cb) => cb(ERR.EPERM),
      mknod: (_path: string, _mode: number, _dev: number, cb: Cb) => cb(ERR.EPERM),
      unlink: (_path: string, cb: Cb) => cb(ERR.EPERM),
      rename: (_src: string, _dst: string, cb: Cb) => cb(ERR.EPERM),
      link: (_src: string, _dst: string, cb: Cb) => cb(ERR.EPERM),
      symlink: (_src: string, _dst: string, cb: Cb) => cb(ERR.EPERM),
      mkdir: (_path: string, _mode: number, cb: Cb) => cb(ERR.EPERM),
      rmdir: (_path: string, cb: Cb) => cb(ERR.EPERM),
    };
  }

  private truncate(path: string, size: number, cb: Cb): void {
    const v = this.volume(path);
    if (!v) return cb(ERR.ENOENT);
    if (this.opts.table.readOnly?.(v.name)) return cb(ERR.EROFS);
    this.mtimes.set(v.name, new Date());
    v.vol.truncate(size).then(() => cb(0), (err: unknown) => this.fail('truncate', path, err, cb));
  }
}
