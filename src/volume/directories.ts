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
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';

export const VOLUMES_DIR = 'volumes';
export const KEPT_DIR = 'kept';

export class LocalDirectories {
  constructor(readonly dataDir: string) {}

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

  async dropLive(name: string): Promise<void> {
    await rm(this.live(name), { recursive: true, force: true });
  }

  async dropKept(name: string): Promise<void> {
    await rm(this.kept(name), { recursive: true, force: true });
  }
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
