/**
 * `island fsck`: runs in the CLI process against the configured region's store (no daemon
 * needed; a running one is not disturbed). Local volume copies under the data directory
 * are the repair source for damaged blobs.
 *
 * Exit status, in the fsck tradition: 0 no errors (warnings may be printed), 1 errors were
 * found and all corrected, 4 errors left uncorrected, 8 operational error (the store did
 * not answer, bad options).
 */
import { join } from 'node:path';
import { volumesDir, type Config } from '../config.js';
import { IslandError, asIslandError } from '../errors.js';
import { formatSize, parseSnapshotId, parseVolumeName } from '../format/names.js';
import { runFsck, type FsckReport } from '../fsck/check.js';
import { Repository } from '../repo/repository.js';
import { openStore } from '../store/open.js';
import { Progress } from './progress.js';

export interface FsckArgs {
  deep?: string | undefined;
  seed?: string | undefined;
  volume?: string | undefined;
  snapshot?: string | undefined;
  repair?: boolean | undefined;
  pruneOrphans?: boolean | undefined;
  json: boolean;
}

export const EXIT_OPERATIONAL = 8;

/** `--deep` alone means every pack; `--deep=N` a sample of N percent. */
export function parseDeep(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (v === '' || v === 'all') return 100;
  const n = Number(v.replace(/%$/, ''));
  if (!Number.isFinite(n) || n <= 0 || n > 100) throw new IslandError('INVALID_ARGUMENT', `--deep takes a percentage in (0, 100], got ${JSON.stringify(v)}`);
  return n;
}

function parseSeed(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0 || n > 0xffff_ffff) throw new IslandError('INVALID_ARGUMENT', `--seed must be an integer 0..4294967295, got ${JSON.stringify(v)}`);
  return n;
}

export function renderReport(r: FsckReport): string {
  const s = r.summary;
  const lines: string[] = [];
  for (const f of r.findings) {
    const state = f.repaired === true ? 'REPAIRED' : f.repaired === false ? 'NOT REPAIRED' : f.severity.toUpperCase();
    lines.push(`${state}  ${f.type}  ${f.key}`);
    lines.push(`    ${f.message}`);
    if (f.snapshots.length) lines.push(`    affects: ${f.snapshots.join(' ')}`);
    lines.push(`    repair: ${f.repair}`);
  }
  lines.push(
    `checked ${s.snapshotsChecked} snapshots (${s.snapshotsReleased} deleted ones left to gc), ${s.records} records, ${s.nodes} tree nodes, ${s.blobReferences} blob references into ${s.packsReached} of ${s.packsListed} packs (${s.trailerReads} trailers read)`,
  );
  if (s.packsVerified > 0 || s.seed !== null) lines.push(`deep: ${s.packsVerified} packs, ${s.blobsVerified} blobs, ${formatSize(s.bytesVerified)} read and verified${s.seed !== null ? ` (sample seed ${s.seed}: repeat with --seed ${s.seed})` : ''}`);
  if (s.orphanPacks || s.recentUnreferencedPacks) lines.push(`orphans: ${s.orphanPacks} packs, ${formatSize(s.orphanBytes)}; ${s.recentUnreferencedPacks} unreferenced packs younger than the grace period not counted`);
  const verdict = r.exitCode === 0 ? 'no errors' : r.exitCode === 1 ? 'errors found and all corrected' : `errors left uncorrected; snapshots that may not restore: ${s.damagedSnapshots.join(' ') || '(none named)'}`;
  lines.push(`${s.errors} errors, ${s.warnings} warnings, ${s.repaired} repaired: ${verdict}`);
  return lines.join('\n');
}

export async function fsckCommand(config: Config, a: FsckArgs): Promise<number> {
  let report: FsckReport;
  try {
    if (a.pruneOrphans && !a.repair) throw new IslandError('INVALID_ARGUMENT', '--prune-orphans needs --repair');
    const deepPercent = parseDeep(a.deep);
    const seed = parseSeed(a.seed);
    const volume = a.volume === undefined ? undefined : parseVolumeName(a.volume);
    const snapshot = a.snapshot === undefined ? undefined : parseSnapshotId(a.snapshot);
    const { store } = openStore(config.store);
    const repo = new Repository(store, { host: config.hostId, region: config.region });
    const bar = a.json ? undefined : new Map<string, Progress>();
    let current: Progress | undefined;
    try {
      report = await runFsck(repo, {
        deepPercent,
        seed,
        volume,
        snapshot,
        graceMs: config.gcGraceMs,
        repair: a.repair ? { localRoots: [volumesDir(config), join(config.dataDir, 'kept')], pruneOrphans: a.pruneOrphans === true } : undefined,
        onProgress: (phase, done, total) => {
          if (!bar || total === 0) return;
          let p = bar.get(phase);
          if (!p) bar.set(phase, (p = new Progress(`fsck ${phase}`)));
          if (current !== p) current?.finish();
          current = p;
          p.update({ done, total, note: phase === 'deep' ? 'packs' : 'snapshots' });
        },
      });
    } finally {
      current?.finish();
      await store.close();
    }
  } catch (err) {
    const e = asIslandError(err);
    if (a.json) process.stdout.write(JSON.stringify({ error: e.toJSON() }) + '\n');
    else process.stderr.write(`island: ${e.code}: ${e.message.replace(/\s*\n\s*/g, ' ')}\n`);
    return EXIT_OPERATIONAL;
  }
  process.stdout.write(a.json ? JSON.stringify(report) + '\n' : renderReport(report) + '\n');
  return report.exitCode;
}
