/**
 * Creating a volume's local state, and opening it again: recovery after a crash, and the
 * migration of a version 1 directory.
 *
 * Files of a volume directory (docs/formats/local-state.md):
 *   image.qcow2   the sparse image, byte for byte what QEMU sees
 *   state         the state record (state.ts): also the committed snapshot and the filled mark
 *   dirty.0/1     dirty bitmaps (tracking.ts), intent: write-intent bitmap
 *   present       present bitmap (only for a volume restored from a snapshot)
 *   sidelog       copies of sealed clusters (sidelog.ts)
 * Every bitmap file exists from the create on: a missing one is damage (recovery.ts).
 *
 * Create (a crash at any step leaves no `state`: hasVolumeState() is false, open() refuses
 * the directory with NOT_FOUND and create() starts over, removing what an earlier try left):
 * write the image (island writes the qcow2 header itself) and fdatasync it; create every
 * bitmap file; write the dirty pages of epoch 1 (every cluster of a new image, since the
 * first snapshot must hold the header; for a restored volume none when its committed
 * snapshot is its base, every base cluster otherwise) and sync them; write the state record
 * (its directory fsync also makes the other new names durable).
 *
 * Open (the same steps after a clean shutdown and after a crash):
 *  1. read the state record; the image file's size is its length. A version 1 record takes
 *     its committed snapshot from the side file `last-snapshot` (a snapshot id, or none: then
 *     every cluster counts as changed) and its filled mark from `filled`, once;
 *  2. dirty = every dirty page of both files stamped after the completed epoch (this includes
 *     a sealed epoch that was open: its snapshot restarts); an unreadable page counts as all
 *     dirty, a missing file as every cluster dirty (recovery.ts);
 *  3. after a crash (no clean mark): dirty |= every allocated cluster of every region whose
 *     intent bit is set (pages stamped at or after the recorded intent epoch; every region
 *     when the intent file is missing); holes are skipped when the file system can list data
 *     extents (a hole is never the only trace of a change: zero clusters and truncations
 *     persist their dirty bits before making holes). Without a committed snapshot: every
 *     cluster. Before any bitmap page is written, every file is settled (bitmap-file.ts:
 *     single copies get their second copy; the file is synced);
 *  4. the union becomes epoch N = (highest epoch seen) + 1, written to dirty.(N % 2) and
 *     synced: every page overwritten there is replaced by a superset of its bits;
 *  5. the state record (version 2) is rewritten with epoch N, completed epoch N - 1 (older
 *     pages are now redundant), a new intent epoch (older intent pages are ignored), the
 *     synced page counts and the clean mark cleared, before any write is accepted. Then the
 *     side files of a version 1 directory are removed; a version 2 directory never reads them.
 */
import { dirname, join } from 'node:path';
import { codeOf, IslandError } from '../errors.js';
import { isClusterSize, parseSnapshotId, parseVolumeName } from '../format/names.js';
import { createQcow2Image, validateQcow2CreateOptions } from '../format/qcow2.js';
import { PAGE_KIND_DIRTY, PAGE_KIND_INTENT, PAGE_KIND_PRESENT } from './bitmap-page.js';
import { PagedBitmap } from './bitmap.js';
import { BitmapFile } from './bitmap-file.js';
import { nodeFs, type LocalFile, type LocalFs } from './files.js';
import { PRESENT_FILE, PresentMap } from './present.js';
import { FILLED_FILE, IMAGE_FILE, LAST_SNAPSHOT_FILE, localStateDamaged, readTracking, readV1SideFiles, rescanRegion, type VolumeLogger } from './recovery.js';
import { SIDE_LOG_FILE, SideLog } from './sidelog.js';
import { MAX_IMAGE_LENGTH, MAX_REGION_SIZE, STATE_FILE, STATE_TMP_FILE, STATE_VERSION_1, readStateRecord, writeState, type SyncedPages, type VolumeState } from './state.js';
import { ChangeTracker, DIRTY_FILES, INTENT_FILE } from './tracking.js';

export { FILLED_FILE, IMAGE_FILE, LAST_SNAPSHOT_FILE, inspectVolume, localStateDamaged, type LocalInspection, type VolumeLogger } from './recovery.js';
export const DEFAULT_REGION_SIZE = 64 * 1024 * 1024;
/** Side log budget: 1 GiB of overwritten sealed clusters before a snapshot in progress gives up. */
export const DEFAULT_SIDE_LOG_BUDGET = 1024 * 1024 * 1024;
/** Dirty bits reach the disk at least this often (and the intent bitmap starts over). */
export const DEFAULT_FLUSH_INTERVAL_MS = 30_000;

/** Brings clusters of the base snapshot for a restored volume (lazy restore). */
export interface PresentFetcher {
  /**
   * The base snapshot's content of clusters [first, first + count): count * clusterSize bytes,
   * shorter only at the end of the base image. Verified before it is returned.
   */
  fetch(first: number, count: number, signal: AbortSignal): Promise<Buffer>;
}

export interface VolumeOptions {
  fs?: LocalFs;
  logger?: VolumeLogger;
  /** Required to read clusters of a restored volume that are not local yet. */
  fetcher?: PresentFetcher;
  /** Bytes of side log one seal may use before it is abandoned (default 1 GiB). */
  sideLogBudget?: number;
  /** Period of the background bitmap flush (default 30 s); 0 turns it off. */
  flushIntervalMs?: number;
  /** Record a new attachment generation at open. */
  generation?: number;
}

export interface VolumeCreateOptions extends VolumeOptions {
  name: string;
  virtualSize: number;
  clusterSize?: number;
  generation: number;
  /** Snapshot the volume is restored from; its clusters start not present. */
  baseSnapshot?: string | null;
  /** Image length of the base snapshot (required with baseSnapshot). */
  baseLength?: number;
  /**
   * The snapshot the new volume's content equals, which its change tracking starts from
   * (default: the base snapshot). Null: none, every cluster starts dirty.
   */
  committedSnapshot?: string | null;
  regionSize?: number;
}

export interface RecoveryInfo {
  /** The previous run closed the volume cleanly. */
  readonly clean: boolean;
  /** Regions rescanned because their write-intent bit was set. */
  readonly rescannedRegions: number;
  /** Dirty clusters after recovery. */
  readonly dirtyClusters: number;
  /** Bitmap pages read from their second copy (one copy was torn or damaged). */
  readonly repairedPages: number;
  /** Dirty or intent pages unreadable in both copies (counted as all set). */
  readonly unreadablePages: number;
  /** Tracking files found missing or damaged (their clusters counted as changed). */
  readonly damaged: readonly string[];
  /** The format version the directory was migrated from (null: it was current). */
  readonly migratedFrom: number | null;
}

/** Everything a Volume is built from. */
export interface VolumeParts {
  dir: string;
  fs: LocalFs;
  state: VolumeState;
  image: LocalFile;
  imageLength: number;
  tracker: ChangeTracker;
  present: PresentMap | null;
  sideLog: SideLog;
  options: VolumeOptions;
  recovery: RecoveryInfo;
}

function invalid(message: string): IslandError {
  return new IslandError('INVALID_ARGUMENT', message);
}

/**
 * Whether `dir` holds a volume's state record: true, open() it (a damaged one is refused
 * with its code); false, there is no volume here yet (nothing, or a create that did not
 * finish), and create() may start over.
 */
export async function hasVolumeState(dir: string, fs: LocalFs = nodeFs): Promise<boolean> {
  return fs.exists(join(dir, STATE_FILE));
}

/** What the state record says of the files: synced page counts of the open files. */
export function syncedPagesOf(tracker: ChangeTracker, present: PresentMap | null): SyncedPages {
  return { ...tracker.syncedPages(), present: present?.syncedPages ?? 0 };
}

function checkBudget(opts: VolumeOptions): number {
  const budget = opts.sideLogBudget ?? DEFAULT_SIDE_LOG_BUDGET;
  if (!Number.isSafeInteger(budget) || budget < 0) throw invalid(`side log budget must be a non-negative byte count: ${budget}`);
  return budget;
}

/**
 * Run `body` with a LocalFs that remembers the files it opens, and close them all if `body`
 * fails (a refused or crashed open must not leak file handles in a long-running daemon).
 */
async function closingOnError(fs: LocalFs, body: (fs: LocalFs) => Promise<VolumeParts>): Promise<VolumeParts> {
  const opened: LocalFile[] = [];
  const tracking: LocalFs = {
    open: async (path, mode) => {
      const f = await fs.open(path, mode);
      opened.push(f);
      return f;
    },
    exists: (path) => fs.exists(path),
    mkdir: (path) => fs.mkdir(path),
    rename: (from, to) => fs.rename(from, to),
    unlink: (path) => fs.unlink(path),
    syncDir: (path) => fs.syncDir(path),
  };
  try {
    return { ...(await body(tracking)), fs };
  } catch (err) {
    await Promise.allSettled(opened.map((f) => f.close()));
    throw err;
  }
}

/** Create a volume's local state in `dir` (which must not hold a volume yet: see hasVolumeState). */
export function createParts(dir: string, opts: VolumeCreateOptions): Promise<VolumeParts> {
  return closingOnError(opts.fs ?? nodeFs, (fs) => create(fs, dir, opts));
}

/** Open a volume's local state, recovering from a crash if there was one (steps at the top). */
export function openParts(dir: string, opts: VolumeOptions = {}): Promise<VolumeParts> {
  return closingOnError(opts.fs ?? nodeFs, (fs) => open(fs, dir, opts));
}

async function create(fs: LocalFs, dir: string, opts: VolumeCreateOptions): Promise<VolumeParts> {
  const name = parseVolumeName(opts.name);
  const clusterSize = opts.clusterSize ?? 65536;
  if (!isClusterSize(clusterSize)) throw invalid(`cluster size must be a power of two from 512 bytes to 2 MiB: ${clusterSize}`);
  const { virtualSize } = validateQcow2CreateOptions({ virtualSize: opts.virtualSize, clusterSize });
  const regionSize = opts.regionSize ?? Math.max(DEFAULT_REGION_SIZE, clusterSize);
  if (!Number.isInteger(regionSize) || regionSize < clusterSize || regionSize > MAX_REGION_SIZE || (regionSize & (regionSize - 1)) !== 0) {
    throw invalid(`region size must be a power of two from the cluster size to ${MAX_REGION_SIZE}: ${regionSize}`);
  }
  if (!Number.isSafeInteger(opts.generation) || opts.generation < 0) throw invalid(`generation must be a non-negative integer: ${opts.generation}`);
  const baseSnapshot = opts.baseSnapshot == null ? null : parseSnapshotId(opts.baseSnapshot, 'base snapshot id');
  const committedSnapshot = opts.committedSnapshot === undefined ? baseSnapshot : opts.committedSnapshot === null ? null : parseSnapshotId(opts.committedSnapshot, 'committed snapshot id');
  let baseLength = 0;
  if (baseSnapshot !== null) {
    baseLength = opts.baseLength ?? -1;
    if (!Number.isSafeInteger(baseLength) || baseLength <= 0 || baseLength > MAX_IMAGE_LENGTH) throw invalid(`a restored volume needs the base image length: ${opts.baseLength}`);
  } else if (opts.baseLength !== undefined && opts.baseLength !== 0) {
    throw invalid('baseLength is only meaningful with baseSnapshot');
  }
  checkBudget(opts);

  await fs.mkdir(dir);
  await fs.syncDir(dirname(dir));
  if (await hasVolumeState(dir, fs)) throw new IslandError('ALREADY_EXISTS', `${dir} already holds volume state`, { details: { dir } });
  // Leftovers of a create that crashed before its state record.
  for (const f of [IMAGE_FILE, ...DIRTY_FILES, INTENT_FILE, PRESENT_FILE, SIDE_LOG_FILE, STATE_TMP_FILE, LAST_SNAPSHOT_FILE, FILLED_FILE]) await fs.unlink(join(dir, f));

  const image = await fs.open(join(dir, IMAGE_FILE), 'create');
  const current = new PagedBitmap();
  let imageLength: number;
  if (baseSnapshot === null) {
    const bytes = createQcow2Image({ virtualSize, clusterSize });
    // Everything after the refcount blocks is zero: write up to there, extend sparsely.
    let used = bytes.length;
    while (used > 0 && bytes[used - 1] === 0) used--;
    await image.write(bytes, 0, used, 0);
    await image.truncate(bytes.length);
    imageLength = bytes.length;
    current.setRange(0, Math.ceil(imageLength / clusterSize));
  } else {
    await image.truncate(baseLength);
    imageLength = baseLength;
    // Content equal to no known snapshot: all of it is a change.
    if (committedSnapshot === null) current.setRange(0, Math.ceil(imageLength / clusterSize));
  }
  await image.datasync();

  const dirtyFiles: [BitmapFile, BitmapFile] = [
    await BitmapFile.open(fs, join(dir, DIRTY_FILES[0]), PAGE_KIND_DIRTY, 'create'),
    await BitmapFile.open(fs, join(dir, DIRTY_FILES[1]), PAGE_KIND_DIRTY, 'create'),
  ];
  const intentFile = await BitmapFile.open(fs, join(dir, INTENT_FILE), PAGE_KIND_INTENT, 'create');
  const tracker = new ChangeTracker({ regionSize, dirtyFiles, intentFile, epoch: 1, completedEpoch: 0, intentEpoch: 1, current });
  await tracker.persist();
  let present: PresentMap | null = null;
  if (baseSnapshot !== null) {
    present = new PresentMap(await BitmapFile.open(fs, join(dir, PRESENT_FILE), PAGE_KIND_PRESENT, 'create'), new PagedBitmap(), baseLength, clusterSize);
  }
  const sideLog = new SideLog(await fs.open(join(dir, SIDE_LOG_FILE), 'create'), clusterSize, checkBudget(opts));
  const state: VolumeState = {
    name,
    virtualSize,
    clusterSize,
    regionSize,
    imageLength,
    generation: opts.generation,
    epoch: 1,
    completedEpoch: 0,
    intentEpoch: 1,
    baseLength,
    baseSnapshot,
    committedSnapshot,
    filled: false,
    clean: false,
    sequence: 1,
    syncedPages: syncedPagesOf(tracker, present),
  };
  await writeState(fs, dir, state);
  return {
    dir,
    fs,
    state,
    image,
    imageLength,
    tracker,
    present,
    sideLog,
    options: opts,
    recovery: { clean: true, rescannedRegions: 0, dirtyClusters: current.count(), repairedPages: 0, unreadablePages: 0, damaged: [], migratedFrom: null },
  };
}

/** The state record; NOT_FOUND without one (no volume yet), LOCAL_STATE_DAMAGED for a corrupt one. */
async function readRecord(fs: LocalFs, dir: string): Promise<Awaited<ReturnType<typeof readStateRecord>>> {
  try {
    return await readStateRecord(fs, dir);
  } catch (err) {
    if (codeOf(err) === 'FORMAT_CORRUPT') throw localStateDamaged(dir, STATE_FILE, `the state record is corrupt (${(err as Error).message})`, err);
    if (codeOf(err) !== 'NOT_FOUND') throw err;
    throw new IslandError('NOT_FOUND', `${dir} holds no volume state (nothing, or a create that did not finish): create the volume again`, { cause: err, details: { dir } });
  }
}

/** The image of a volume that has a state record: a missing one is damage. */
async function openImage(fs: LocalFs, dir: string): Promise<LocalFile> {
  try {
    return await fs.open(join(dir, IMAGE_FILE), 'r+');
  } catch (err) {
    if (codeOf(err) === 'NOT_FOUND') throw localStateDamaged(dir, IMAGE_FILE, 'the image is missing', err);
    throw err;
  }
}

async function open(fs: LocalFs, dir: string, opts: VolumeOptions): Promise<VolumeParts> {
  const budget = checkBudget(opts);
  const log = opts.logger;
  if (opts.generation !== undefined && (!Number.isSafeInteger(opts.generation) || opts.generation < 0)) throw invalid(`generation must be a non-negative integer: ${opts.generation}`);
  await fs.unlink(join(dir, STATE_TMP_FILE));
  const stored = await readRecord(fs, dir);
  const old = stored.version === STATE_VERSION_1 ? { ...stored.state, ...(await readV1SideFiles(fs, dir, stored.state)) } : stored.state;
  const migratedFrom = stored.version === STATE_VERSION_1 ? STATE_VERSION_1 : null;
  if (migratedFrom !== null && old.committedSnapshot === null) {
    const why = (old as { unknownBecause?: string | null }).unknownBecause;
    log?.warn({ dir, why }, 'migrating local state from version 1: the last committed snapshot is unknown, every cluster counts as changed (the next snapshot uploads everything)');
  }
  const C = old.clusterSize;
  const image = await openImage(fs, dir);
  const imageLength = await image.size();
  if (imageLength > MAX_IMAGE_LENGTH) throw new IslandError('TOO_LARGE', `${dir}: image of ${imageLength} bytes exceeds ${MAX_IMAGE_LENGTH}`);

  const t = await readTracking(fs, dir, old, log, true);
  // A lost present bit could overwrite guest data with base content (files are closed by closingOnError).
  if (t.present?.damage) throw t.present.damage;
  const dirtyFiles = t.files.dirty as [BitmapFile, BitmapFile];
  const intentFile = t.files.intent as BitmapFile;
  // Step 3 (first part): settle every file before any page of it is written again.
  for (const f of [...dirtyFiles, intentFile, t.present?.file ?? null]) await f?.settle();
  // Present bits: a cluster the file no longer reaches was truncated away, so it is not base content.
  const baseLength = Math.min(old.baseLength, Math.ceil(imageLength / C) * C);
  const present = t.present && t.present.file ? new PresentMap(t.present.file, t.present.bits, baseLength, C) : null;
  const { dirty, regions } = t;
  // Step 3: after a crash, rescan the regions marked in the write-intent bitmap.
  let rescannedRegions = 0;
  const lastRegion = Math.ceil(imageLength / old.regionSize);
  if (t.allDirty || old.committedSnapshot === null) {
    dirty.setRange(0, Math.ceil(imageLength / C));
  } else if (!old.clean) {
    const marked = t.allRegions ? Array.from({ length: lastRegion }, (_, r) => r) : regions.bits();
    for (const r of marked) {
      if (r >= lastRegion) break;
      rescannedRegions++;
      await rescanRegion(image, r, old.regionSize, C, imageLength, dirty);
    }
  }

  // Steps 4 and 5.
  const epoch = t.maxEpoch + 1;
  const tracker = new ChangeTracker({ regionSize: old.regionSize, dirtyFiles, intentFile, epoch, completedEpoch: epoch - 1, intentEpoch: t.maxIntent + 1, current: dirty });
  await tracker.persist();
  const sideLogFile = await fs.open(join(dir, SIDE_LOG_FILE), 'create');
  await sideLogFile.truncate(0);
  const state: VolumeState = {
    name: old.name,
    virtualSize: old.virtualSize,
    clusterSize: C,
    regionSize: old.regionSize,
    imageLength,
    generation: opts.generation ?? old.generation,
    epoch,
    completedEpoch: epoch - 1,
    intentEpoch: t.maxIntent + 1,
    baseLength,
    baseSnapshot: old.baseSnapshot,
    committedSnapshot: old.committedSnapshot,
    filled: old.filled,
    clean: false,
    sequence: old.sequence + 1,
    syncedPages: syncedPagesOf(tracker, present),
  };
  await writeState(fs, dir, state);
  // Version 1 side files: read once above; the record holds what they said from now on.
  // (A version 2 directory never reads them, whoever writes them.)
  if (migratedFrom !== null) {
    for (const f of [LAST_SNAPSHOT_FILE, FILLED_FILE]) await fs.unlink(join(dir, f));
    await fs.syncDir(dir);
  }
  const recovery: RecoveryInfo = { clean: old.clean, rescannedRegions, dirtyClusters: dirty.count(), repairedPages: t.repairedPages, unreadablePages: t.unreadablePages, damaged: t.damaged, migratedFrom };
  if (!old.clean) log?.warn({ dir, ...recovery }, 'volume was not closed cleanly: change tracking recovered');
  else if (t.damaged.length > 0) log?.warn({ dir, ...recovery }, 'local change tracking was damaged: the clusters it covered count as changed');
  if (migratedFrom !== null) log?.info({ dir, committedSnapshot: state.committedSnapshot, filled: state.filled }, 'local state migrated from version 1 to 2');
  return { dir, fs, state, image, imageLength, tracker, present, sideLog: new SideLog(sideLogFile, C, budget), options: opts, recovery };
}
