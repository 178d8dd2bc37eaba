/**
 * What this host's data disk holds, for status and for schedulers that place volumes
 * (a Cinder driver's capacity report):
 *
 *   totalBytes, freeBytes   statfs of the data directory's file system (free: what an
 *                           unprivileged writer may still use, f_bavail)
 *   provisionedBytes        the virtual sizes of the volumes attached here, summed: what
 *                           their guests may grow into
 *   usedBytes               the blocks the local directories of those volumes occupy
 *                           (image, bitmaps, side log): sparse files count what they use
 *
 * Everything is read asynchronously: status is served next to FUSE requests.
 */
import { readdir, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { DaemonContext } from './context.js';

/** st_blocks counts 512-byte units whatever the file system's block size (stat(2)). */
const STAT_BLOCK_BYTES = 512;

export interface CapacityView {
  dataDir: string;
  totalBytes: number;
  freeBytes: number;
  provisionedBytes: number;
  usedBytes: number;
}

/** Bytes allocated to the files of one directory (not recursive: a volume directory is flat). */
async function allocatedBytes(dir: string): Promise<number> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return 0; // detached meanwhile
  }
  let sum = 0;
  for (const n of names) {
    const s = await stat(join(dir, n)).catch(() => null);
    if (s?.isFile()) sum += s.blocks * STAT_BLOCK_BYTES;
  }
  return sum;
}

export async function capacity(ctx: DaemonContext): Promise<CapacityView> {
  const dataDir = ctx.dirs.dataDir;
  const fsStat = await statfs(dataDir);
  let provisionedBytes = 0;
  let usedBytes = 0;
  for (const [name, a] of [...ctx.attached]) {
    provisionedBytes += a.virtualSize ?? a.volume.virtualSize;
    usedBytes += await allocatedBytes(ctx.dirs.live(name));
  }
  return { dataDir, totalBytes: fsStat.blocks * fsStat.bsize, freeBytes: fsStat.bavail * fsStat.bsize, provisionedBytes, usedBytes };
}
