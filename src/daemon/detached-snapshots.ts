/**
 * Snapshots of a volume that is not attached anywhere: a new snapshot that shares the
 * tree of the one the volume would restore from (its head, or for a volume created from
 * a snapshot and never snapshotted since, that snapshot). No data moves: the commit has
 * no changed clusters, so it writes a manifest and a chain link and nothing else.
 *
 * A Cinder snapshot is taken of a detached ("available") volume as often as of an
 * attached one, and each needs an island snapshot of its own (deleting one must never
 * delete another's). The commit runs under the volume's next generation, taken and
 * released as an attach and detach would (docs/protocols.md, "Attach"): an attach
 * elsewhere meanwhile is refused (ATTACHED_ELSEWHERE), and the new snapshot becomes the
 * head that the next attach restores, holding exactly what the old head held.
 *
 * A volume that never held data (never attached, not created from a snapshot) has no
 * image to share: refused with NOT_FOUND (attach it once, or snapshot it attached).
 *
 * A revert (a Cinder revert_to_snapshot) is the same commit with the target snapshot as
 * parent and tree, instead of the head.
 */
import { IslandError } from '../errors.js';
import { parseSnapshotId, parseVolumeName } from '../format/names.js';
import type { Manifest } from '../format/records.js';
import { acquireGeneration, releaseGeneration } from '../repo/attach.js';
import { commitSnapshot } from '../repo/commit.js';
import { sameLocation } from '../format/location.js';
import { highestGeneration, resolveHead } from '../repo/snapshots.js';
import type { DaemonContext } from './context.js';
import { checkRestorable } from './sources.js';

export async function snapshotDetached(ctx: DaemonContext, nameIn: unknown, onFirstOwnSnapshot: (source: Manifest) => Promise<void>): Promise<Manifest> {
  return commitDetached(ctx, parseVolumeName(nameIn), null, onFirstOwnSnapshot);
}

/**
 * Revert a volume attached nowhere to one of its own snapshots: a new snapshot whose
 * parent is that snapshot and which shares its tree (no data moves). Committed under the
 * volume's next generation, it is the child of the target with the highest generation, so
 * the head resolves to it (docs/protocols.md, "Attach", step 4); the snapshots taken after
 * the target stay whole on their now losing fork, listed and restorable by id until they
 * are deleted. A volume grown since keeps its size (its next attach grows the image).
 */
export async function revertDetached(ctx: DaemonContext, nameIn: unknown, snapshotIn: unknown): Promise<Manifest> {
  const name = parseVolumeName(nameIn);
  const id = parseSnapshotId(snapshotIn);
  const target = await ctx.repo.getManifest(name, id);
  if (!target) throw new IslandError('NOT_FOUND', `no snapshot ${id} of volume ${name}`, { details: { volume: name, snapshot: id } });
  return commitDetached(ctx, name, target, async () => undefined);
}

async function commitDetached(ctx: DaemonContext, name: string, target: Manifest | null, onFirstOwnSnapshot: (source: Manifest) => Promise<void>): Promise<Manifest> {
  const repo = ctx.repo;
  const what = target ? 'revert' : 'snapshot';
  if (ctx.attached.has(name)) throw new IslandError('BUSY', `volume ${name} is attached on this host; ${target ? 'detach it before a revert' : 'snapshot it attached'}`, { details: { volume: name } });
  if (ctx.detaching.has(name)) throw new IslandError('BUSY', `volume ${name} is detaching: its final snapshot is uploading`, { details: { volume: name, detaching: true } });
  const unopened = ctx.unopened.get(name);
  if (unopened) throw new IslandError('BUSY', `volume ${name} has a local copy on this host that is not served (${unopened.code}); settle it first`, { details: { volume: name } });
  const rec = await repo.getVolume(name);
  if (!rec) throw new IslandError('NOT_FOUND', `no volume named ${name}`, { details: { volume: name } });
  if (target) await checkRestorable(repo, target);
  const att = await acquireGeneration(repo, name);
  let head = att.head.head;
  try {
    let base = target ?? att.base;
    if (!base && rec.source) base = (await repo.getManifest(rec.source.volume, rec.source.id)) ?? null;
    if (!base) {
      throw new IslandError('NOT_FOUND', `volume ${name} holds no data yet (never attached, not created from a snapshot): there is nothing to snapshot`, { details: { volume: name, empty: true } });
    }
    await checkRestorable(repo, base);
    const own = base.volume === name;
    const m = await commitSnapshot(repo, {
      volume: name,
      generation: att.generation,
      parent: own ? base : null,
      from: own ? null : base,
      imageLength: base.imageLength,
      clusterSize: base.clusterSize,
      fanout: base.tree.fanout,
      consistency: base.consistency,
      qcow2: base.qcow2,
      warnings: [...base.warnings],
      changes: [],
      windowMs: ctx.config.commitWindowMs,
    });
    head = m;
    if (!own) await onFirstOwnSnapshot(base);
    ctx.log.info({ volume: name, snapshot: m.id, shares: base.id, what }, target ? 'detached volume reverted to a snapshot' : 'snapshot of a detached volume (shares the tree of the snapshot it restores from)');
    return m;
  } finally {
    await releaseGeneration(repo, name, att.generation, {}, head);
  }
}

/**
 * Refuse to tombstone the snapshot a detached volume restores from when that would roll
 * the volume back: after the deletion its next attach would restore the newest snapshot
 * before it that is not deleted, and unless that one holds the same image (a snapshot of
 * the detached volume shares its tree) the newer data would be lost. A volume attached
 * somewhere holds its data in its local copy (its next snapshot uploads what the store
 * lacks), and a volume whose record is deleted restores nothing: neither is refused.
 * The parent of a volume attached here is refused too: its next snapshot (and its detach)
 * builds on that parent and would fail.
 */
export async function refuseHeadDelete(ctx: DaemonContext, doomed: readonly Manifest[]): Promise<void> {
  const repo = ctx.repo;
  const ids = new Set(doomed.map((m) => m.id));
  for (const volume of new Set(doomed.map((m) => m.volume))) {
    // The next snapshot of a volume attached here builds on its parent's tree, and its
    // commit refuses a parent that was deleted meanwhile (commit protocol, step 1).
    const parent = (ctx.attached.get(volume) ?? ctx.detaching.get(volume)?.attached)?.parent;
    if (parent && ids.has(parent.id)) {
      throw new IslandError('BUSY', `snapshot ${parent.id} is the one the next snapshot of ${volume} (attached here) builds on; delete it after ${volume}'s next snapshot or its detach`, { details: { volume, snapshot: parent.id, reason: 'parent' } });
    }
    const rec = await repo.getVolume(volume);
    if (!rec || rec.status === 'attached' || ctx.attached.has(volume) || ctx.detaching.has(volume)) continue;
    const head = await resolveHead(repo, volume, await highestGeneration(repo, volume, rec.generation));
    const base = head.live;
    if (!base || !ids.has(base.id)) continue;
    // The snapshot the next attach would restore instead: the nearest older one that stays.
    let next: Manifest | null = null;
    for (let p = base.parent, hops = 0; p !== null && hops < 100_000; hops++) {
      const m = await repo.getManifest(volume, p);
      if (!m) break;
      if (!ids.has(m.id) && !(await repo.getTombstone(m.id))) {
        next = m;
        break;
      }
      p = m.parent;
    }
    if (next && sameImage(next, base)) continue;
    throw new IslandError('BUSY', `snapshot ${base.id} is what volume ${volume} restores from (its newest snapshot); deleting it would roll ${volume} back to ${next ? `snapshot ${next.id}` : 'an empty disk'} and lose what changed since. Delete the volume first, or take another snapshot of it`, {
      details: { volume, snapshot: base.id, reason: 'head', fallback: next?.id ?? null },
    });
  }
}

/** Two snapshots hold the same image: the same tree (one root node) over the same length. */
function sameImage(a: Manifest, b: Manifest): boolean {
  if (a.imageLength !== b.imageLength || a.clusterSize !== b.clusterSize) return false;
  if (a.tree.root === null || b.tree.root === null) return a.tree.root === b.tree.root;
  return sameLocation(a.tree.root, b.tree.root);
}
