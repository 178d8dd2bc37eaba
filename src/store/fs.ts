/**
 * The embedded default store: objects as files under one root directory.
 *
 * Layout. A key "s1/s2/.../sn" maps to
 *     <root>/d<s1>/d<s2>/.../f<first two characters of sn>/o<sn>
 * where every segment is percent-encoded (bytes outside [A-Za-z0-9._-] become %XX).
 * The one-letter tags keep directories (d), fan-out directories (f) and objects (o)
 * apart, so "a/b" and "a/b/c" can both exist; the fan-out directory keeps any one
 * directory small (256 entries per level for hex names: millions of packs stay
 * thousands per directory) while keeping keys with a common prefix together, so a
 * listing of "data/ab" reads one directory. Encoding makes "." and ".." impossible as
 * names, so no key can escape the root.
 *
 * Writes are atomic and durable: write to <root>/.tmp, fsync, rename into place, fsync
 * the directory (and the parents of any directory created). A crash leaves either the
 * old object, the new object, or a stray temp file. Several processes may share one
 * store directory, so opening a store removes only temp files untouched for
 * STALE_TMP_MS: a live writer's temp file is written, fsynced and renamed within
 * moments, while removing it would fail that writer's put.
 *
 * Create-if-absent (putIfAbsent) writes and fsyncs the temp file the same way, then
 * link(2)s it to the final name: link never replaces an existing name (EEXIST), so of
 * any number of racing writers, in this process or others on this host (or on one
 * local file system mount), exactly one creates the object, and its bytes are whole
 * before the name appears. The directory is fsynced before the call returns true. An
 * EEXIST is checked against the temp file's link count, so a link made by a request
 * whose answer an NFS client lost and retransmitted still counts as made.
 *
 * Listing walks the directory the prefix names and sorts what it finds: its cost is
 * the number of keys under that directory per page (island lists by structured
 * prefixes, so this stays small). The listing of this store is always fresh.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { link, mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { IslandError } from '../errors.js';
import { compareKeys, listLimit, throwIfAborted, validateKey, validatePrefix, validateRange } from './keys.js';
import type { ListOptions, ListPage, ObjectInfo, ObjectStore, OpOptions } from './types.js';

const TAG_DIR = 'd';
const TAG_FAN = 'f';
const TAG_OBJ = 'o';
const TMP_DIR = '.tmp';
/** A temp file this old is a crash's leftover, never a live writer's (which takes moments). */
const STALE_TMP_MS = 3600 * 1000;
/** Characters of the last segment that name its fan-out directory. */
const FAN_CHARS = 2;

function enc(seg: string): string {
  let out = '';
  for (const byte of Buffer.from(seg, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9._-]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function dec(name: string): string {
  return Buffer.from(name.replace(/%([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('utf8');
}

function fanOf(leaf: string): string {
  return Array.from(leaf).slice(0, FAN_CHARS).join('');
}

function errnoCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

function localError(op: string, key: string, err: unknown): IslandError {
  const code = errnoCode(err);
  if (code === 'ENOENT') return new IslandError('STORE_NOT_FOUND', `no such object: ${key}`, { details: { key } });
  if (code === 'EACCES' || code === 'EPERM') return new IslandError('STORE_ACCESS_DENIED', `${op} ${key}: ${code}`, { cause: err, details: { key } });
  // A directory where the object's file should be: damage no retry can mend.
  if (code === 'EISDIR') return isDirectoryError(op, key, err);
  // Local disk trouble (EIO, ENOSPC, EMFILE...) may pass: let the retry wrapper try again.
  return new IslandError('STORE_UNAVAILABLE', `${op} ${key}: ${(err as Error).message}`, { cause: err, details: { key } });
}

function isDirectoryError(op: string, key: string, cause?: unknown): IslandError {
  return new IslandError('STORE_DAMAGED', `${op} ${key}: the store holds a directory where the object's file should be`, { cause, details: { key } });
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, fsc.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class FsStore implements ObjectStore {
  readonly description: string;
  private readonly root: string;
  private readonly tmp: string;
  private ready: Promise<void> | undefined;

  constructor(root: string) {
    if (typeof root !== 'string' || root === '') throw new IslandError('STORE_CONFIG', 'fs store needs a directory');
    this.root = root;
    this.tmp = join(root, TMP_DIR);
    this.description = `fs:${root}`;
  }

  /** Create the root and clear temp files a crash left behind. Runs once, lazily. */
  private init(): Promise<void> {
    this.ready ??= (async () => {
      await mkdir(this.tmp, { recursive: true });
      const cutoff = Date.now() - STALE_TMP_MS;
      for (const name of await readdir(this.tmp)) {
        const path = join(this.tmp, name);
        const st = await stat(path).catch(() => undefined); // another process may remove it first
        if (st && st.mtimeMs < cutoff) await rm(path, { recursive: true, force: true });
      }
    })();
    return this.ready;
  }

  private dirOf(segments: string[]): string {
    return join(this.root, ...segments.map((s) => TAG_DIR + enc(s)));
  }

  private pathOf(key: string): { dir: string; file: string } {
    validateKey(key);
    const segs = key.split('/');
    const leaf = segs.pop() as string;
    const dir = join(this.dirOf(segs), TAG_FAN + enc(fanOf(leaf)));
    return { dir, file: join(dir, TAG_OBJ + enc(leaf)) };
  }

  /** mkdir -p that fsyncs the parent of every directory it creates. */
  private async ensureDir(dir: string): Promise<void> {
    const first = await mkdir(dir, { recursive: true });
    if (first === undefined) return;
    // `first` is the top-most directory created: fsync every parent from it down.
    let d = dir;
    const parents: string[] = [];
    while (d.length >= first.length) {
      parents.push(join(d, '..'));
      d = join(d, '..');
    }
    for (const p of parents) await fsyncPath(p);
  }

  /** A durable temp file holding body, for put (rename) and putIfAbsent (link). */
  private async tempWith(body: Buffer): Promise<string> {
    await this.init();
    const tmp = join(this.tmp, randomBytes(12).toString('hex'));
    try {
      const fh = await open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(body);
        await fh.sync();
      } finally {
        await fh.close();
      }
      return tmp;
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Write body durably to a temp file, then give it the key's name with `place` (rename
   * replaces, link refuses an existing name: false), then fsync the directory.
   */
  private async install(op: string, key: string, body: Buffer, opts: OpOptions, place: (tmp: string, file: string) => Promise<boolean>): Promise<boolean> {
    const { dir, file } = this.pathOf(key);
    throwIfAborted(opts.signal);
    let tmp: string | undefined;
    try {
      tmp = await this.tempWith(body);
      await this.ensureDir(dir);
      const placed = await place(tmp, file);
      if (placed) await fsyncPath(dir);
      return placed;
    } catch (err) {
      throw localError(op, key, err);
    } finally {
      if (tmp !== undefined) await unlink(tmp).catch(() => undefined); // gone after a rename
    }
  }

  async put(key: string, body: Buffer, opts: OpOptions = {}): Promise<void> {
    await this.install('put', key, body, opts, async (tmp, file) => {
      await rename(tmp, file);
      return true;
    });
  }

  async putIfAbsent(key: string, body: Buffer, opts: OpOptions = {}): Promise<boolean> {
    return this.install('put', key, body, opts, async (tmp, file) => {
      try {
        await link(tmp, file);
        return true;
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') throw err;
        // On NFS a retransmitted LINK can answer EEXIST although the first one made the
        // link: then the temp file has two names (open(2), "O_EXCL").
        return (await stat(tmp)).nlink === 2;
      }
    });
  }

  async conditionalPut(): Promise<boolean> {
    return true;
  }

  async get(key: string, opts: OpOptions = {}): Promise<Buffer> {
    const { file } = this.pathOf(key);
    throwIfAborted(opts.signal);
    try {
      const fh = await open(file, 'r');
      try {
        return await fh.readFile();
      } finally {
        await fh.close();
      }
    } catch (err) {
      throw localError('get', key, err);
    }
  }

  async getRange(key: string, offset: number, length: number, opts: OpOptions = {}): Promise<Buffer> {
    validateRange(offset, length);
    const { file } = this.pathOf(key);
    throwIfAborted(opts.signal);
    let fh;
    try {
      fh = await open(file, 'r');
    } catch (err) {
      throw localError('get', key, err);
    }
    try {
      const { size } = await fh.stat();
      if (offset >= size) throw new IslandError('STORE_RANGE', `range starts at ${offset}, object ${key} has ${size} bytes`, { details: { key, offset } });
      const n = Math.min(length, size - offset);
      const buf = Buffer.allocUnsafe(n);
      let done = 0;
      while (done < n) {
        const { bytesRead } = await fh.read(buf, done, n - done, offset + done);
        if (bytesRead === 0) throw new IslandError('STORE_INTEGRITY', `object ${key} shrank while being read`, { details: { key } });
        done += bytesRead;
      }
      return buf;
    } catch (err) {
      throw err instanceof IslandError ? err : localError('get', key, err);
    } finally {
      await fh.close();
    }
  }

  async head(key: string, opts: OpOptions = {}): Promise<ObjectInfo | undefined> {
    const { file } = this.pathOf(key);
    throwIfAborted(opts.signal);
    let st;
    try {
      st = await stat(file);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
      throw localError('head', key, err);
    }
    if (st.isDirectory()) throw isDirectoryError('head', key);
    return { key, size: st.size, mtime: Math.floor(st.mtimeMs) };
  }

  async list(prefix: string, opts: ListOptions = {}): Promise<ListPage> {
    validatePrefix(prefix);
    const limit = listLimit(opts.limit);
    throwIfAborted(opts.signal);
    const complete = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')).split('/') : [];
    const base = complete.length ? complete.join('/') + '/' : '';
    const found: ObjectInfo[] = [];
    await this.walk(this.dirOf(complete), base, prefix, opts.startAfter, found, opts.signal);
    found.sort((a, b) => compareKeys(a.key, b.key));
    const items = found.slice(0, limit);
    return { items, next: found.length > limit ? items[items.length - 1]?.key : undefined };
  }

  private async walk(dir: string, base: string, prefix: string, startAfter: string | undefined, out: ObjectInfo[], signal: AbortSignal | undefined): Promise<void> {
    throwIfAborted(signal);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return;
      throw localError('list', base, err);
    }
    for (const name of names) {
      const tag = name[0];
      const part = dec(name.slice(1));
      if (tag === TAG_DIR) {
        const sub = `${base}${part}/`;
        // Descend only where keys can still start with the prefix.
        if (sub.startsWith(prefix) || prefix.startsWith(sub)) await this.walk(join(dir, name), sub, prefix, startAfter, out, signal);
      } else if (tag === TAG_FAN) {
        const fanKey = base + part;
        if (!(fanKey.startsWith(prefix) || prefix.startsWith(fanKey))) continue;
        await this.walkLeaves(join(dir, name), base, prefix, startAfter, out);
      }
    }
  }

  private async walkLeaves(dir: string, base: string, prefix: string, startAfter: string | undefined, out: ObjectInfo[]): Promise<void> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return;
      throw localError('list', base, err);
    }
    for (const name of names) {
      if (name[0] !== TAG_OBJ) continue;
      const key = base + dec(name.slice(1));
      if (!key.startsWith(prefix) || (startAfter !== undefined && compareKeys(key, startAfter) <= 0)) continue;
      try {
        const st = await stat(join(dir, name));
        out.push({ key, size: st.size, mtime: Math.floor(st.mtimeMs) });
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw localError('list', key, err); // deleted meanwhile
      }
    }
  }

  async delete(key: string, opts: OpOptions = {}): Promise<void> {
    const { dir, file } = this.pathOf(key);
    throwIfAborted(opts.signal);
    try {
      await unlink(file);
      await fsyncPath(dir);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw localError('delete', key, err);
    }
  }

  async deleteMany(keys: readonly string[], opts: OpOptions = {}): Promise<void> {
    for (const k of keys) validateKey(k);
    const failed: { key: string; code: string }[] = [];
    for (const k of keys) {
      try {
        await this.delete(k, opts);
      } catch (err) {
        failed.push({ key: k, code: (err as IslandError).code ?? 'INTERNAL' });
      }
    }
    if (failed.length) throw new IslandError('STORE_UNAVAILABLE', `${failed.length} of ${keys.length} deletes failed`, { details: { failed } });
  }

  async close(): Promise<void> {}
}
