/**
 * Copy of a snapshot to another region (docs/protocols.md, "Copy to another region").
 * The copy restores in the target region alone: its tree is complete there (invariant 3),
 * and it becomes the volume's newest snapshot there, found by attach through the chain.
 *
 *  1. Pin the source snapshot in the source region (holder `copy`, expires after W), then
 *     check it is live (no tombstone, manifest present). A delete before the pin is seen
 *     by the check; one after it finds the pin (and GC keeps pinned snapshots).
 *  2. If the target already holds a manifest of this snapshot, a copy committed before:
 *     complete its chain link and detach record if a crash left them out, and stop (a
 *     tombstone on it there is SNAPSHOT_DELETED: the name is written once).
 *  3. Read the target's view of the volume without listings: highest generation (HEADs of
 *     computable names), refuse while another host holds it there (ATTACHED_ELSEWHERE),
 *     and resolve its head through the chain links. Refuse when that head is newer than
 *     the snapshot: the copy would become the volume's latest there and hide it.
 *  4. Protect what the target already has: pin the target's live head of the volume and
 *     (for a clone) its base snapshot, check each is live, and note every pack their trees
 *     reach. Those packs stay protected until the copy commits (the pin and tombstone
 *     check is the same argument as a commit reusing its parent's blobs).
 *  5. Walk the source tree (nodes only, verified) for the packs it reaches.
 *  6. Packs: one the target holds (HEAD, never a listing) among the protected packs is
 *     skipped; any other is read whole from the source, verified (trailer, frame headers,
 *     every blob's hash) and written to the target under its own name, with bounded
 *     concurrency. Every W/2: renew the pins (and re-check what they pin) and write an
 *     upload checkpoint in the target listing the packs written so far, so the target's
 *     GC keeps them however long the copy takes.
 *  7. Catalog record in the target if it has none (a hint: readers never trust it).
 *  8. Fencing: take a new generation of the volume in the target (as an attach does) and
 *     re-read the head; refuse if it moved past the snapshot meanwhile.
 *  9. Manifest last (invariant 2): the source's manifest with the target's parent (its
 *     head), generation, host and region, and the packs this copy wrote. Then the chain
 *     link, then the detach record of the generation (the volume is free again there).
 * 10. Unpin, in both regions.
 *
 * The snapshot keeps its id in every region: `volume create --from ID` and `snapshot show`
 * name it the same way everywhere. Packs keep their names too, so tree nodes and blob
 * locations are valid unchanged in the target: the tree is copied as it is.
 */
import { IslandError } from '../errors.js';
import type { Manifest, VolumeRecord } from '../format/records.js';
import { acquireGeneration, releaseGeneration } from './attach.js';
import { PinSet } from './pins.js';
import type { Repository } from './repository.js';
import { highestGeneration, resolveHead } from './snapshots.js';
import { copyPack, treePacks, type TreePack } from './tree-packs.js';
import { crashPoint } from '../util/crash.js';

/** Packs read, verified and written at once (16 MiB each: 2 x 64 MiB in memory at most). */
export const COPY_CONCURRENCY = 4;

export interface CopyRequest {
  /** The source snapshot, as read from the source region. */
  snapshot: Manifest;
  /** The image's virtual size, for the target's catalog record when it has none. */
  virtualSize: number;
  /** Window W: pins expire after it; renewals and checkpoints come every W/2. */
  windowMs: number;
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (p: CopyProgress) => void;
}

export interface CopyProgress {
  phase: 'scan' | 'packs' | 'commit' | 'done';
  packsTotal: number;
  /** Packs checked in the target or copied to it. */
  packsDone: number;
  packsCopied: number;
  bytesCopied: number;
}

export interface CopyResult extends CopyProgress {
  /** The manifest as written in the target region. */
  manifest: Manifest;
  /** The target held this snapshot already: nothing was copied. */
  alreadyCopied: boolean;
}

export async function copySnapshot(src: Repository, dst: Repository, req: CopyRequest): Promise<CopyResult> {
  const m = req.snapshot;
  const signal = req.signal;
  const opts = { signal };
  if (src.region === dst.region) throw new IslandError('INVALID_ARGUMENT', `snapshot ${m.id} is already in region ${dst.region}`);
  const progress: CopyProgress = { phase: 'scan', packsTotal: 0, packsDone: 0, packsCopied: 0, bytesCopied: 0 };
  const report = (): void => req.onProgress?.({ ...progress });
  const pins = new PinSet('copy', req.windowMs);
  try {
    // 1. pin, then check the source.
    await pins.add(src, m, 'source snapshot', opts);

    // 2. a copy that committed before.
    const there = await dst.getManifest(m.volume, m.id, opts);
    if (there) {
      if (await dst.getTombstone(there.id, opts)) {
        throw new IslandError('SNAPSHOT_DELETED', `snapshot ${m.id} was copied to region ${dst.region} before and is deleted there`, { details: { snapshot: m.id, region: dst.region } });
      }
      if (!(await dst.getLink(m.volume, there.parent, there.generation, opts))) await dst.putLink(there, opts);
      if (!(await dst.getDetached(m.volume, there.generation, opts))) await releaseGeneration(dst, m.volume, there.generation, opts);
      progress.phase = 'done';
      report();
      return { ...progress, manifest: there, alreadyCopied: true };
    }

    // 3. the target's view of the volume.
    const rec = await dst.getVolume(m.volume, opts);
    if (rec && rec.clusterSize !== m.clusterSize) {
      throw new IslandError('INVALID_ARGUMENT', `volume ${m.volume} in region ${dst.region} has ${rec.clusterSize}-byte clusters, the snapshot ${m.id} ${m.clusterSize}-byte ones`, { details: { volume: m.volume, region: dst.region } });
    }
    const g = await highestGeneration(dst, m.volume, rec?.generation ?? 0, opts);
    await refuseHeld(dst, m.volume, g);
    const head = await resolveHead(dst, m.volume, g, opts);
    refuseNewer(dst, m, head.head);

    // 4. protect the target's packs the copy may reuse.
    const reusable = new Set<string>();
    const keepers: Manifest[] = [];
    if (head.live) keepers.push(head.live);
    if (m.base) {
      const base = await dst.getManifest(m.base.volume, m.base.id, opts);
      if (base && !(await dst.getTombstone(base.id, opts))) keepers.push(base);
    }
    for (const k of keepers) {
      await pins.add(dst, k, 'target snapshot', opts);
      for (const key of (await treePacks(dst, k, opts)).keys()) reusable.add(key);
    }

    // 5. the source tree's packs.
    const packs = [...(await treePacks(src, m, opts)).values()];
    progress.phase = 'packs';
    progress.packsTotal = packs.length;
    report();

    // 6. packs the target lacks, with renewals and checkpoints every W/2.
    const written: Buffer[] = [];
    let protectedAt = src.now();
    let protecting: Promise<void> | undefined;
    let checkpoints = 0;
    const protect = async (): Promise<void> => {
      const at = src.now();
      if (at - protectedAt > req.windowMs) {
        throw new IslandError('WINDOW_EXPIRED', `copy of ${m.id} went ${at - protectedAt} ms without renewing its pins (window ${req.windowMs} ms)`, { details: { snapshot: m.id } });
      }
      await pins.renew(opts);
      await dst.putCheckpoint(checkpointOf(dst, m, at, written), checkpoints++, opts);
      protectedAt = at;
    };
    const one = async (p: TreePack): Promise<void> => {
      const info = reusable.has(p.key) ? await dst.store.head(p.key, opts) : undefined;
      if (!info) {
        progress.bytesCopied += await copyPack(src, dst, p, opts);
        progress.packsCopied++;
        written.push(p.id);
      }
      progress.packsDone++;
      report();
      if (src.now() - protectedAt > req.windowMs / 2) {
        protecting ??= protect().finally(() => (protecting = undefined));
        await protecting;
      }
    };
    let next = 0;
    const lanes = Array.from({ length: Math.min(packs.length, req.concurrency ?? COPY_CONCURRENCY) }, async () => {
      while (next < packs.length) await one(packs[next++] as TreePack);
    });
    const settled = await Promise.allSettled(lanes);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    crashPoint('copy.packs-copied');

    // 7. catalog record.
    progress.phase = 'commit';
    report();
    if (!rec) {
      const fresh: VolumeRecord = { name: m.volume, virtualSize: req.virtualSize, clusterSize: m.clusterSize, region: dst.region, created: dst.now(), source: null, status: 'available', host: null, generation: g, revision: 1 };
      await dst.putVolume(fresh, opts);
    }

    // 8. fencing: a generation of the volume in the target.
    if (src.now() - protectedAt > req.windowMs / 2) await protect();
    const att = await acquireGeneration(dst, m.volume, opts);
    let copy: Manifest;
    let chainEnd = att.head.head;
    try {
      refuseNewer(dst, m, att.head.head);
      if (await dst.getGeneration(m.volume, att.generation + 1, opts)) {
        throw new IslandError('FENCED', `volume ${m.volume} was attached in region ${dst.region} while the copy committed; copy again once it is detached`, { details: { volume: m.volume, region: dst.region } });
      }
      // 9. manifest, link, detach record.
      copy = { ...m, parent: att.head.head?.id ?? null, generation: att.generation, host: dst.host, region: dst.region, packs: [...written].sort(Buffer.compare) };
      await dst.putManifest(copy, opts);
      chainEnd = copy;
      await dst.putLink(copy, opts);
    } finally {
      await releaseGeneration(dst, m.volume, att.generation, opts, chainEnd);
    }
    progress.phase = 'done';
    report();
    return { ...progress, manifest: copy, alreadyCopied: false };
  } finally {
    // 10. unpin.
    await pins.release();
  }
}

async function refuseHeld(dst: Repository, volume: string, g: number): Promise<void> {
  if (g === 0) return;
  const holder = await dst.getGeneration(volume, g);
  if (holder && !(await dst.getDetached(volume, g))) {
    throw new IslandError('ATTACHED_ELSEWHERE', `volume ${volume} is attached in region ${dst.region} on host ${holder.host} (generation ${g}); detach it there before copying into it`, { details: { volume, region: dst.region, host: holder.host, generation: g } });
  }
}

/** Snapshot ids are ULIDs: they order by creation time. */
function refuseNewer(dst: Repository, m: Manifest, head: Manifest | null): void {
  if (head && head.id >= m.id) {
    throw new IslandError('INVALID_ARGUMENT', `region ${dst.region} already holds snapshot ${head.id} of ${m.volume}, newer than ${m.id}: the copy would become the volume's latest there`, { details: { volume: m.volume, region: dst.region, head: head.id } });
  }
}

/** An upload checkpoint in the target: a manifest without a tree listing the packs written so far. */
function checkpointOf(dst: Repository, m: Manifest, at: number, packs: Buffer[]): Manifest {
  return {
    ...m,
    base: null,
    host: dst.host,
    created: at,
    region: dst.region,
    imageLength: 0,
    tree: { root: null, nClusters: 0, fanout: m.tree.fanout, depth: 1 },
    qcow2: null,
    stats: { changedClusters: 0, zeroClusters: 0, uploadedBlobs: 0, uploadedBytes: 0, reusedBlobs: 0, packs: packs.length, pauseMs: null, durationMs: 0 },
    warnings: ['checkpoint'],
    packs: [...packs].sort(Buffer.compare),
  };
}
