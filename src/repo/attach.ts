/**
 * Attachment generations: fencing of hosts (docs/protocols.md, "Attach", "Detach").
 *
 * Attach: find the highest generation g (probing gens/<volume>/g+1 forward from the
 * catalog's hint), refuse if g is held by another host that did not detach (unless
 * forced: the old host must be fenced first), write gens/<volume>/<g+1> naming this
 * host, read it back (two hosts racing for one generation: the one whose record is not
 * there lost and backs off), resolve the head through the chain links, and update the
 * catalog record (a hint only). Detach writes detached/<volume>/<g> once the final
 * snapshot is committed.
 */
import { IslandError } from '../errors.js';
import type { Lease, Manifest, VolumeRecord } from '../format/records.js';
import type { OpOptions } from '../store/types.js';
import type { Repository } from './repository.js';
import { highestGeneration, resolveHead, type Head } from './snapshots.js';

/** A generation record never expires by time: it is ended by a detach record. */
const FOREVER_MS = 100 * 365 * 24 * 3600 * 1000;

export interface AttachOptions extends OpOptions {
  force?: boolean;
}

export interface Attachment {
  generation: number;
  head: Head;
  /** The restore base: the newest live snapshot, or null for an empty volume. */
  base: Manifest | null;
  /** The previous holder when it had not detached (only with force). */
  tookOverFrom: string | null;
}

export async function acquireGeneration(repo: Repository, volume: string, opts: AttachOptions = {}): Promise<Attachment> {
  const rec = await repo.getVolume(volume, opts);
  const g = await highestGeneration(repo, volume, rec?.generation ?? 0, opts);
  let tookOverFrom: string | null = null;
  if (g > 0) {
    const holder = await repo.getGeneration(volume, g, opts);
    const detached = await repo.getDetached(volume, g, opts);
    if (holder && !detached && holder.host !== repo.host) {
      if (!opts.force) {
        throw new IslandError('ATTACHED_ELSEWHERE', `volume ${volume} is attached on host ${holder.host} (generation ${g}); detach it there, or fence that host and attach with --force`, { details: { volume, host: holder.host, generation: g } });
      }
      tookOverFrom = holder.host;
    }
  }
  const now = repo.now();
  const lease: Lease = { volume, host: repo.host, generation: g + 1, created: now, expires: now + FOREVER_MS };
  await repo.putGeneration(lease, opts);
  const back = await repo.getGeneration(volume, g + 1, opts);
  if (!back || back.host !== repo.host || back.created !== now) {
    throw new IslandError('BUSY', `another host attached ${volume} at the same moment (generation ${g + 1}); try again`, { details: { volume, generation: g + 1 } });
  }
  const head = await resolveHead(repo, volume, g + 1, opts);
  if (rec) {
    const next: VolumeRecord = { ...rec, status: 'attached', host: repo.host, generation: g + 1, revision: rec.revision + 1 };
    await repo.putVolume(next, opts);
  }
  return { generation: g + 1, head, base: head.live, tookOverFrom };
}

/** Mark generation g ended cleanly (its chain links are all written). */
export async function releaseGeneration(repo: Repository, volume: string, generation: number, opts: OpOptions = {}): Promise<void> {
  const now = repo.now();
  await repo.putDetached({ volume, host: repo.host, generation, created: now, expires: now + FOREVER_MS }, opts);
  const rec = await repo.getVolume(volume, opts);
  if (rec && rec.generation === generation) {
    await repo.putVolume({ ...rec, status: 'available', host: null, revision: rec.revision + 1 }, opts);
  }
}
