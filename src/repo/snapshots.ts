/**
 * Deleting snapshots, finding them, and choosing the newest snapshot of a volume
 * without trusting a listing or the catalog (docs/protocols.md, "Delete", "Latest").
 */
import { IslandError } from '../errors.js';
import type { Manifest, Pin, Tombstone } from '../format/records.js';
import { listAll, type OpOptions } from '../store/types.js';
import { keys, parseManifestKey } from './keys.js';
import type { Repository } from './repository.js';

/** Find a snapshot by id alone (the listing is a hint; the manifest read is the proof). */
export async function findSnapshot(repo: Repository, id: string, opts: OpOptions = {}): Promise<Manifest | undefined> {
  for await (const o of listAll(repo.store, keys.manifestsPrefix(), opts)) {
    const k = parseManifestKey(o.key);
    if (k?.id === id) return repo.getManifest(k.volume, id, opts);
  }
  return undefined;
}

export interface DeleteOptions extends OpOptions {
  reason?: string;
  /** Delete even when pinned: a restore or copy filling from it may then fail. */
  force?: boolean;
}

/** "attach on host-b": who holds a pin, for messages. */
export function pinHolder(p: Pin): string {
  return `${p.holder} on ${p.host}`;
}

/** Write the tombstone of a snapshot (nothing is removed now: GC does it after G). */
export async function deleteSnapshot(repo: Repository, volume: string, id: string, opts: DeleteOptions = {}): Promise<Tombstone> {
  const m = await repo.getManifest(volume, id, opts);
  if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${id} of volume ${volume}`, { details: { volume, snapshot: id } });
  if (await repo.getTombstone(id, opts)) throw new IslandError('SNAPSHOT_DELETED', `snapshot ${id} is already deleted`, { details: { snapshot: id } });
  const now = repo.now();
  const live = (await repo.listPins(id, opts)).filter((p) => p.expires > now);
  if (live.length > 0 && !opts.force) {
    const holders = live.map(pinHolder);
    throw new IslandError('PINNED', `snapshot ${id} is pinned (${holders.join(', ')}); --force deletes it anyway and what fills from it may fail`, { details: { snapshot: id, pins: live.map((p) => p.id), holders } });
  }
  const t: Tombstone = { snapshot: id, volume, created: now, host: repo.host, reason: opts.reason ?? 'deleted', forced: live.length > 0 };
  await repo.putTombstone(t, opts);
  return t;
}

/** The highest generation of a volume: probe gens/<volume>/<g+1> forward from a hint. */
export async function highestGeneration(repo: Repository, volume: string, hint = 0, opts: OpOptions = {}): Promise<number> {
  let g = Math.max(0, hint);
  // A stale hint may point past generations that exist: step back to one that does.
  while (g > 0 && !(await repo.getGeneration(volume, g, opts))) g--;
  while (await repo.getGeneration(volume, g + 1, opts)) g++;
  return g;
}

export interface Head {
  /** The newest committed snapshot on the winning chain (deleted or not), or null. */
  head: Manifest | null;
  /** The newest snapshot on that chain that is not deleted (the restore base), or null. */
  live: Manifest | null;
  /** Places where two generations both committed a child of one snapshot. */
  forks: { parent: string | null; children: { id: string; generation: number }[] }[];
}

/**
 * Walk the chain links from the volume's root: at each snapshot, the child written by the
 * highest generation wins (a newer attachment fenced the older one); other children are
 * reported as forks. Only names computed from (volume, parent, generation) are read, so a
 * lagging listing cannot hide the newest snapshot.
 */
export async function resolveHead(repo: Repository, volume: string, maxGeneration: number, opts: OpOptions = {}): Promise<Head> {
  const forks: Head['forks'] = [];
  const chain: Manifest[] = [];
  let at: Manifest | null = null;
  for (;;) {
    const children: Manifest[] = [];
    for (let g = maxGeneration; g >= Math.max(1, at?.generation ?? 1); g--) {
      const child = await repo.getLink(volume, at?.id ?? null, g, opts);
      if (child) children.push(child);
    }
    if (children.length === 0) break;
    if (children.length > 1) forks.push({ parent: at?.id ?? null, children: children.map((c) => ({ id: c.id, generation: c.generation })) });
    at = children[0] as Manifest;
    chain.push(at);
  }
  let live: Manifest | null = null;
  for (let i = chain.length - 1; i >= 0; i--) {
    const m = chain[i] as Manifest;
    if (await repo.getTombstone(m.id, opts)) continue;
    if (!(await repo.getManifest(volume, m.id, opts))) continue; // collected
    live = m;
    break;
  }
  return { head: at, live, forks };
}
