/**
 * Restore sources: the snapshots a volume may be created from or attached from. A source
 * exists, is not deleted, and holds a qcow2 image whose virtual size is read from its
 * header through the snapshot's own tree (one cluster fetched, nothing else).
 */
import { IslandError } from '../errors.js';
import { parseSnapshotId } from '../format/names.js';
import type { Manifest } from '../format/records.js';
import { parseQcow2Header } from '../format/qcow2.js';
import type { Repository } from '../repo/repository.js';
import { findSnapshot } from '../repo/snapshots.js';
import { treeFetcher } from '../snapshot/restore.js';

/** How long reading a source's first cluster may take. */
const HEADER_FETCH_MS = 120_000;

/** Refuse a restore source that is deleted or that fsck marked damaged. */
export async function checkRestorable(repo: Repository, m: Manifest): Promise<void> {
  if (await repo.getTombstone(m.id)) throw new IslandError('SNAPSHOT_DELETED', `snapshot ${m.id} is deleted`, { details: { snapshot: m.id } });
  await checkUndamaged(repo, m);
}

/** Refuse a snapshot that fsck could not repair: restoring it would fail on the damage. */
export async function checkUndamaged(repo: Repository, m: Manifest): Promise<void> {
  const d = await repo.getDamage(m.id);
  if (!d) return;
  throw new IslandError(
    'SNAPSHOT_DAMAGED',
    `snapshot ${m.id} of ${m.volume} is marked damaged by fsck (${d.findings.slice(0, 2).join('; ')}${d.findings.length > 2 ? '; ...' : ''}); it cannot be restored: delete it to fall back to the snapshot before it, or copy it back from another region`,
    { details: { snapshot: m.id, volume: m.volume, findings: d.findings } },
  );
}

/** The snapshot `id` names, checked as a restore source, with its image's virtual size. */
export async function restoreSource(repo: Repository, id: unknown): Promise<{ manifest: Manifest; virtualSize: number }> {
  const sid = parseSnapshotId(id);
  const m = await findSnapshot(repo, sid);
  if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${sid}`, { details: { snapshot: sid } });
  await checkRestorable(repo, m);
  const head = await treeFetcher(repo, m).fetch(0, 1, AbortSignal.timeout(HEADER_FETCH_MS));
  let virtualSize: number;
  try {
    virtualSize = parseQcow2Header(head).virtualSize;
  } catch (err) {
    throw new IslandError('FORMAT_CORRUPT', `snapshot ${sid} does not hold a qcow2 image: ${(err as Error).message}`, { cause: err, details: { snapshot: sid } });
  }
  return { manifest: m, virtualSize };
}
