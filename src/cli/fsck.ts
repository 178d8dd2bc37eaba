/**
 * `island fsck`: runs in the CLI process against the configured region's store (no daemon
 * needed; a running one is not disturbed). Local volume copies under the data directory
 * are the repair source for damaged blobs.
 *
 * Exit status, in the fsck tradition: 0 no errors (warnings may be printed), 1 errors were
 * found and all corrected, 4 errors left uncorrected, 8 operational error (the store is
 * not there or did not answer, the configuration is invalid, an unknown snapshot); and,
 * like every island command, 2 for invalid arguments.
 */
import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { volumesDir, type Config } from '../config.js';
import { IslandError, asIslandError } from '../errors.js';
import { formatSize, parseSnapshotId, parseVolumeName } from '../format/names.js';
import { runFsck, type FsckReport, type Qcow2Check } from '../fsck/check.js';
import type { Manifest } from '../format/records.js';
import { Repository } from '../repo/repository.js';
import { openEncryption } from '../crypto/open.js';
import { openStore, type BackendConfig } from '../store/open.js';
import { call } from './client.js';
import { Progress } from './progress.js';

export interface FsckArgs {
  deep?: string | undefined;
  seed?: string | undefined;
  volume?: string | undefined;
  snapshot?: string | undefined;
  repair?: boolean | undefined;
  pruneOrphans?: boolean | undefined;
  qcow2?: boolean | undefined;
  local?: boolean | undefined;
  json: boolean;
}

/** Bounded: qemu-img check reads every metadata cluster of the image, lazily fetched. */
const QCOW2_CHECK_TIMEOUT_MS = 30 * 60_000;

/**
 * `qemu-img check` of a snapshot's image through the daemon's read-only mount of it
 * (mounted for the check, unmounted after, whatever the outcome).
 */
async function qcow2Check(config: Config, m: Manifest): Promise<Qcow2Check> {
  const mounted = (await call(config.socket, 'POST', `/v1/snapshots/${encodeURIComponent(m.id)}/mount`)) as { file: string };
  try {
    const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve, reject) => {
      execFile('qemu-img', ['check', '-f', 'qcow2', '--output=json', mounted.file], { timeout: QCOW2_CHECK_TIMEOUT_MS, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') return reject(new IslandError('INTERNAL', `qemu-img check could not run: ${err.message}`, { cause: err }));
        resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      });
    });
    let out: { corruptions?: number; leaks?: number; 'check-errors'?: number } = {};
    try {
      out = JSON.parse(r.stdout) as typeof out;
    } catch {
      // No JSON: the image did not open as qcow2 at all.
    }
    // 0 clean, 2 corruptions, 3 leaks only; anything else: the check did not complete.
    let failure: string | null = null;
    if (r.code !== 0 && r.code !== 2 && r.code !== 3) failure = r.stderr.trim().split('\n').at(-1) || `qemu-img check exited ${r.code}`;
    else if ((out['check-errors'] ?? 0) > 0) failure = `qemu-img check met ${out['check-errors']} errors while checking`;
    return { corruptions: out.corruptions ?? 0, leaks: out.leaks ?? 0, failure };
  } finally {
    await call(config.socket, 'POST', `/v1/snapshots/${encodeURIComponent(m.id)}/unmount`, { force: true }).catch(() => undefined);
  }
}

export const EXIT_OPERATIONAL = 8;
/** Invalid arguments: the status every island command exits with for them. */
export const EXIT_USAGE = 2;

/**
 * The store to check, opened so that a store that is not there is an error, never an empty
 * store found clean: an embedded store directory must exist and be a directory (the fs
 * store lists a missing one as empty), and an S3 bucket is not created on first use (a
 * missing bucket fails the first listing with STORE_NOT_FOUND).
 */
export async function storeToCheck(backend: BackendConfig): Promise<BackendConfig> {
  if (backend.type === 's3') return { ...backend, createBucket: false };
  if (backend.type !== 'fs') return backend;
  const dir = backend.dir;
  let isDir: boolean;
  try {
    isDir = (await stat(dir)).isDirectory();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new IslandError('STORE_NOT_FOUND', `store directory ${dir} does not exist: nothing to check (is ISLAND_STORE_DIR or storeDir right?)`, { details: { dir } });
    if (code === 'EACCES' || code === 'EPERM') throw new IslandError('STORE_ACCESS_DENIED', `store directory ${dir}: ${code}`, { cause: err, details: { dir } });
    throw new IslandError('STORE_CONFIG', `store directory ${dir} cannot be read: ${(err as Error).message}`, { cause: err, details: { dir } });
  }
  if (!isDir) throw new IslandError('STORE_CONFIG', `store directory ${dir} is not a directory: nothing to check`, { details: { dir } });
  return backend;
}

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
  if (s.local) lines.push(`local: ${s.local.volumes} local copies, ${s.local.clustersCompared} clusters compared with their snapshot by hash (${s.local.clustersChangedSince} changed since, as tracked)`);
  if (s.qcow2Checked > 0) lines.push(`qcow2: ${s.qcow2Checked} snapshot images checked by qemu-img check`);
  if (s.orphanPacks || s.recentUnreferencedPacks) lines.push(`orphans: ${s.orphanPacks} packs, ${formatSize(s.orphanBytes)}; ${s.recentUnreferencedPacks} unreferenced packs younger than the grace period not counted`);
  const verdict = r.exitCode === 0 ? 'no errors' : r.exitCode === 1 ? 'errors found and all corrected' : `errors left uncorrected; snapshots that may not restore: ${s.damagedSnapshots.join(' ') || '(none named)'}`;
  lines.push(`${s.errors} errors, ${s.warnings} warnings, ${s.repaired} repaired: ${verdict}`);
  return lines.join('\n');
}

/** Run fsck; `load` reads the configuration (a bad one is "cannot check", not exit 1). */
export async function fsckCommand(load: () => Promise<Config>, a: FsckArgs): Promise<number> {
  let report: FsckReport;
  try {
    if (a.pruneOrphans && !a.repair) throw new IslandError('INVALID_ARGUMENT', '--prune-orphans needs --repair');
    const deepPercent = parseDeep(a.deep);
    const seed = parseSeed(a.seed);
    const volume = a.volume === undefined ? undefined : parseVolumeName(a.volume);
    const snapshot = a.snapshot === undefined ? undefined : parseSnapshotId(a.snapshot);
    const config = await load();
    const localRoots = [volumesDir(config), join(config.dataDir, 'kept')];
    const { store: raw } = openStore(await storeToCheck(config.store));
    // fsck never initializes a store: a key for an unencrypted one is refused, not applied.
    const enc = await openEncryption(raw, config, { initialize: false }).catch(async (err: unknown) => {
      await raw.close();
      throw err;
    });
    const store = enc.store;
    const repo = new Repository(store, { host: config.hostId, region: config.region, frames: enc.frames });
    const bar = a.json ? undefined : new Map<string, Progress>();
    let current: Progress | undefined;
    try {
      report = await runFsck(repo, {
        deepPercent,
        seed,
        volume,
        snapshot,
        graceMs: config.gcGraceMs,
        qcow2: a.qcow2 ? (m) => qcow2Check(config, m) : undefined,
        localRoots: a.local ? localRoots : undefined,
        repair: a.repair ? { localRoots, pruneOrphans: a.pruneOrphans === true } : undefined,
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
    return e.code === 'INVALID_ARGUMENT' ? EXIT_USAGE : EXIT_OPERATIONAL;
  }
  process.stdout.write(a.json ? JSON.stringify(report) + '\n' : renderReport(report) + '\n');
  return report.exitCode;
}
