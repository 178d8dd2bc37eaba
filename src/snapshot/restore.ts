/**
 * Lazy restore: the engine asks for clusters of its base snapshot on first touch; this
 * fetcher finds them through the snapshot's tree (nodes cached, only the paths touched)
 * and reads each run of clusters whose blobs lie back to back in one pack with a single
 * ranged GET, then verifies every blob before handing the bytes to the engine.
 * Unallocated and zero clusters never touch the network.
 */
import { IslandError } from '../errors.js';
import { hex, type BlobLocation } from '../format/location.js';
import type { Manifest } from '../format/records.js';
import { lookup } from '../format/tree.js';
import { manifestTree } from '../repo/commit.js';
import { keys } from '../repo/keys.js';
import type { Repository } from '../repo/repository.js';
import type { PresentFetcher } from '../volume/engine.js';

/** One ranged GET covers at most this much (a GET costs ~10 ms whatever its size). */
export const MAX_RUN_BYTES = 512 * 1024;
/** Ranged GETs one fetch has in flight at most (a read-ahead window spans several runs). */
export const RUNS_IN_FLIGHT = 4;

export function treeFetcher(repo: Repository, base: Manifest, onFetch?: (bytes: number, gets: number) => void): PresentFetcher {
  const tree = manifestTree(base);
  const reader = repo.nodeReader();
  const C = base.clusterSize;
  return {
    async fetch(first: number, count: number, signal: AbortSignal): Promise<Buffer> {
      const end = Math.min(base.imageLength, (first + count) * C);
      const out = Buffer.alloc(Math.max(0, end - first * C));
      const blobs: { cluster: number; loc: BlobLocation }[] = [];
      for (let c = first; c < first + count && c * C < end; c++) {
        const e = await lookup(tree, c, reader);
        if (e.kind === 'blob') blobs.push({ cluster: c, loc: e.loc });
      }
      // Runs of frames adjacent in one pack: one GET each, RUNS_IN_FLIGHT at a time.
      const runs: { from: number; to: number }[] = [];
      for (let i = 0; i < blobs.length; ) {
        let j = i + 1;
        const head = blobs[i] as { cluster: number; loc: BlobLocation };
        let span = head.loc.length;
        while (j < blobs.length) {
          const prev = (blobs[j - 1] as { loc: BlobLocation }).loc;
          const next = (blobs[j] as { loc: BlobLocation }).loc;
          if (!next.pack.equals(head.loc.pack) || next.offset !== prev.offset + prev.length || span + next.length > MAX_RUN_BYTES) break;
          span += next.length;
          j++;
        }
        runs.push({ from: i, to: j });
        i = j;
      }
      const readRun = async ({ from, to }: { from: number; to: number }): Promise<void> => {
        const head = blobs[from] as { cluster: number; loc: BlobLocation };
        const last = (blobs[to - 1] as { loc: BlobLocation }).loc;
        const key = keys.pack('data', head.loc.pack);
        const bytes = await repo.store.getRange(key, head.loc.offset, last.offset + last.length - head.loc.offset, { signal });
        onFetch?.(bytes.length, 1);
        for (let k = from; k < to; k++) {
          const { cluster, loc } = blobs[k] as { cluster: number; loc: BlobLocation };
          const at = loc.offset - head.loc.offset;
          let plain: Buffer;
          try {
            if (at + loc.length > bytes.length) throw new IslandError('FORMAT_CORRUPT', `pack ${key} ends before the blob at ${loc.offset}`);
            plain = repo.frames.decode(bytes.subarray(at, at + loc.length), loc.id, { base: loc.offset, kind: 'data' });
          } catch (err) {
            const e = err as IslandError;
            throw new IslandError(e.code ?? 'FORMAT_CORRUPT', `volume ${base.volume} cluster ${cluster}: pack ${hex(loc.pack)} offset ${loc.offset}: ${e.message}`, { cause: err, details: { volume: base.volume, cluster, pack: hex(loc.pack), offset: loc.offset } });
          }
          plain.copy(out, (cluster - first) * C);
        }
      };
      for (let r = 0; r < runs.length; r += RUNS_IN_FLIGHT) await Promise.all(runs.slice(r, r + RUNS_IN_FLIGHT).map(readRun));
      return out;
    },
  };
}
