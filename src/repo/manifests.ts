/**
 * Listing a region's snapshots: the manifests under snapshots/ (or one volume's), read with
 * bounded parallelism. A listing can lag (docs/protocols.md), so it is a hint: callers that
 * must not miss the newest snapshot resolve it through the chain links instead.
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
  const sem = new Semaphore(opts.concurrency ?? MANIFEST_READS);
  const reads: Promise<Manifest | undefined>[] = [];
  for await (const k of listManifestKeys(repo, volume, opts)) {
    if (opts.skip?.(k)) continue;
    await sem.acquire(opts.signal);
    reads.push(
      repo
        .getManifest(k.volume, k.id, opts)
        .catch((err: unknown) => {
          if (!opts.onError) throw err;
          opts.onError(k, err);
          return undefined;
        })
        .finally(() => sem.release()),
    );
    // Surface a failure early instead of after the whole listing.
    reads.at(-1)?.catch(() => undefined);
  }
  const out: Manifest[] = [];
  for (const m of await Promise.all(reads)) if (m) out.push(m);
  return out;
}

/** The listed manifests of `volume` (or all) without a tombstone: the tombstones read MANIFEST_READS at a time too. */
export async function readLiveManifests(repo: Repository, volume?: string, opts: ReadManifestsOptions = {}): Promise<Manifest[]> {
  const all = await readManifests(repo, volume, opts);
  const sem = new Semaphore(opts.concurrency ?? MANIFEST_READS);
  const deleted = await Promise.all(all.map((m) => sem.run(async () => (await repo.getTombstone(m.id, opts)) !== undefined, opts.signal)));
  return all.filter((_, i) => !deleted[i]);
}
