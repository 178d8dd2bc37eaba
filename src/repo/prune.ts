/**
 * Prune a volume's snapshots by a retention policy (retention.ts): decide, then delete
 * each snapshot the policy does not keep by writing its tombstone (snapshots.ts,
 * deleteSnapshot). Nothing is forced: a pinned snapshot is skipped with the pins named,
 * and one deleted meanwhile by someone else is reported as such. GC frees the data later.
 *
 * The snapshots considered are the volume's manifests without a tombstone. The listing
 * may lag (Swift): a snapshot it does not show yet is neither kept nor deleted, only
 * the ones it shows are weighed, so a lag can make a prune keep more, never less.
 */
import { requireReadable } from '../crypto/open.js';
import { asIslandError } from '../errors.js';
import type { Manifest } from '../format/records.js';
import type { OpOptions } from '../store/types.js';
import { readLiveManifests } from './manifests.js';
import type { Repository } from './repository.js';
import { applyRetention, describeReasons, type KeepReason, type RetentionPolicy } from './retention.js';
import { deleteSnapshot, pinHolder } from './snapshots.js';
import { crashPoint } from '../util/crash.js';

export interface PruneOptions extends OpOptions {
  dryRun?: boolean;
}

export interface PruneEntry {
  id: string;
  created: number;
}

export interface PruneReport {
  volume: string;
  dryRun: boolean;
  policy: RetentionPolicy;
  /** Newest first, with every rule that keeps each. */
  kept: (PruneEntry & { reasons: KeepReason[]; why: string })[];
  /** Tombstoned now (or, in a dry run, that would be). */
  deleted: PruneEntry[];
  /** Not kept by the policy, but not deleted: the error code and why. */
  skipped: (PruneEntry & { code: string; why: string })[];
}

/** The volume's snapshots without a tombstone, as the listing shows them. */
export async function liveSnapshots(repo: Repository, volume: string, opts: OpOptions = {}): Promise<Manifest[]> {
  return readLiveManifests(repo, volume, opts);
}

export async function pruneSnapshots(repo: Repository, volume: string, policy: RetentionPolicy, opts: PruneOptions = {}): Promise<PruneReport> {
  await requireReadable(repo.store, repo.frames.encrypted, 'prune');
  const snaps = await liveSnapshots(repo, volume, opts);
  const decisions = applyRetention(snaps, policy);
  const report: PruneReport = { volume, dryRun: opts.dryRun === true, policy, kept: [], deleted: [], skipped: [] };
  for (const d of decisions) {
    const entry = { id: d.id, created: d.created };
    if (d.keep) {
      report.kept.push({ ...entry, reasons: [...d.reasons], why: describeReasons(d.reasons) });
      continue;
    }
    if (opts.dryRun) {
      const now = repo.now();
      const pins = (await repo.listPins(d.id, opts)).filter((p) => p.expires > now);
      if (pins.length > 0) report.skipped.push({ ...entry, code: 'PINNED', why: pinnedWhy(pins.map(pinHolder)) });
      else report.deleted.push(entry);
      continue;
    }
    try {
      await deleteSnapshot(repo, volume, d.id, { ...opts, reason: `pruned (${describePolicy(policy)})` });
      crashPoint('prune.tombstoned');
      report.deleted.push(entry);
    } catch (err) {
      const e = asIslandError(err);
      if (e.code !== 'PINNED' && e.code !== 'SNAPSHOT_DELETED' && e.code !== 'NOT_FOUND') throw err;
      const holders = e.details.holders;
      report.skipped.push({ ...entry, code: e.code, why: e.code === 'PINNED' && Array.isArray(holders) ? pinnedWhy(holders as string[]) : e.message });
    }
  }
  return report;
}

function pinnedWhy(holders: readonly string[]): string {
  return `pinned (${holders.join(', ')}); prune does not force, delete it once the pin is gone`;
}

/** "keep last 3, daily 7" */
export function describePolicy(p: RetentionPolicy): string {
  return `keep ${Object.entries(p)
    .filter(([, n]) => (n ?? 0) > 0)
    .map(([r, n]) => `${r} ${String(n)}`)
    .join(', ')}`;
}
