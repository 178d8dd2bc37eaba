/**
 * Human-readable lines for the reports of island gc and island snapshot prune (with
 * --json the reports are printed as the daemon returns them).
 */
import { humanSize } from '../format/names.js';
import type { GcReport } from '../repo/gc.js';
import type { PruneReport } from '../repo/prune.js';

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

export function gcLines(r: GcReport): string[] {
  const verb = r.dryRun ? 'would free' : 'freed';
  const records = r.manifestsDeleted + r.tombstonesDeleted + r.checkpointsDeleted;
  const lines = [
    `${r.dryRun ? 'gc (dry run)' : 'gc'}: ${verb} ${plural(r.packsDeleted + records, 'object')}, ${humanSize(r.bytesFreed)} of packs: ` +
      `${plural(r.packsDeleted, 'pack')}, ${plural(r.manifestsDeleted, 'manifest')} and ${plural(r.tombstonesDeleted, 'tombstone')} of ${plural(r.releasedSnapshots.length, 'deleted snapshot')}, ${plural(r.checkpointsDeleted, 'stale checkpoint')}`,
    `  store: ${plural(r.packsTotal, 'pack')}, ${humanSize(r.packBytesTotal)}; ${plural(r.roots, 'live snapshot')} reach ${plural(r.livePacks, 'pack')} holding ${humanSize(r.liveBytes)} of live blobs and nodes`,
    `  partly dead: ${plural(r.partlyDeadPacks, 'pack')}, ${humanSize(r.reclaimableBytes)} reclaimable (kept whole: only wholly dead packs are deleted)`,
  ];
  for (const p of r.topPartlyDead) lines.push(`    ${p.key}\t${humanSize(p.size)}, ${humanSize(p.liveBytes)} live, ${humanSize(p.reclaimableBytes)} reclaimable`);
  if (r.partlyDeadPacks > r.topPartlyDead.length) lines.push(`    ... and ${r.partlyDeadPacks - r.topPartlyDead.length} more`);
  if (r.packsTooYoung > 0 || r.packsProtected > 0) {
    lines.push(`  kept: ${plural(r.packsTooYoung, 'unreferenced pack')} younger than the grace period, ${plural(r.packsProtected, 'pack')} of uploads in progress`);
  }
  return lines;
}

export function pruneLines(r: PruneReport): string[] {
  const when = (ms: number): string => new Date(ms).toISOString();
  const lines: string[] = [];
  for (const k of r.kept) lines.push(`keep\t${k.id}\t${when(k.created)}\t${k.why}`);
  for (const d of r.deleted) lines.push(`${r.dryRun ? 'would delete' : 'delete'}\t${d.id}\t${when(d.created)}`);
  for (const s of r.skipped) lines.push(`skip\t${s.id}\t${when(s.created)}\t${s.code}: ${s.why}`);
  const deleted = `${r.deleted.length} ${r.dryRun ? 'would be deleted' : 'deleted'}`;
  lines.push(`${r.volume}: ${r.kept.length} kept, ${deleted}, ${r.skipped.length} skipped${r.deleted.length > 0 && !r.dryRun ? ' (data is freed by island gc after the grace period)' : ''}`);
  return lines;
}
