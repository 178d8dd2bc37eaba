/**
 * The file operations the volume engine performs, behind a small interface so that tests can
 * run the engine over an in-memory disk that simulates crashes (memfs.ts), count or reorder
 * operations, and inject faults.
 *
 * `nodeFs` is the real implementation: fs/promises FileHandles only (the engine runs in a
 * process that serves FUSE from its event loop, so nothing here blocks), hole punching and
 * data-extent listing through the native addon (native.ts) when it is built. Without the
 * addon a file reports that it cannot punch holes (the engine then writes zeros) and that it
 * does not know its data extents (the engine then treats every cluster as allocated).
 */
import { constants as fsc } from 'node:fs';
import { mkdir, open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { IslandError, codeOf } from '../errors.js';
import { eachDataExtent, nativeAvailable, punchHole } from './native.js';

export interface LocalFile {
  readonly path: string;
  /** Read up to `len` bytes at `pos` into buf[off...]; fewer only at the end of the file. */
  read(buf: Uint8Array, off: number, len: number, pos: number): Promise<number>;
  /** Write all `len` bytes of buf[off...] at `pos` (the file grows as needed). */
  write(buf: Uint8Array, off: number, len: number, pos: number): Promise<void>;
  /** fdatasync. */
  datasync(): Promise<void>;
  /** fsync. */
  sync(): Promise<void>;
  truncate(len: number): Promise<void>;
  size(): Promise<number>;
  /** Whether punchHole can work here (it may still find out otherwise and return false). */
  canPunchHoles(): boolean;
  /**
   * Deallocate [pos, pos + len) keeping the file size; the range reads as zeros afterwards.
   * False (and nothing done) when the file system or build cannot punch holes.
   */
  punchHole(pos: number, len: number): Promise<boolean>;
  /** The data extents inside [start, end) as [offset, length], ascending; null when unknown. */
  dataExtents(start: number, end: number): Promise<Array<[number, number]> | null>;
  close(): Promise<void>;
}

/** 'r+': an existing file, read-write. 'create': read-write, created when missing, kept when present. */
export type OpenMode = 'r+' | 'create';

export interface LocalFs {
  open(path: string, mode: OpenMode): Promise<LocalFile>;
  exists(path: string): Promise<boolean>;
  /** mkdir -p. */
  mkdir(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  /** Remove a file; a missing file is not an error. */
  unlink(path: string): Promise<void>;
  /** fsync a directory, making renames and creations in it durable. */
  syncDir(path: string): Promise<void>;
}

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

/** A local I/O failure as an IslandError naming the operation and file. */
export function localIoError(op: string, path: string, err: unknown, details: Record<string, unknown> = {}): IslandError {
  if (err instanceof IslandError) return err;
  const errno = errnoOf(err);
  if (op === 'open' && errno === 'ENOENT') return new IslandError('NOT_FOUND', `${path} does not exist`, { cause: err, details: { path } });
  const code = errno === 'ENOSPC' || errno === 'EDQUOT' ? 'NO_SPACE' : 'LOCAL_IO';
  return new IslandError(code, `${op} ${path}: ${(err as Error).message ?? String(err)}`, { cause: err, details: { op, path, errno, ...details } });
}

class NodeFile implements LocalFile {
  /** Cleared when the file system refuses hole punching (or the addon is missing). */
  private holes: boolean;

  constructor(
    readonly path: string,
    private readonly fh: FileHandle,
  ) {
    this.holes = nativeAvailable();
  }

  async read(buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
    let done = 0;
    try {
      while (done < len) {
        const { bytesRead } = await this.fh.read(buf, off + done, len - done, pos + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (err) {
      throw localIoError('read', this.path, err, { pos, len });
    }
    return done;
  }

  async write(buf: Uint8Array, off: number, len: number, pos: number): Promise<void> {
    let done = 0;
    try {
      while (done < len) {
        const { bytesWritten } = await this.fh.write(buf, off + done, len - done, pos + done);
        done += bytesWritten;
      }
    } catch (err) {
      throw localIoError('write', this.path, err, { pos, len });
    }
  }

  async datasync(): Promise<void> {
    try {
      await this.fh.datasync();
    } catch (err) {
      throw localIoError('fdatasync', this.path, err);
    }
  }

  async sync(): Promise<void> {
    try {
      await this.fh.sync();
    } catch (err) {
      throw localIoError('fsync', this.path, err);
    }
  }

  async truncate(len: number): Promise<void> {
    try {
      await this.fh.truncate(len);
    } catch (err) {
      throw localIoError('truncate', this.path, err, { len });
    }
  }

  async size(): Promise<number> {
    try {
      return (await this.fh.stat()).size;
    } catch (err) {
      throw localIoError('stat', this.path, err);
    }
  }

  canPunchHoles(): boolean {
    return this.holes;
  }

  async punchHole(pos: number, len: number): Promise<boolean> {
    if (!this.holes) return false;
    try {
      await punchHole(this.fh.fd, pos, len);
      return true;
    } catch (err) {
      const errno = (err as IslandError).details?.['errno'];
      if (codeOf(err) === 'NATIVE_MISSING' || errno === 'ENOTSUP' || errno === 'EOPNOTSUPP') {
        this.holes = false;
        return false;
      }
      throw localIoError('punch hole in', this.path, err, { pos, len });
    }
  }

  async dataExtents(start: number, end: number): Promise<Array<[number, number]> | null> {
    if (!nativeAvailable()) return null;
    const out: Array<[number, number]> = [];
    try {
      for await (const e of eachDataExtent(this.fh.fd, start, end)) out.push(e);
    } catch (err) {
      const errno = (err as IslandError).details?.['errno'];
      if (errno === 'EINVAL' || errno === 'ENOTSUP' || errno === 'EOPNOTSUPP') return null; // no SEEK_DATA here
      throw localIoError('list data extents of', this.path, err, { start, end });
    }
    return out;
  }

  async close(): Promise<void> {
    try {
      await this.fh.close();
    } catch (err) {
      throw localIoError('close', this.path, err);
    }
  }
}

/** The real local file system. */
export const nodeFs: LocalFs = {
  async open(path: string, mode: OpenMode): Promise<LocalFile> {
    const flags = mode === 'create' ? fsc.O_RDWR | fsc.O_CREAT : fsc.O_RDWR;
    try {
      return new NodeFile(path, await open(path, flags, 0o600));
    } catch (err) {
      throw localIoError('open', path, err);
    }
  },
  async exists(path: string): Promise<boolean> {
    try {
      await stat(path);
      return true;
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return false;
      throw localIoError('stat', path, err);
    }
  },
  async mkdir(path: string): Promise<void> {
    try {
      await mkdir(path, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw localIoError('mkdir', path, err);
    }
  },
  async rename(from: string, to: string): Promise<void> {
    try {
      await rename(from, to);
    } catch (err) {
      throw localIoError('rename', from, err, { to });
    }
  },
  async unlink(path: string): Promise<void> {
    try {
      await unlink(path);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw localIoError('unlink', path, err);
    }
  },
  async syncDir(path: string): Promise<void> {
    let fh: FileHandle | undefined;
    try {
      fh = await open(path, fsc.O_RDONLY);
      await fh.sync();
    } catch (err) {
      throw localIoError('fsync directory', path, err);
    } finally {
      await fh?.close().catch(() => undefined);
    }
  },
};
