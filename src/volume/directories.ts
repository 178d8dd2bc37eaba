/**
 * Where volumes live on this host's data directory, and the moves between those places:
 *
 *   <dataDir>/volumes/<name>   the local state of a volume attached here (served)
 *   <dataDir>/kept/<name>      the local copy of a volume detached with --keep-local
 *
 * One owner for these paths: the daemon asks for a directory by volume name and never
 * builds a path itself. Moves are renames inside one file system, followed by an fsync of
 * both parent directories, so a crash leaves a directory in exactly one of the places.
 */
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { IslandError } from '../errors.js';
import { lockExclusive } from './native.js';
import { STATE_FILE } from './state.js';

export const VOLUMES_DIR = 'volumes';
export const KEPT_DIR = 'kept';
/**
 * Local copies island stopped using but must not delete (they may hold writes no snapshot
 * has): fenced by another host's forced attach, damaged, or older than the newest snapshot.
 * Kept for the operator to inspect; island never removes them.
 */
export const ASIDE_DIR = 'aside';

/** Why a local copy was set aside (part of its directory name). */
export type AsideReason = 'fenced' | 'damaged' | 'stale';
/** Locked (flock) by the daemon that serves the data directory; holds its pid, for messages. */
export const LOCK_FILE = 'lock';

/** The data directory's lock, held until release() (or until the process dies). */
export interface DataDirLock {
  release(): Promise<void>;
}

export class LocalDirectories {
  constructor(readonly dataDir: string) {}

  /**
   * Take the data directory for this process: one daemon serves a data directory, or two
   * would recover, serve and snapshot the same volumes, each overwriting the other's
   * writes. The lock is flock(2) on `<dataDir>/lock`: the kernel drops it when the holder
   * dies, so no stale lock needs breaking after a crash. DATA_DIR_LOCKED names the holder.
   */
  async lock(): Promise<DataDirLock> {
    await mkdir(this.dataDir, { recursive: true, mode: 0o700 });
    const path = join(this.dataDir, LOCK_FILE);
    const fh: FileHandle = await open(path, 'a+', 0o600);
    let held = false;
    try {
      held = await lockExclusive(fh.fd);
      if (!held) {
        const holder = (await fh.readFile('utf8').catch(() => '')).trim();
        throw new IslandError('DATA_DIR_LOCKED', `data directory ${this.dataDir} is in use by another island daemon${holder ? ` (pid ${holder.slice(0, 20)})` : ''}; stop it first, or give this one its own data directory`, {
          details: { dataDir: this.dataDir, holder: holder.slice(0, 20) || null },
        });
      }
      await fh.truncate(0);
      await fh.write(`${process.pid}\n`, 0);
    } catch (err) {
      await fh.close();
      throw err;
    }
    let closed = false;
    return {
      release: async () => {
        if (closed) return;
        closed = true;
        await fh.close();
      },
    };
  }

  /** The directory of a volume attached (served) here. */
  live(name: string): string {
    return join(this.dataDir, VOLUMES_DIR, name);
  }

  /** The directory of a volume's kept local copy (detached with --keep-local). */
  kept(name: string): string {
    return join(this.dataDir, KEPT_DIR, name);
  }

  /** Names of the volumes with a live directory, sorted (reopened at start). */
  async listLive(): Promise<string[]> {
    await mkdir(join(this.dataDir, VOLUMES_DIR), { recursive: true });
    return (await readdir(join(this.dataDir, VOLUMES_DIR))).sort();
  }

  hasLive(name: string): Promise<boolean> {
    return exists(this.live(name));
  }

  hasKept(name: string): Promise<boolean> {
    return exists(this.kept(name));
  }

  /** Move a live directory to kept/ (detach --keep-local). */
  async keep(name: string): Promise<void> {
    await mkdir(join(this.dataDir, KEPT_DIR), { recursive: true });
    await moveDurably(this.live(name), this.kept(name));
  }

  /** Move a kept copy back to live (attach on the host that kept it). */
  async reclaim(name: string): Promise<void> {
    await mkdir(join(this.dataDir, VOLUMES_DIR), { recursive: true });
    await moveDurably(this.kept(name), this.live(name));
  }

  asideRoot(): string {
    return join(this.dataDir, ASIDE_DIR);
  }

  /**
   * Move a volume's live directory to aside/<name>.<reason>.g<generation>.<time>: its
   * writes may be in no snapshot, so it is never dropped, and a later attach here never
   * mistakes it for a kept copy. Returns the new path.
   */
  async setAside(name: string, reason: AsideReason, generation: number): Promise<string> {
    await mkdir(this.asideRoot(), { recursive: true });
    const to = join(this.asideRoot(), `${name}.${reason}.g${generation}.${new Date().toISOString().replace(/[:.]/g, '-')}`);
    await moveDurably(this.live(name), to);
    return to;
  }

  async dropLive(name: string): Promise<void> {
    await dropVolumeDir(this.live(name));
  }

  async dropKept(name: string): Promise<void> {
    await dropVolumeDir(this.kept(name));
  }
}

/**
 * Remove a volume directory, its state record first (durably): a removal cut short by a
 * crash then leaves a directory without a state record, which the next attach takes for an
 * unfinished create and starts over. Removed in readdir order, it could leave the state
 * record without the image, a copy island refuses to serve (LOCAL_STATE_DAMAGED).
 */
async function dropVolumeDir(dir: string): Promise<void> {
  if (!(await exists(dir))) return;
  await rm(join(dir, STATE_FILE), { force: true });
  await syncDirectory(dir);
  await rm(dir, { recursive: true, force: true });
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** fsync a directory, so a rename or a new entry in it survives a crash. */
export async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function moveDurably(from: string, to: string): Promise<void> {
  await rename(from, to);
  await syncDirectory(dirname(to));
  if (dirname(from) !== dirname(to)) await syncDirectory(dirname(from));
}
