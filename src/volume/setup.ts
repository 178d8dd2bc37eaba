/**
 * Creating a volume's local state, and opening it again: recovery after a crash.
 *
 * Files of a volume directory (docs/formats/local-state.md):
 *   image.qcow2   the sparse image, byte for byte what QEMU sees
 *   state         the state record (state.ts)
 *   dirty.0/1     dirty bitmaps (tracking.ts), intent: write-intent bitmap
 *   present       present bitmap (only for a volume restored from a snapshot)
 *   sidelog       copies of sealed clusters (sidelog.ts)
 *
 * Create (a crash at any step leaves no `state`, so open() refuses the directory and create()
 * may start over): write the image (island writes the qcow2 header itself) and fdatasync it;
 * write the dirty pages of epoch 1 (every cluster of the new image: the first snapshot must
 * hold the header) and sync them; write the state record (its directory fsync also makes the
 * other new names durable).
 *
 * Open (the same steps after a clean shutdown and after a crash):
 *  1. read the state record; the image file's size is its length;
 *  2. dirty = every dirty page of both files stamped after the completed epoch (this includes
 *     a sealed epoch that was open: its snapshot restarts); an unreadable page counts as all
 *     dirty;
 *  3. after a crash (no clean mark): dirty |= every allocated cluster of every region whose
 *     intent bit is set (pages stamped at or after the recorded intent epoch); holes are
 *     skipped when the file system can list data extents (a hole is never the only trace of a
 *     change: zero clusters and truncations persist their dirty bits before making holes);
 *  4. the union becomes epoch N = (highest epoch seen) + 1, written to dirty.(N % 2) and
 *     synced: every page overwritten there is replaced by a superset of its bits;
 *  5. the state record is rewritten with epoch N, completed epoch N - 1 (older pages are now
 *     redundant), a new intent epoch (older intent pages are ignored) and the clean mark
 *     cleared, before any write is accepted.
 */
import { dirname, join } from 'node:path';
import { IslandError } from '../errors.js';
import { isClusterSize, parseSnapshotId, parseVolumeName } from '../format/names.js';
import { createQcow2Image, validateQcow2CreateOptions } from '../format/qcow2.js';
import { BITS_PER_PAGE, PAGE_KIND_DIRTY, PAGE_KIND_INTENT, PAGE_KIND_PRESENT } from './bitmap-page.js';
import { PagedBitmap } from './bitmap.js';
import { BitmapFile } from './bitmap-file.js';
import { nodeFs, type LocalFile, type LocalFs } from './files.js';
import { PRESENT_FILE, PresentMap } from './present.js';
import { SIDE_LOG_FILE, SideLog } from './sidelog.js';
import { MAX_IMAGE_LENGTH, MAX_REGION_SIZE, STATE_FILE, STATE_TMP_FILE, readState, writeState, type VolumeState } from './state.js';
import { ChangeTracker, DIRTY_FILES, INTENT_FILE } from './tracking.js';

export const IMAGE_FILE = 'image.qcow2';
/** Written by the daemon beside the engine's files: the last snapshot this copy committed. */
export const LAST_SNAPSHOT_FILE = 'last-snapshot';
export const DEFAULT_REGION_SIZE = 64 * 1024 * 1024;
/** Side log budget: 1 GiB of overwritten sealed clusters before a snapshot in progress gives up. */
export const DEFAULT_SIDE_LOG_BUDGET = 1024 * 1024 * 1024;
/** Dirty bits reach the disk at least this often (and the intent bitmap starts over). */
export const DEFAULT_FLUSH_INTERVAL_MS = 30_000;

/** A minimal logger (pino's shape): the composition root passes a child logger. */
export interface VolumeLogger {
  warn(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  debug(obj: Record<string, unknown>, msg: string): void;
}

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

function maxPages(clusterSize: number): number {
  return Math.ceil(MAX_IMAGE_LENGTH / clusterSize / BITS_PER_PAGE);
}

async function openBitmaps(fs: LocalFs, dir: string): Promise<{ dirty: [BitmapFile, BitmapFile]; intent: BitmapFile }> {
  const dirty: [BitmapFile, BitmapFile] = [
    await BitmapFile.open(fs, join(dir, DIRTY_FILES[0]), PAGE_KIND_DIRTY),
    await BitmapFile.open(fs, join(dir, DIRTY_FILES[1]), PAGE_KIND_DIRTY),
  ];
  const intent = await BitmapFile.open(fs, join(dir, INTENT_FILE), PAGE_KIND_INTENT);
  return { dirty, intent };
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

/** Create a volume's local state in `dir` (which must not hold a volume yet). */
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
  if (await fs.exists(join(dir, STATE_FILE))) throw new IslandError('ALREADY_EXISTS', `${dir} already holds volume state`, { details: { dir } });
  // Leftovers of a create that crashed before its state record.
  for (const f of [IMAGE_FILE, ...DIRTY_FILES, INTENT_FILE, PRESENT_FILE, SIDE_LOG_FILE, STATE_TMP_FILE]) await fs.unlink(join(dir, f));

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
  }
  await image.datasync();

  const files = await openBitmaps(fs, dir);
  const tracker = new ChangeTracker({ regionSize, dirtyFiles: files.dirty, intentFile: files.intent, epoch: 1, completedEpoch: 0, intentEpoch: 1, current });
  await tracker.persist();
  let present: PresentMap | null = null;
  if (baseSnapshot !== null) {
    present = new PresentMap(await BitmapFile.open(fs, join(dir, PRESENT_FILE), PAGE_KIND_PRESENT), new PagedBitmap(), baseLength, clusterSize);
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
    clean: false,
    sequence: 1,
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
    recovery: { clean: true, rescannedRegions: 0, dirtyClusters: current.count(), repairedPages: 0, unreadablePages: 0 },
  };
}

async function open(fs: LocalFs, dir: string, opts: VolumeOptions): Promise<VolumeParts> {
  const budget = checkBudget(opts);
  const log = opts.logger;
  await fs.unlink(join(dir, STATE_TMP_FILE));
  const old = await readState(fs, dir);
  if (opts.generation !== undefined && (!Number.isSafeInteger(opts.generation) || opts.generation < 0)) throw invalid(`generation must be a non-negative integer: ${opts.generation}`);
  const C = old.clusterSize;
  const image = await fs.open(join(dir, IMAGE_FILE), 'r+');
  const imageLength = await image.size();
  if (imageLength > MAX_IMAGE_LENGTH) throw new IslandError('TOO_LARGE', `${dir}: image of ${imageLength} bytes exceeds ${MAX_IMAGE_LENGTH}`);

  // Present bits: a cluster the file no longer reaches was truncated away, so it is not base content.
  let present: PresentMap | null = null;
  const baseLength = Math.min(old.baseLength, Math.ceil(imageLength / C) * C);
  const t = await readTracking(fs, dir, old, log);
  const { files, dirty, regions, maxEpoch, maxIntent } = t;
  if (t.present) {
    if (t.present.unreadable) throw t.present.unreadable; // a lost present bit could overwrite guest data with base content
    present = new PresentMap(t.present.file, t.present.bits, baseLength, C);
  }
  const { repairedPages, unreadablePages } = t;
  // Step 3 (continued): after a crash, rescan the regions marked in the write-intent bitmap.
  let rescannedRegions = 0;
  if (!old.clean) {
    const lastRegion = Math.ceil(imageLength / old.regionSize);
    for (const r of regions.bits()) {
      if (r >= lastRegion) break;
      rescannedRegions++;
      await rescanRegion(image, r, old.regionSize, C, imageLength, dirty);
    }
  }

  // Steps 4 and 5.
  const epoch = maxEpoch + 1;
  const tracker = new ChangeTracker({ regionSize: old.regionSize, dirtyFiles: files.dirty, intentFile: files.intent, epoch, completedEpoch: epoch - 1, intentEpoch: maxIntent + 1, current: dirty });
  await tracker.persist();
  const sideLogFile = await fs.open(join(dir, SIDE_LOG_FILE), 'create');
  await sideLogFile.truncate(0);
  const state: VolumeState = {
    ...old,
    imageLength,
    baseLength,
    generation: opts.generation ?? old.generation,
    epoch,
    completedEpoch: epoch - 1,
    intentEpoch: maxIntent + 1,
    clean: false,
    sequence: old.sequence + 1,
  };
  await writeState(fs, dir, state);
  const recovery: RecoveryInfo = { clean: old.clean, rescannedRegions, dirtyClusters: dirty.count(), repairedPages, unreadablePages };
  if (!old.clean) log?.warn({ dir, ...recovery }, 'volume was not closed cleanly: change tracking recovered');
  return { dir, fs, state, image, imageLength, tracker, present, sideLog: new SideLog(sideLogFile, C, budget), options: opts, recovery };
}

/** The tracking state of a volume directory as its files hold it (recovery steps 2 and 3). */
interface Tracking {
  files: { dirty: [BitmapFile, BitmapFile]; intent: BitmapFile };
  /** Only for a volume restored from a snapshot. */
  present: { file: BitmapFile; bits: PagedBitmap; unreadable: IslandError | null } | null;
  /** Dirty bits of every epoch not yet in a completed snapshot (unreadable pages: all set). */
  dirty: PagedBitmap;
  /** Regions whose intent bit is set in the recorded intent epoch or later. */
  regions: PagedBitmap;
  maxEpoch: number;
  maxIntent: number;
  repairedPages: number;
  unreadablePages: number;
}

async function readTracking(fs: LocalFs, dir: string, old: VolumeState, log: VolumeLogger | undefined): Promise<Tracking> {
  const C = old.clusterSize;
  let repairedPages = 0;
  let unreadablePages = 0;
  let present: Tracking['present'] = null;
  if (old.baseLength > 0) {
    const file = await BitmapFile.open(fs, join(dir, PRESENT_FILE), PAGE_KIND_PRESENT);
    const loaded = await file.load(maxPages(C));
    repairedPages += loaded.repaired.length;
    const bits = new PagedBitmap();
    for (const p of loaded.pages) if (p.content !== null) bits.loadPage(p.index, p.content.payload);
    present = { file, bits, unreadable: loaded.unreadable[0]?.error ?? null };
  }

  // Step 2: dirty pages of every epoch not yet in a completed snapshot.
  const files = await openBitmaps(fs, dir);
  const dirty = new PagedBitmap();
  let maxEpoch = old.epoch;
  for (const file of files.dirty) {
    const loaded = await file.load(maxPages(C));
    repairedPages += loaded.repaired.length;
    for (const p of loaded.pages) {
      if (p.content === null) continue;
      maxEpoch = Math.max(maxEpoch, p.content.stamp);
      if (p.content.stamp > old.completedEpoch) dirty.orPage(p.index, p.content.payload);
    }
    for (const u of loaded.unreadable) {
      unreadablePages++;
      dirty.fillPage(u.index);
      log?.warn({ file: file.path, page: u.index, err: u.error.message }, 'dirty bitmap page unreadable: its clusters count as dirty');
    }
  }

  // Step 3: the regions marked in the write-intent bitmap.
  const loadedIntent = await files.intent.load(maxPages(old.regionSize));
  repairedPages += loadedIntent.repaired.length;
  let maxIntent = old.intentEpoch;
  const regions = new PagedBitmap();
  for (const p of loadedIntent.pages) {
    if (p.content === null) continue;
    maxIntent = Math.max(maxIntent, p.content.stamp);
    if (p.content.stamp >= old.intentEpoch) regions.orPage(p.index, p.content.payload);
  }
  for (const u of loadedIntent.unreadable) {
    unreadablePages++;
    regions.fillPage(u.index);
    log?.warn({ file: files.intent.path, page: u.index, err: u.error.message }, 'intent bitmap page unreadable: its regions are rescanned');
  }
  return { files, present, dirty, regions, maxEpoch, maxIntent, repairedPages, unreadablePages };
}

/** What a volume directory's files say, read without changing anything (for fsck --local). */
export interface LocalInspection {
  state: VolumeState;
  imageLength: number;
  /** Whether a cluster may differ from the last snapshot: dirty, or in a region marked in the intent bitmap. */
  mayHaveChanged(cluster: number): boolean;
  /** Whether a cluster's local content is authoritative (always, without a restore base). */
  isPresent(cluster: number): boolean;
  repairedPages: number;
  unreadablePages: number;
  /** A present bitmap page that is unreadable in both copies. */
  presentUnreadable: IslandError | null;
}

/**
 * Read a volume directory's state record and bitmaps (checksums, both copies of each
 * page) the way recovery would, without writing anything. Safe next to a daemon serving
 * the volume: every change since the last completed seal is in a dirty page or under a
 * durable intent bit before it reaches the image (protocol A), so read the image after this.
 */
export async function inspectVolume(dir: string, fs: LocalFs = nodeFs): Promise<LocalInspection> {
  const state = await readState(fs, dir);
  const image = await fs.open(join(dir, IMAGE_FILE), 'r+');
  const imageLength = await image.size().finally(() => image.close());
  const t = await readTracking(fs, dir, state, undefined);
  await Promise.all([...t.files.dirty, t.files.intent, ...(t.present ? [t.present.file] : [])].map((f) => f.close()));
  const C = state.clusterSize;
  const perRegion = state.regionSize / C;
  return {
    state,
    imageLength,
    mayHaveChanged: (c) => t.dirty.get(c) || t.regions.get(Math.floor(c / perRegion)),
    isPresent: (c) => !t.present || c * C >= state.baseLength || t.present.bits.get(c),
    repairedPages: t.repairedPages,
    unreadablePages: t.unreadablePages,
    presentUnreadable: t.present?.unreadable ?? null,
  };
}

/** Mark every allocated cluster of region r dirty (every cluster, when holes cannot be listed). */
async function rescanRegion(image: LocalFile, r: number, regionSize: number, C: number, imageLength: number, dirty: PagedBitmap): Promise<void> {
  const start = r * regionSize;
  const end = Math.min(start + regionSize, imageLength);
  const extents = await image.dataExtents(start, end);
  if (extents === null) {
    dirty.setRange(Math.floor(start / C), Math.ceil(end / C));
    return;
  }
  for (const [off, len] of extents) dirty.setRange(Math.floor(off / C), Math.ceil((off + len) / C));
}
