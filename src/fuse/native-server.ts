/**
 * The native transport: island's own FUSE server in C (native/fuse/, docs/fuse.md) serving
 * the same directory the fuse-native adapter (adapter.ts) serves, with the same names,
 * modes, owners, attributes and errors.
 *
 * The server keeps the namespace in C. This module keeps it equal to the VolumeTable:
 * `sync()` adds the files the table shows and the server does not, removes the ones it no
 * longer shows (the server then drops the kernel's entry) and passes read-only flags and
 * sizes on. The server asks for a sync before it answers a LOOKUP, OPEN or OPENDIR (those
 * wait, parked, without holding a server thread), and a timer syncs once a second so that a
 * detached file leaves the cached attributes too.
 *
 * A volume with a native handle (`native`, from native/volume) is served by C alone. Every
 * other file is JavaScript-backed: each read, write, fsync, truncate and fallocate arrives
 * here through the addon's callback, runs on the FuseVolume, and is answered with
 * fuseComplete; the buffer of a read or write is the request's own memory, lent until the
 * answer (never kept after it). A file whose volume is no longer the table's (detached, or
 * replaced by a new attach) answers EBADF, as the adapter does.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { IslandError } from '../errors.js';
import { NATIVE_ADDON_PATH, nativeAvailable } from '../volume/native.js';
import { fileName, type FuseMountOptions, type FuseVolume } from './adapter.js';
import { ERR, fuseErrno } from './errno.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

/** What serves the mount, for status and logs. */
export type FuseTransportName = 'native' | 'fuse-native';

/** A mounted FUSE server, whichever transport it is. */
export interface FuseTransport {
  readonly transport: FuseTransportName;
  mount(): Promise<void>;
  unmount(): Promise<void>;
  /** Open handles of a volume's file (detach and shutdown refuse while it is open). */
  openCount(name: string): number;
  /** What the transport tells about itself (status). */
  describe(): Record<string, unknown>;
  /** The table changed: show it now (a transport that asks the table per request does nothing). */
  refresh(): void;
}

export interface NativeMountOptions extends FuseMountOptions {
  /** Server threads reading /dev/fuse. */
  threads: number;
  /** A line of the server's own (negotiated protocol, failures of its machinery). */
  onLog?(level: 'info' | 'warn' | 'error', msg: string): void;
}

/** The addon's FUSE functions (native/fuse/addon.c). */
interface FuseAddon {
  fuseKinds: Record<'read' | 'write' | 'fsync' | 'truncate' | 'fallocate' | 'sync' | 'log' | 'free', number>;
  fuseMount(opts: { mountpoint: string; spaceDir: string; threads: number }, cb: (kind: number, ...args: unknown[]) => void): unknown;
  fuseUnmount(m: unknown): void;
  fuseAddFile(m: unknown, name: string, readOnly: boolean, uid: number, gid: number, mode: number, jsId: number, size: number, volume?: unknown): void;
  fuseRemoveFile(m: unknown, name: string): boolean;
  fuseSetReadOnly(m: unknown, name: string, readOnly: boolean): void;
  fuseSetSize(m: unknown, name: string, size: number): void;
  fuseOpenCount(m: unknown, name: string): number;
  fuseComplete(m: unknown, callId: number, result: number, size: number): boolean;
  fuseSynced(m: unknown): void;
  fuseStats(m: unknown): Record<string, number>;
  /** Tests: raw request bytes through the handlers; the reply bytes, or null when it parked. */
  fuseTestRequest(m: unknown, request: Buffer): Buffer | null;
}

const SYNC_INTERVAL_MS = 1000;
const FALLOC_KEEP_SIZE = 0x01;
const FALLOC_PUNCH_HOLE = 0x02;
const FALLOC_ZERO_RANGE = 0x10;

type Discard = (offset: number, len: number) => Promise<void>;

/** A volume without fallocate that can discard (the TypeScript engine's discard()). */
function discardOf(vol: FuseVolume): Discard | undefined {
  const d = (vol as { discard?: unknown }).discard;
  return typeof d === 'function' ? (d as Discard) : undefined;
}

/**
 * A FALLOCATE that discard() answers exactly: a hole punched (PUNCH_HOLE | KEEP_SIZE), or a
 * range zeroed that does not change the length (ZERO_RANGE inside the file, or with
 * KEEP_SIZE); anything else stays EOPNOTSUPP.
 */
function zeroesInside(mode: number, off: number, len: number, length: number): boolean {
  if (mode === (FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE)) return true;
  if (mode === (FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE)) return true;
  return mode === FALLOC_ZERO_RANGE && off + len <= length;
}
const EOPNOTSUPP = -constants.errno.EOPNOTSUPP;
const FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;

/**
 * The addon's FUSE half. volume/native.ts owns loading the addon (and says why it cannot
 * load); this takes the same module object from Node's cache once it has loaded.
 */
export function fuseAddon(): FuseAddon {
  if (!nativeAvailable()) throw new IslandError('NATIVE_MISSING', 'island native addon not built: run scripts/build-native.sh');
  const a = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as Partial<FuseAddon>;
  if (typeof a.fuseMount !== 'function' || typeof a.fuseComplete !== 'function') {
    throw new IslandError('NATIVE_MISSING', 'island native addon has no FUSE server: run scripts/build-native.sh');
  }
  return a as FuseAddon;
}

/** A file the server shows, as this side knows it. */
interface Served {
  id: number;
  name: string;
  vol: FuseVolume;
  readOnly: boolean;
  size: number;
  native: boolean;
}

/** /proc/mounts writes space, tab, newline and backslash as octal escapes. */
async function isMounted(path: string): Promise<boolean> {
  const want = path.replace(/[ \t\n\\]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
  return (await readFile('/proc/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === want);
}

export class NativeFuseMount implements FuseTransport {
  readonly transport = 'native' as const;
  private readonly addon: FuseAddon;
  private handle: unknown;
  /** By volume name: what the server shows now. */
  private readonly served = new Map<string, Served>();
  /** By file id: JavaScript-backed files until the server lets go of them (JS_FREE). */
  private readonly files = new Map<number, Served>();
  private nextId = 1;
  private timer: NodeJS.Timeout | undefined;
  private readonly defaults;

  constructor(private readonly opts: NativeMountOptions) {
    this.addon = fuseAddon();
    this.defaults = opts.files ?? { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, mode: 0o600 };
  }

  async mount(): Promise<void> {
    const mp = this.opts.mountpoint;
    await mkdir(mp, { recursive: true });
    // A mount left by a daemon that died (the transport end is gone): detach it first.
    if (await isMounted(mp)) await promisify(execFile)('umount', ['-l', mp]).catch(() => undefined);
    try {
      this.handle = this.addon.fuseMount({ mountpoint: mp, spaceDir: this.opts.spaceDir, threads: this.opts.threads }, (kind, ...args) => this.onCall(kind, args));
    } catch (err) {
      throw new IslandError('LOCAL_IO', `cannot mount ${mp} with the native FUSE server: ${(err as Error).message}`, { cause: err });
    }
    this.sync();
    this.timer = setInterval(() => this.sync(), SYNC_INTERVAL_MS);
    this.timer.unref();
  }

  unmount(): Promise<void> {
    if (this.handle === undefined) return Promise.resolve();
    clearInterval(this.timer);
    this.addon.fuseUnmount(this.handle);
    this.served.clear();
    return Promise.resolve();
  }

  openCount(name: string): number {
    if (this.handle === undefined) return 0;
    return this.addon.fuseOpenCount(this.handle, fileName(name));
  }

  describe(): Record<string, unknown> {
    const s = this.handle === undefined ? undefined : this.addon.fuseStats(this.handle);
    if (!s) return { transport: this.transport };
    return {
      transport: this.transport,
      threads: s.threads,
      protocol: `7.${s.protocolMinor}`,
      kernelProtocol: `7.${s.kernelMinor}`,
      parallelDirectWrites: ((s.openFlags ?? 0) & FOPEN_PARALLEL_DIRECT_WRITES) !== 0,
      /** Files served in C alone (native write path) and files whose requests cross to JavaScript. */
      nativeFiles: [...this.served.values()].filter((f) => f.native).length,
      javascriptFiles: [...this.served.values()].filter((f) => !f.native).length,
      parked: s.parked,
      malformed: s.malformed,
      unknownOps: s.unknownOps,
    };
  }

  refresh(): void {
    this.sync();
  }

  /** Make the server's files those of the table (see the top comment). */
  sync(): void {
    if (this.handle === undefined) return;
    const { table } = this.opts;
    const names = new Set(table.names());
    for (const [name, s] of this.served) {
      if (names.has(name) && table.get(name) === s.vol) continue;
      this.addon.fuseRemoveFile(this.handle, fileName(name));
      this.served.delete(name);
    }
    for (const name of names) {
      const vol = table.get(name);
      if (!vol) continue;
      const readOnly = table.readOnly?.(name) ?? false;
      const s = this.served.get(name);
      if (s) {
        if (s.readOnly !== readOnly) this.addon.fuseSetReadOnly(this.handle, fileName(name), (s.readOnly = readOnly));
        if (!s.native && s.size !== vol.length) this.addon.fuseSetSize(this.handle, fileName(name), (s.size = vol.length));
        continue;
      }
      const native = vol.native;
      const n: Served = { id: this.nextId++, name, vol, readOnly, size: vol.length, native: native !== undefined };
      try {
        const d = this.defaults;
        this.addon.fuseAddFile(this.handle, fileName(name), readOnly, d.uid, d.gid, d.mode, n.id, vol.length, native);
      } catch (err) {
        this.opts.onError?.('add', '/' + fileName(name), err);
        continue;
      }
      this.served.set(name, n);
      if (!n.native) this.files.set(n.id, n);
    }
  }

  private onCall(kind: number, args: unknown[]): void {
    const k = this.addon.fuseKinds;
    if (kind === k.sync) {
      try {
        this.sync();
      } finally {
        if (this.handle !== undefined) this.addon.fuseSynced(this.handle);
      }
      return;
    }
    if (kind === k.log) return this.opts.onLog?.(args[0] as 'info', args[1] as string);
    if (kind === k.free) {
      this.files.delete(args[0] as number);
      return;
    }
    const [id, callId, buf, off, len, mode] = args as [number, number, Buffer | null, number, number, number];
    this.serve(kind, id, callId, buf, off, len, mode);
  }

  private complete(callId: number, result: number, size: number): void {
    if (this.handle !== undefined) this.addon.fuseComplete(this.handle, callId, result, size);
  }

  /** One request on a JavaScript-backed file. */
  private serve(kind: number, id: number, callId: number, buf: Buffer | null, off: number, len: number, mode: number): void {
    const k = this.addon.fuseKinds;
    const f = this.files.get(id);
    const path = f ? '/' + fileName(f.name) : '/';
    const vol = f && this.opts.table.get(f.name) === f.vol ? f.vol : undefined;
    if (!f || !vol) {
      setImmediate(() => this.sync());
      return this.complete(callId, ERR.EBADF, -1);
    }
    const writes = kind === k.write || kind === k.truncate || kind === k.fallocate;
    // A volume can turn read-only under an open handle (fenced by another host).
    if (writes && (this.opts.table.readOnly?.(f.name) ?? false)) return this.complete(callId, ERR.EROFS, -1);
    const op = kind === k.read ? 'read' : kind === k.write ? 'write' : kind === k.fsync ? 'fsync' : kind === k.truncate ? 'truncate' : 'fallocate';
    const t0 = performance.now();
    const done = (r: number): void => {
      if (op !== 'truncate' && op !== 'fallocate') this.opts.onOp?.(op, performance.now() - t0, r > 0 ? r : 0, r < 0);
      this.complete(callId, r, r >= 0 ? vol.length : -1);
    };
    const fail = (err: unknown): void => {
      this.opts.onError?.(op, path, err);
      done(fuseErrno(err));
    };
    if (kind === k.read) vol.read((buf as Buffer).subarray(0, len), off).then(done, fail);
    else if (kind === k.write) vol.write((buf as Buffer).subarray(0, len), off).then(done, fail);
    else if (kind === k.fsync) vol.fsync().then(() => done(0), fail);
    else if (kind === k.truncate) vol.truncate(off).then(() => done(0), fail);
    else if (kind === k.fallocate && vol.fallocate) vol.fallocate(mode, off, len).then(() => done(0), fail);
    else if (kind === k.fallocate && discardOf(vol) && zeroesInside(mode, off, len, vol.length)) (discardOf(vol) as Discard).call(vol, off, len).then(() => done(0), fail);
    else done(EOPNOTSUPP);
  }
}
