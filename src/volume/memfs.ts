/**
 * An in-memory LocalFs that simulates what a crash of the host does to unsynced data, for
 * tests of the volume engine's durability (and of whatever runs over it later).
 *
 * Model (that of a journaling Linux file system, ext4 data=ordered):
 *   - every file keeps its live content and its durable content; fdatasync/fsync of the file
 *     make the live content (and size) durable;
 *   - creations, renames and removals of names become durable at syncDir of their directory;
 *     directories themselves are always durable;
 *   - crash(): every name reverts to its durable binding; every file keeps its durable content
 *     except that each 512-byte sector written since the last sync independently holds either
 *     its durable or its live bytes (writeback may have reached the disk, partly: a torn
 *     write), and the size is either the durable or the live one. With no generator, nothing
 *     unsynced survives. Handles opened before a crash fail every later call.
 *
 * Content is kept in 4 KiB chunks allocated on write, so holes cost nothing and
 * `allocatedBytes` / `dataExtents` behave like a sparse file with 4 KiB blocks.
 *
 * An optional `onOp` observer sees every operation as it takes effect (ordering tests) and may
 * throw to make it fail (fault injection) or call crash() to cut the power right before it. An optional generator makes every call yield a
 * random number of event-loop turns, so that concurrent callers interleave, deterministically
 * for a given seed.
 */
import { dirname } from 'node:path';
import { IslandError } from '../errors.js';
import type { Rng } from '../util/random.js';
import type { LocalFile, LocalFs, OpenMode } from './files.js';

export const MEM_CHUNK = 4096;
/** The unit a crash tears writes at. */
export const MEM_SECTOR = 512;

export type MemOpKind = 'open' | 'read' | 'write' | 'datasync' | 'sync' | 'truncate' | 'punch' | 'rename' | 'unlink' | 'syncDir' | 'close';

export interface MemOp {
  readonly op: MemOpKind;
  readonly path: string;
  readonly pos?: number;
  readonly len?: number;
  readonly to?: string;
}

export interface MemFsOptions {
  /** Interleave concurrent calls: each call yields 0..maxYields event-loop turns. */
  rng?: Rng;
  maxYields?: number;
  /** Sees every operation as it takes effect; throwing fails the operation. */
  onOp?: (op: MemOp) => void;
}

class Inode {
  chunks = new Map<number, Buffer>();
  size = 0;
  durableChunks = new Map<number, Buffer>();
  durableSize = 0;
  /** Chunks whose live content may differ from the durable one. */
  changed = new Set<number>();

  chunkForWrite(i: number): Buffer {
    let c = this.chunks.get(i);
    if (c === undefined) {
      c = Buffer.alloc(MEM_CHUNK);
      this.chunks.set(i, c);
    }
    this.changed.add(i);
    return c;
  }

  makeDurable(): void {
    for (const i of this.changed) {
      const c = this.chunks.get(i);
      if (c === undefined) this.durableChunks.delete(i);
      else this.durableChunks.set(i, Buffer.from(c));
    }
    this.changed.clear();
    this.durableSize = this.size;
  }

  crash(rng: Rng | undefined): void {
    const next = new Map<number, Buffer>();
    for (const [i, c] of this.durableChunks) next.set(i, c);
    for (const i of this.changed) {
      const live = this.chunks.get(i);
      const old = this.durableChunks.get(i);
      if (rng === undefined) continue;
      const out = Buffer.alloc(MEM_CHUNK);
      let any = false;
      for (let s = 0; s < MEM_CHUNK; s += MEM_SECTOR) {
        const src = rng.chance(0.5) ? live : old;
        if (src !== undefined) {
          src.copy(out, s, s, s + MEM_SECTOR);
          any = true;
        }
      }
      if (any) next.set(i, out);
      else next.delete(i);
    }
    const size = rng !== undefined && rng.chance(0.5) ? this.size : this.durableSize;
    this.chunks = new Map();
    for (const [i, c] of next) {
      if (i * MEM_CHUNK >= size) continue;
      const copy = Buffer.from(c);
      const tail = size - i * MEM_CHUNK;
      if (tail < MEM_CHUNK) copy.fill(0, tail);
      this.chunks.set(i, copy);
    }
    this.size = size;
    this.durableChunks = new Map();
    this.changed = new Set(this.chunks.keys());
    this.makeDurable();
  }
}

export class MemFs implements LocalFs {
  private live = new Map<string, Inode>();
  private durable = new Map<string, Inode>();
  private readonly dirs = new Set<string>(['/']);
  /** Incremented by every crash: handles of an older boot are dead. */
  private boot = 0;

  constructor(private readonly opts: MemFsOptions = {}) {}

  /** Observe (and possibly fail) operations from now on. */
  set onOp(f: ((op: MemOp) => void) | undefined) {
    this.opts.onOp = f;
  }

  async tick(): Promise<void> {
    const { rng } = this.opts;
    if (rng === undefined) {
      await Promise.resolve();
      return;
    }
    const n = rng.int((this.opts.maxYields ?? 2) + 1);
    for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
  }

  /** Called at the moment an operation takes effect. */
  note(op: MemOp, boot: number): void {
    const stale = (): IslandError => new IslandError('LOCAL_IO', `${op.op} ${op.path}: the host crashed (stale handle)`, { details: { ...op } });
    if (boot !== this.boot) throw stale();
    this.opts.onOp?.(op);
    // The observer may have crashed the host: then this operation never happened.
    if (boot !== this.boot) throw stale();
  }

  /** Simulate a crash of the host (see the top of this file). */
  crash(rng?: Rng): void {
    this.boot++;
    this.live = new Map(this.durable);
    const seen = new Set<Inode>();
    for (const inode of this.live.values()) {
      if (seen.has(inode)) continue;
      seen.add(inode);
      inode.crash(rng);
    }
  }

  /** Bytes of allocated chunks of a file (like stat's blocks * 512). */
  allocatedBytes(path: string): number {
    const inode = this.live.get(path);
    if (inode === undefined) throw new IslandError('NOT_FOUND', `${path} does not exist`);
    return inode.chunks.size * MEM_CHUNK;
  }

  /** The live content of a file (a copy). */
  contents(path: string): Buffer {
    const inode = this.live.get(path);
    if (inode === undefined) throw new IslandError('NOT_FOUND', `${path} does not exist`);
    const out = Buffer.alloc(inode.size);
    for (const [i, c] of inode.chunks) c.copy(out, i * MEM_CHUNK, 0, Math.min(MEM_CHUNK, inode.size - i * MEM_CHUNK));
    return out;
  }

  /** Overwrite bytes of a file as a disk fault would (no operation observed); the file's pending writes become durable too. */
  poke(path: string, pos: number, bytes: Uint8Array): void {
    const inode = this.live.get(path);
    if (inode === undefined) throw new IslandError('NOT_FOUND', `${path} does not exist`);
    writeInto(inode, bytes, 0, bytes.length, pos);
    inode.makeDurable();
  }

  async open(path: string, mode: OpenMode): Promise<LocalFile> {
    await this.tick();
    const boot = this.boot;
    this.note({ op: 'open', path }, boot);
    let inode = this.live.get(path);
    if (inode === undefined) {
      if (mode !== 'create') throw new IslandError('NOT_FOUND', `${path} does not exist`, { details: { path } });
      if (!this.dirs.has(dirname(path))) throw new IslandError('LOCAL_IO', `open ${path}: no such directory`, { details: { path } });
      inode = new Inode();
      this.live.set(path, inode);
    }
    return new MemFile(this, path, inode, boot);
  }

  async exists(path: string): Promise<boolean> {
    await this.tick();
    return this.live.has(path) || this.dirs.has(path);
  }

  async mkdir(path: string): Promise<void> {
    await this.tick();
    for (let p = path; !this.dirs.has(p); p = dirname(p)) this.dirs.add(p);
  }

  async rename(from: string, to: string): Promise<void> {
    await this.tick();
    this.note({ op: 'rename', path: from, to }, this.boot);
    const inode = this.live.get(from);
    if (inode === undefined) throw new IslandError('LOCAL_IO', `rename ${from}: no such file`, { details: { from, to } });
    this.live.delete(from);
    this.live.set(to, inode);
  }

  async unlink(path: string): Promise<void> {
    await this.tick();
    this.note({ op: 'unlink', path }, this.boot);
    this.live.delete(path);
  }

  async syncDir(path: string): Promise<void> {
    await this.tick();
    this.note({ op: 'syncDir', path }, this.boot);
    for (const name of [...this.durable.keys()]) if (dirname(name) === path && !this.live.has(name)) this.durable.delete(name);
    for (const [name, inode] of this.live) if (dirname(name) === path) this.durable.set(name, inode);
  }
}

function writeInto(inode: Inode, buf: Uint8Array, off: number, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    const at = pos + done;
    const i = Math.floor(at / MEM_CHUNK);
    const within = at - i * MEM_CHUNK;
    const n = Math.min(MEM_CHUNK - within, len - done);
    inode.chunkForWrite(i).set(buf.subarray(off + done, off + done + n), within);
    done += n;
  }
  inode.size = Math.max(inode.size, pos + len);
}

class MemFile implements LocalFile {
  constructor(
    private readonly fs: MemFs,
    readonly path: string,
    private readonly inode: Inode,
    private readonly boot: number,
  ) {}

  async read(buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
    await this.fs.tick();
    this.fs.note({ op: 'read', path: this.path, pos, len }, this.boot);
    const n = Math.max(0, Math.min(len, this.inode.size - pos));
    let done = 0;
    while (done < n) {
      const at = pos + done;
      const i = Math.floor(at / MEM_CHUNK);
      const within = at - i * MEM_CHUNK;
      const k = Math.min(MEM_CHUNK - within, n - done);
      const c = this.inode.chunks.get(i);
      if (c === undefined) buf.fill(0, off + done, off + done + k);
      else buf.set(c.subarray(within, within + k), off + done);
      done += k;
    }
    return n;
  }

  async write(buf: Uint8Array, off: number, len: number, pos: number): Promise<void> {
    await this.fs.tick();
    this.fs.note({ op: 'write', path: this.path, pos, len }, this.boot);
    writeInto(this.inode, buf, off, len, pos);
  }

  async datasync(): Promise<void> {
    await this.fs.tick();
    this.fs.note({ op: 'datasync', path: this.path }, this.boot);
    this.inode.makeDurable();
  }

  async sync(): Promise<void> {
    await this.fs.tick();
    this.fs.note({ op: 'sync', path: this.path }, this.boot);
    this.inode.makeDurable();
  }

  async truncate(len: number): Promise<void> {
    await this.fs.tick();
    this.fs.note({ op: 'truncate', path: this.path, len }, this.boot);
    const inode = this.inode;
    for (const i of [...inode.chunks.keys()]) {
      if (i * MEM_CHUNK >= len) {
        inode.chunks.delete(i);
        inode.changed.add(i);
      } else if ((i + 1) * MEM_CHUNK > len) {
        inode.chunkForWrite(i).fill(0, len - i * MEM_CHUNK);
      }
    }
    inode.size = len;
  }

  async size(): Promise<number> {
    await this.fs.tick();
    this.fs.note({ op: 'read', path: this.path, len: 0 }, this.boot);
    return this.inode.size;
  }

  canPunchHoles(): boolean {
    return true;
  }

  async punchHole(pos: number, len: number): Promise<boolean> {
    await this.fs.tick();
    this.fs.note({ op: 'punch', path: this.path, pos, len }, this.boot);
    const inode = this.inode;
    const end = Math.min(pos + len, inode.size);
    for (let at = pos; at < end; ) {
      const i = Math.floor(at / MEM_CHUNK);
      const within = at - i * MEM_CHUNK;
      const n = Math.min(MEM_CHUNK - within, end - at);
      if (inode.chunks.has(i)) {
        if (n === MEM_CHUNK) {
          inode.chunks.delete(i);
          inode.changed.add(i);
        } else {
          inode.chunkForWrite(i).fill(0, within, within + n);
        }
      }
      at += n;
    }
    return true;
  }

  async dataExtents(start: number, end: number): Promise<Array<[number, number]> | null> {
    await this.fs.tick();
    this.fs.note({ op: 'read', path: this.path, pos: start, len: end - start }, this.boot);
    const stop = Math.min(end, this.inode.size);
    const keys = [...this.inode.chunks.keys()].sort((a, b) => a - b);
    const out: Array<[number, number]> = [];
    for (const i of keys) {
      const s = Math.max(start, i * MEM_CHUNK);
      const e = Math.min(stop, (i + 1) * MEM_CHUNK);
      if (s >= e) continue;
      const last = out[out.length - 1];
      if (last !== undefined && last[0] + last[1] === s) last[1] += e - s;
      else out.push([s, e - s]);
    }
    return out;
  }

  async close(): Promise<void> {
    await this.fs.tick();
  }
}
