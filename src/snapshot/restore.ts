/**
 * Lazy restore: the engine asks for clusters of its base snapshot on first touch; this
 * fetcher finds them through the snapshot's tree (nodes cached, only the paths touched, one
 * walk per fetch), reads their blobs with as few ranged GETs as repo/pack-reads.ts plans
 * (blobs of one pack in order, small gaps read and discarded, a few MiB per GET, any number
 * of packs), then verifies every blob before handing the bytes to the engine. Unallocated
 * and zero clusters never touch the network.
 */
import { IslandError } from '../errors.js';
import { hex } from '../format/location.js';
import type { Manifest } from '../format/records.js';
import { iterate } from '../format/tree.js';
import { manifestTree } from '../repo/commit.js';
import { blobIn, fetchPackRead, planPackReads, type BlobWant, type PackRead } from '../repo/pack-reads.js';
import type { Repository } from '../repo/repository.js';
import { Semaphore } from '../store/limit.js';
import type { PresentFetcher } from '../volume/engine.js';

/** Ranged GETs one fetch has in flight at most (a fetch of blobs from many packs). */
export const RUNS_IN_FLIGHT = 4;

export function treeFetcher(repo: Repository, base: Manifest, onFetch?: (bytes: number, gets: number) => void): PresentFetcher {
  const tree = manifestTree(base);
  const reader = repo.nodeReader();
  const C = base.clusterSize;
  return {
    async fetch(first: number, count: number, signal: AbortSignal): Promise<Buffer> {
      const end = Math.min(base.imageLength, (first + count) * C);
      const out = Buffer.alloc(Math.max(0, end - first * C));
      const wants: BlobWant<number>[] = [];
      // One walk over the range (each node decoded once), not a lookup per cluster.
      const to = Math.min(Math.ceil(end / C), tree.shape.nClusters);
      if (first < to) for await (const run of iterate(tree, reader, first, to)) if (run.entry.kind === 'blob') wants.push({ loc: run.entry.loc, tag: run.first });
      const readOne = async (r: PackRead<number>): Promise<void> => {
        const bytes = await fetchPackRead(repo, 'data', r, { signal });
        onFetch?.(bytes.length, 1);
        for (const { loc, tag: cluster } of r.blobs) {
          let plain: Buffer;
          try {
            plain = blobIn(repo, 'data', r.offset, bytes, loc);
          } catch (err) {
            const e = err as IslandError;
            throw new IslandError(e.code ?? 'FORMAT_CORRUPT', `volume ${base.volume} cluster ${cluster}: pack ${hex(loc.pack)} offset ${loc.offset}: ${e.message}`, { cause: err, details: { volume: base.volume, cluster, pack: hex(loc.pack), offset: loc.offset } });
          }
          plain.copy(out, (cluster - first) * C);
        }
      };
      const sem = new Semaphore(RUNS_IN_FLIGHT);
      await Promise.all(planPackReads(wants).map((r) => sem.run(() => readOne(r), signal)));
      return out;
    },
  };
}
