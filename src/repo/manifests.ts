/**
 * Listing a region's snapshots: the manifests under snapshots/ (or one volume's), read with
 * bounded parallelism while the listing pages on, with their tombstones when the caller
 * needs to know which are deleted. Every listing of manifests goes through here (the
 * daemon's snapshot list and delete, prune, GC's roots, the head's unreached manifests;
 * findSnapshot, which looks for one id, stops at it). A listing
 * can lag (docs/protocols.md), so it is a hint: callers that must not miss the newest
 * snapshot resolve it through the chain links instead.
 */
import type { Manifest } from '../format/records.js';
import { Semaphore } from '../store/limit.js';
import { listAll, type OpOptions } from '../store/types.js';
import { keys, parseManifestKey } from './keys.js';
import type { Repository } from './repository.js';

/** Manifest reads in flight at once while listing (small objects: round trips dominate). */
export const MANIFEST_READS = 16;

export interface ManifestKey {
  volume: string;
  id: string;
}

/** The manifest keys the listing shows (all volumes, or one). */
export async function* listManifestKeys(repo: Repository, volume?: string, opts: OpOptions = {}): AsyncGenerator<ManifestKey> {
  for await (const o of listAll(repo.store, keys.manifestsPrefix(volume), opts)) {
    const k = parseManifestKey(o.key);
    if (k && (volume === undefined || k.volume === volume)) yield k;
  }
}

export interface ReadManifestsOptions extends OpOptions {
  /** Keys to skip without reading them. */
  skip?: (k: ManifestKey) => boolean;
  /** A manifest that cannot be read or decoded: skipped when this returns (default: thrown). */
  onError?: (k: ManifestKey, err: unknown) => void;
  concurrency?: number;
}

/** Read the listed manifests, MANIFEST_READS at a time, in key order (ULIDs: time order per volume). */
export async function readManifests(repo: Repository, volume?: string, opts: ReadManifestsOptions = {}): Promise<Manifest[]> {
  return readListed(repo, volume, (k) => manifestOf(repo, k, opts), opts);
}

export interface ListedSnapshot {
  manifest: Manifest;
  /** It has a tombstone (deleted; GC frees it after the grace period). */
  deleted: boolean;
}

/**
 * The listed snapshots with whether each is deleted: in each of the MANIFEST_READS slots a
 * snapshot's manifest, then its tombstone (none for a manifest gone since the listing), so
 * MANIFEST_READS reads are in flight, as many as the daemon's store limit lets through (two
 * per slot would only queue there). Each snapshot costs a tombstone read: a listing of
 * tombstones would be a hint, and a deleted snapshot taken for live counts where it must
 * not (prune would keep it in place of a live one). In key order. A tombstone that cannot
 * be read fails the listing.
 */
export async function readSnapshots(repo: Repository, volume?: string, opts: ReadManifestsOptions = {}): Promise<ListedSnapshot[]> {
  return readListed(
    repo,
    volume,
    async (k) => {
      const manifest = await manifestOf(repo, k, opts);
      return manifest && { manifest, deleted: (await repo.getTombstone(k.id, opts)) !== undefined };
    },
    opts,
  );
}

/** The listed manifests of `volume` (or all) without a tombstone. */
export async function readLiveManifests(repo: Repository, volume?: string, opts: ReadManifestsOptions = {}): Promise<Manifest[]> {
  return (await readSnapshots(repo, volume, opts)).filter((s) => !s.deleted).map((s) => s.manifest);
}

/** One listed manifest; undefined when it is gone since the listing, or unreadable and opts.onError took it. */
function manifestOf(repo: Repository, k: ManifestKey, opts: ReadManifestsOptions): Promise<Manifest | undefined> {
  return repo.getManifest(k.volume, k.id, opts).catch((err: unknown) => {
    if (!opts.onError) throw err;
    opts.onError(k, err);
    return undefined;
  });
}

/** `read` each listed key, opts.concurrency (MANIFEST_READS) at a time, while the listing goes on; results in key order. */
async function readListed<T>(repo: Repository, volume: string | undefined, read: (k: ManifestKey) => Promise<T | undefined>, opts: ReadManifestsOptions): Promise<T[]> {
  const sem = new Semaphore(opts.concurrency ?? MANIFEST_READS);
  const reads: Promise<T | undefined>[] = [];
  for await (const k of listManifestKeys(repo, volume, opts)) {
    if (opts.skip?.(k)) continue;
    await sem.acquire(opts.signal);
    reads.push(read(k).finally(() => sem.release()));
    // A failure is thrown by Promise.all below; handled here, it is not an unhandled rejection meanwhile.
    reads.at(-1)?.catch(() => undefined);
  }
  const out: T[] = [];
  for (const r of await Promise.all(reads)) if (r !== undefined) out.push(r);
  return out;
}
