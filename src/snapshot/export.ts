/**
 * Write a snapshot's image to a local file, whole (not lazily): every blob is fetched,
 * verified and written at its cluster's offset; zero and unallocated clusters stay holes.
 * Used to check snapshots against the images they were taken from, and to export one.
 */
import { open } from 'node:fs/promises';
import { iterate } from '../format/tree.js';
import type { Manifest } from '../format/records.js';
import { manifestTree } from '../repo/commit.js';
import type { Repository } from '../repo/repository.js';

export async function exportSnapshot(repo: Repository, m: Manifest, path: string, signal?: AbortSignal): Promise<{ blobs: number; bytes: number }> {
  const fh = await open(path, 'w', 0o600);
  let blobs = 0;
  let bytes = 0;
  try {
    for await (const run of iterate(manifestTree(m), repo.nodeReader())) {
      signal?.throwIfAborted();
      if (run.entry.kind !== 'blob') continue;
      const plain = await repo.readBlob('data', run.entry.loc, { signal });
      await fh.write(plain, 0, plain.length, run.first * m.clusterSize);
      blobs++;
      bytes += plain.length;
    }
    await fh.truncate(m.imageLength);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { blobs, bytes };
}
