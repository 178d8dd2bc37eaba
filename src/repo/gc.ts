/**
 * Garbage collection (docs/protocols.md, "GC").
 *
 *  1. Read tombstones. A snapshot is released when its tombstone is older than the grace
 *     period G; younger tombstones still protect their snapshot (a writer that checked
 *     the parent just before the tombstone may still commit within W < G).
 *  2. Roots: every manifest that is not released, plus every snapshot with a live pin
 *     (an attach filling from it, a copy, an upload reusing it).
 *  3. Mark every tree node and blob reachable from the roots, walking each distinct
 *     subtree once (shared subtrees are shared work).
 *  4. Delete a pack only when nothing marked lies in it AND it is older than G: a pack
 *     younger than G may belong to an upload that has not committed yet (its manifest is
 *     not written, or not yet visible in a lagging listing).
 *  5. Last, remove the manifests of released snapshots that nothing pins, then their
 *     tombstones. Chain links are kept: they are how readers find the newest snapshot.
 * Every deletion is of something no root reaches; a GC that dies midway leaves only
 * garbage that the next run collects.
 */
import type { Manifest } from '../format/records.js';
import { collectNodeRefs } from '../format/tree.js';
import { hex } from '../format/location.js';
import { decodeManifest, decodeTombstone, type Tombstone } from '../format/records.js';
import { listAll, type OpOptions } from '../store/types.js';
import { manifestTree } from './commit.js';
import { keys, parseManifestKey, parsePackKey } from './keys.js';
import type { Repository } from './repository.js';

export interface GcOptions extends OpOptions {
  /** Grace period G in ms. */
  graceMs: number;
  dryRun?: boolean;
  onProgress?: (phase: string, done: number) => void;
}

export interface GcReport {
  roots: number;
  releasedSnapshots: string[];
  nodesVisited: number;
  packsTotal: number;
  packsDeleted: string[];
  bytesFreed: number;
  /** Unreachable packs kept because they are younger than the grace period. */
  packsTooYoung: number;
  manifestsDeleted: number;
  tombstonesDeleted: number;
}

export async function collectGarbage(repo: Repository, opts: GcOptions): Promise<GcReport> {
  const now = repo.now();
  const signal = opts.signal;
  // 1. tombstones
  const tombstones = new Map<string, Tombstone>();
  for await (const o of listAll(repo.store, keys.tombstonesPrefix, { signal })) {
    const buf = await repo.store.get(o.key, { signal }).catch(() => undefined);
    if (!buf) continue;
    const t = decodeTombstone(buf);
    tombstones.set(t.snapshot, t);
  }
  const released = (id: string): boolean => {
    const t = tombstones.get(id);
    return t !== undefined && now - t.created >= opts.graceMs;
  };
  // 2a. packs of live upload checkpoints, listed BEFORE manifests: an upload writes its
  //     checkpoint before its manifest, so one of the two listings shows its packs.
  const markedNodes = new Set<string>();
  const livePacks = new Set<string>();
  const staleCheckpoints: string[] = [];
  for await (const o of listAll(repo.store, keys.checkpointsPrefix, { signal })) {
    const buf = await repo.store.get(o.key, { signal }).catch(() => undefined);
    if (!buf) continue;
    const c = decodeManifest(buf);
    if (now - c.created >= opts.graceMs) {
      staleCheckpoints.push(o.key);
      continue;
    }
    // A checkpoint does not say which kind each pack is: keep both names alive.
    for (const p of c.packs) {
      livePacks.add(`data/${hex(p)}`);
      livePacks.add(`meta/${hex(p)}`);
    }
  }
  // 2. roots
  const pinned = new Set((await repo.listPins(undefined, { signal })).filter((p) => p.expires > now).map((p) => p.snapshot));
  const roots: Manifest[] = [];
  const releasedManifests: { volume: string; id: string }[] = [];
  for await (const o of listAll(repo.store, keys.manifestsPrefix(), { signal })) {
    const k = parseManifestKey(o.key);
    if (!k) continue;
    if (released(k.id) && !pinned.has(k.id)) {
      releasedManifests.push(k);
      continue;
    }
    const m = await repo.getManifest(k.volume, k.id, { signal });
    if (m) roots.push(m);
  }
  const reader = repo.nodeReader();
  // 3. mark everything the roots reach.
  for (const m of roots) {
    if (m.tree.root === null) continue;
    // A node is identified by where it is stored, not by its hash: equal nodes written by
    // two uploads live in two packs, and both packs are reachable.
    const where = (loc: { pack: Buffer; offset: number }): string => `${hex(loc.pack)}:${loc.offset}`;
    for await (const visit of collectNodeRefs(manifestTree(m), reader, { skip: (ref) => markedNodes.has(where(ref.loc)), signal })) {
      markedNodes.add(where(visit.ref.loc));
      livePacks.add(`meta/${hex(visit.ref.loc.pack)}`);
      if (visit.node.kind === 'leaf') {
        for (const e of visit.node.entries) if (e.kind === 'blob') livePacks.add(`data/${hex(e.loc.pack)}`);
      }
    }
    opts.onProgress?.('mark', markedNodes.size);
  }
  // 4. sweep packs
  const report: GcReport = { roots: roots.length, releasedSnapshots: releasedManifests.map((r) => r.id), nodesVisited: markedNodes.size, packsTotal: 0, packsDeleted: [], bytesFreed: 0, packsTooYoung: 0, manifestsDeleted: 0, tombstonesDeleted: 0 };
  const doomed: string[] = [];
  for (const prefix of keys.packPrefixes) {
    for await (const o of listAll(repo.store, prefix, { signal })) {
      const p = parsePackKey(o.key);
      if (!p) continue;
      report.packsTotal++;
      if (livePacks.has(`${p.kind === 'data' ? 'data' : 'meta'}/${p.id}`)) continue;
      if (now - o.mtime < opts.graceMs) {
        report.packsTooYoung++;
        continue;
      }
      doomed.push(o.key);
      report.bytesFreed += o.size;
    }
  }
  report.packsDeleted = doomed;
  if (opts.dryRun) return report;
  if (doomed.length) await repo.store.deleteMany(doomed, { signal });
  opts.onProgress?.('sweep', doomed.length);
  // 5. manifests, then tombstones, of released snapshots
  for (const r of releasedManifests) await repo.store.delete(keys.manifest(r.volume, r.id), { signal });
  report.manifestsDeleted = releasedManifests.length;
  for (const r of releasedManifests) await repo.store.delete(keys.tombstone(r.id), { signal });
  report.tombstonesDeleted = releasedManifests.length;
  if (staleCheckpoints.length) await repo.store.deleteMany(staleCheckpoints, { signal });
  return report;
}
