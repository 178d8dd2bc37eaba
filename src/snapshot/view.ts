/**
 * A snapshot's image as a read-only file: what `island snapshot mount` shows on the mount,
 * for `qemu-img check`, for copying files out (qemu-nbd, guestfish) and for inspection.
 *
 * Clusters are fetched on first read through the snapshot's tree, as a restore fetches
 * them (runs of adjacent blobs in one ranged GET, every blob verified), and kept in a
 * memory cache bounded in bytes; concurrent reads of one run share one fetch. Nothing is
 * written locally. Writes and truncation fail with READ_ONLY (EROFS).
 */
import { LRUCache } from 'lru-cache';
import { IslandError } from '../errors.js';
import type { Manifest } from '../format/records.js';
import type { Repository } from '../repo/repository.js';
import { treeFetcher } from './restore.js';

/** Bytes of fetched clusters a view keeps in memory. */
export const VIEW_CACHE_BYTES = 64 * 1024 * 1024;
/** A view fetches and caches clusters in runs of this much (its readers jump about: small runs). */
const VIEW_RUN_BYTES = 512 * 1024;
/** A read waits this long for the store at most, then fails (EIO), as a lazy restore does. */
const FETCH_TIMEOUT_MS = 60_000;

export class SnapshotImage {
  readonly length: number;
  private readonly runClusters: number;
  private readonly cache: LRUCache<number, Buffer>;

  constructor(
    repo: Repository,
    readonly manifest: Manifest,
  ) {
    this.length = manifest.imageLength;
    const C = manifest.clusterSize;
    this.runClusters = Math.max(1, Math.floor(VIEW_RUN_BYTES / C));
    const fetcher = treeFetcher(repo, manifest);
    this.cache = new LRUCache<number, Buffer>({
      maxSize: VIEW_CACHE_BYTES,
      sizeCalculation: (b) => Math.max(1, b.length),
      // One run of clusters per key: readers of the same run wait for one fetch.
      fetchMethod: async (run) => fetcher.fetch(run * this.runClusters, this.runClusters, AbortSignal.timeout(FETCH_TIMEOUT_MS)),
    });
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    if (offset >= this.length) return 0;
    const end = Math.min(this.length, offset + buf.length);
    const runBytes = this.runClusters * this.manifest.clusterSize;
    let at = offset;
    while (at < end) {
      const run = Math.floor(at / runBytes);
      const bytes = await this.cache.fetch(run);
      if (!bytes) throw new IslandError('INTERNAL', 'snapshot view cache returned nothing');
      const inRun = at - run * runBytes;
      const n = Math.min(end - at, runBytes - inRun);
      // A run shorter than asked ends at the image's end: what is past it reads as zeros.
      const avail = Math.max(0, Math.min(n, bytes.length - inRun));
      if (avail > 0) bytes.copy(buf, at - offset, inRun, inRun + avail);
      if (avail < n) buf.fill(0, at - offset + avail, at - offset + n);
      at += n;
    }
    return end - offset;
  }

  write(): Promise<number> {
    return Promise.reject(new IslandError('READ_ONLY', `snapshot ${this.manifest.id} is mounted read-only`));
  }

  truncate(): Promise<void> {
    return Promise.reject(new IslandError('READ_ONLY', `snapshot ${this.manifest.id} is mounted read-only`));
  }

  fsync(): Promise<void> {
    return Promise.resolve();
  }
}
