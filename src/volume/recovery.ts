/**
 * Reading what a volume directory's files say about its change tracking and its present
 * clusters (recovery steps 2 and 3 of setup.ts), for open() and, without writing anything,
 * for fsck --local (inspectVolume).
 *
 * When island cannot prove what changed, it counts the cluster as changed (and says so);
 * when it cannot prove a cluster is local, it refuses to serve the volume:
 *  - a dirty file missing, or a dirty page unreadable (both copies bad, or lost to a
 *    truncation, bitmap-file.ts): every cluster it covers is dirty; a whole file missing:
 *    every cluster of the image;
 *  - the intent file missing or an intent page unreadable after an unclean stop: every region
 *    it covers is rescanned (after a clean stop the intent bitmap is not needed);
 *  - the present file missing or a present page unreadable: LOCAL_STATE_DAMAGED (a lost
 *    present bit would let a fetch overwrite guest data with base content); so is a corrupt
 *    state record or a missing image (setup.ts).
 * A missing file is never an empty bitmap: every file exists from the create on.
 */
import { join } from 'node:path';
import { codeOf, IslandError } from '../errors.js';
import { isSnapshotId } from '../format/names.js';
import { BITS_PER_PAGE, PAGE_KIND_DIRTY, PAGE_KIND_INTENT, PAGE_KIND_PRESENT, type PageKind } from './bitmap-page.js';
import { PagedBitmap } from './bitmap.js';
import { BitmapFile } from './bitmap-file.js';
import { nodeFs, type LocalFile, type LocalFs } from './files.js';
import { PRESENT_FILE } from './present.js';
import { MAX_IMAGE_LENGTH, readStateRecord, STATE_VERSION_1, type VolumeState } from './state.js';
import { DIRTY_FILES, INTENT_FILE } from './tracking.js';

export const IMAGE_FILE = 'image.qcow2';

/** A minimal logger (pino's shape): the composition root passes a child logger. */
export interface VolumeLogger {
  warn(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  debug(obj: Record<string, unknown>, msg: string): void;
}

export function maxPages(clusterSize: number): number {
  return Math.ceil(MAX_IMAGE_LENGTH / clusterSize / BITS_PER_PAGE);
}

/** The error a volume whose local state cannot prove which clusters are local is refused with. */
export function localStateDamaged(dir: string, file: string, why: string, cause?: unknown): IslandError {
  return new IslandError(
    'LOCAL_STATE_DAMAGED',
    `${join(dir, file)}: ${why}; island cannot tell which clusters of the volume are local and will not serve it: run \`island fsck --local\` or restore the volume again`,
    { cause, details: { dir, file } },
  );
}

/** The tracking state of a volume directory as its files hold it (recovery steps 2 and 3). */
export interface Tracking {
  /** The files, opened (open: a missing one is created anew; inspect: null). */
  files: { dirty: [BitmapFile | null, BitmapFile | null]; intent: BitmapFile | null };
  /** Only for a volume restored from a snapshot. */
  present: { file: BitmapFile | null; bits: PagedBitmap; damage: IslandError | null } | null;
  /** Dirty bits of every epoch not yet in a completed snapshot (unreadable pages: all set). */
  dirty: PagedBitmap;
  /** Every cluster counts as dirty: a dirty file is missing. */
  allDirty: boolean;
  /** Regions whose intent bit is set in the recorded intent epoch or later. */
  regions: PagedBitmap;
  /** Every region counts as marked: the intent file is missing. */
  allRegions: boolean;
  maxEpoch: number;
  maxIntent: number;
  repairedPages: number;
  unreadablePages: number;
  /** Files missing or with unreadable pages (over-approximated, or refused for present). */
  damaged: string[];
}

/**
 * Open a bitmap file that must exist. When it is missing: with `create`, a new empty one
 * (the caller over-approximates what it held), else null.
 */
async function openBitmap(fs: LocalFs, dir: string, name: string, kind: PageKind, create: boolean): Promise<{ file: BitmapFile | null; missing: boolean }> {
  try {
    return { file: await BitmapFile.open(fs, join(dir, name), kind, 'r+'), missing: false };
  } catch (err) {
    if (codeOf(err) !== 'NOT_FOUND') throw err;
    return { file: create ? await BitmapFile.open(fs, join(dir, name), kind, 'create') : null, missing: true };
  }
}

/** Read the tracking files of `dir` as recorded by `old`. `create`: recreate missing files (open). */
export async function readTracking(fs: LocalFs, dir: string, old: VolumeState, log: VolumeLogger | undefined, create: boolean): Promise<Tracking> {
  const C = old.clusterSize;
  const t: Tracking = {
    files: { dirty: [null, null], intent: null },
    present: null,
    dirty: new PagedBitmap(),
    allDirty: false,
    regions: new PagedBitmap(),
    allRegions: false,
    maxEpoch: old.epoch,
    maxIntent: old.intentEpoch,
    repairedPages: 0,
    unreadablePages: 0,
    damaged: [],
  };
  const synced = old.syncedPages;
  if (old.baseLength > 0) {
    const { file, missing } = await openBitmap(fs, dir, PRESENT_FILE, PAGE_KIND_PRESENT, false);
    const bits = new PagedBitmap();
    let damage: IslandError | null = null;
    if (missing || file === null) {
      damage = localStateDamaged(dir, PRESENT_FILE, 'the present bitmap is missing');
    } else {
      const loaded = await file.load(maxPages(C), synced.present);
      t.repairedPages += loaded.repaired.length;
      for (const p of loaded.pages) if (p.content !== null) bits.loadPage(p.index, p.content.payload);
      const bad = loaded.unreadable[0];
      if (bad !== undefined) damage = localStateDamaged(dir, PRESENT_FILE, `present bitmap page ${bad.index} is unreadable (${bad.error.message})`, bad.error);
    }
    if (damage !== null) t.damaged.push(PRESENT_FILE);
    t.present = { file, bits, damage };
  }

  // Step 2: dirty pages of every epoch not yet in a completed snapshot.
  for (const i of [0, 1] as const) {
    const name = DIRTY_FILES[i];
    const { file, missing } = await openBitmap(fs, dir, name, PAGE_KIND_DIRTY, create);
    t.files.dirty[i] = file;
    if (missing) {
      t.allDirty = true;
      t.damaged.push(name);
      log?.warn({ dir, file: name }, 'dirty bitmap file missing: every cluster counts as dirty (the next snapshot uploads everything)');
      continue;
    }
    if (file === null) continue;
    const loaded = await file.load(maxPages(C), i === 0 ? synced.dirty0 : synced.dirty1);
    t.repairedPages += loaded.repaired.length;
    for (const p of loaded.pages) {
      if (p.content === null) continue;
      t.maxEpoch = Math.max(t.maxEpoch, p.content.stamp);
      if (p.content.stamp > old.completedEpoch) t.dirty.orPage(p.index, p.content.payload);
    }
    for (const u of loaded.unreadable) {
      t.unreadablePages++;
      t.dirty.fillPage(u.index);
      log?.warn({ file: file.path, page: u.index, err: u.error.message }, 'dirty bitmap page unreadable: its clusters count as dirty');
    }
    if (loaded.unreadable.length > 0) t.damaged.push(name);
  }

  // Step 3: the regions marked in the write-intent bitmap.
  const intent = await openBitmap(fs, dir, INTENT_FILE, PAGE_KIND_INTENT, create);
  t.files.intent = intent.file;
  if (intent.missing) {
    t.damaged.push(INTENT_FILE);
    if (!old.clean) {
      t.allRegions = true;
      log?.warn({ dir, file: INTENT_FILE }, 'write-intent bitmap file missing after an unclean stop: every region is rescanned');
    }
  } else if (intent.file !== null) {
    const loaded = await intent.file.load(maxPages(old.regionSize), synced.intent);
    t.repairedPages += loaded.repaired.length;
    for (const p of loaded.pages) {
      if (p.content === null) continue;
      t.maxIntent = Math.max(t.maxIntent, p.content.stamp);
      if (p.content.stamp >= old.intentEpoch) t.regions.orPage(p.index, p.content.payload);
    }
    for (const u of loaded.unreadable) {
      t.unreadablePages++;
      t.regions.fillPage(u.index);
      log?.warn({ file: intent.file.path, page: u.index, err: u.error.message }, 'intent bitmap page unreadable: its regions are rescanned');
    }
    if (loaded.unreadable.length > 0) t.damaged.push(INTENT_FILE);
  }
  return t;
}

/** Close every file a Tracking holds. */
export async function closeTracking(t: Tracking): Promise<void> {
  const files = [...t.files.dirty, t.files.intent, t.present?.file ?? null].filter((f): f is BitmapFile => f !== null);
  await Promise.allSettled(files.map((f) => f.close()));
}

/** What a volume directory's files say, read without changing anything (for fsck --local). */
export interface LocalInspection {
  state: VolumeState;
  imageLength: number;
  /** The snapshot the change tracking is relative to (null: every cluster counts as changed). */
  committedSnapshot: string | null;
  /** Whether a cluster may differ from the committed snapshot: dirty, or in a region marked in the intent bitmap. */
  mayHaveChanged(cluster: number): boolean;
  /** Whether a cluster's local content is authoritative (always, without a restore base). */
  isPresent(cluster: number): boolean;
  repairedPages: number;
  unreadablePages: number;
  /** Files missing or with unreadable pages. */
  damaged: readonly string[];
  /** Why the present bitmap cannot be trusted (LOCAL_STATE_DAMAGED): the volume will not open. */
  presentUnreadable: IslandError | null;
}

/**
 * Read a volume directory's state record and bitmaps (checksums, both copies of each
 * page) the way recovery would, without writing anything. Safe next to a daemon serving
 * the volume: every change since the last completed seal is in a dirty page or under a
 * durable intent bit before it reaches the image (protocol A), so read the image after this.
 * A version 1 directory reads as it will after its migration: the committed snapshot is the
 * side file `last-snapshot` when that holds a snapshot id, else none.
 */
export async function inspectVolume(dir: string, fs: LocalFs = nodeFs): Promise<LocalInspection> {
  const stored = await readStateRecord(fs, dir);
  const state = stored.version === STATE_VERSION_1 ? { ...stored.state, ...(await readV1SideFiles(fs, dir, stored.state)) } : stored.state;
  const image = await fs.open(join(dir, IMAGE_FILE), 'r+');
  const imageLength = await image.size().finally(() => image.close());
  const t = await readTracking(fs, dir, state, undefined, false);
  await closeTracking(t);
  const C = state.clusterSize;
  const perRegion = state.regionSize / C;
  const unknown = state.committedSnapshot === null || t.allDirty || (t.allRegions && !state.clean);
  return {
    state,
    imageLength,
    committedSnapshot: state.committedSnapshot,
    mayHaveChanged: (c) => unknown || t.dirty.get(c) || t.regions.get(Math.floor(c / perRegion)),
    isPresent: (c) => !t.present || c * C >= state.baseLength || t.present.bits.get(c),
    repairedPages: t.repairedPages,
    unreadablePages: t.unreadablePages,
    damaged: t.damaged,
    presentUnreadable: t.present?.damage ?? null,
  };
}

/** Side files of version 1, beside the state record: read once, at the migration to version 2. */
export const LAST_SNAPSHOT_FILE = 'last-snapshot';
export const FILLED_FILE = 'filled';
/** Longest side file worth reading: a snapshot id and a newline; anything longer is garbage. */
const SIDE_FILE_MAX = 64;

/** The text of a small side file; null when it is missing. */
async function readSideFile(fs: LocalFs, dir: string, name: string): Promise<string | null> {
  let f: LocalFile;
  try {
    f = await fs.open(join(dir, name), 'r+');
  } catch (err) {
    if (codeOf(err) === 'NOT_FOUND') return null;
    throw err;
  }
  try {
    const size = await f.size();
    const buf = Buffer.alloc(Math.min(size, SIDE_FILE_MAX + 1));
    const n = await f.read(buf, 0, buf.length, 0);
    return buf.toString('latin1', 0, n);
  } finally {
    await f.close();
  }
}

export interface V1SideFiles {
  /** `last-snapshot` when it holds a snapshot id (and nothing else), else null. */
  committedSnapshot: string | null;
  /** `filled` names the base snapshot. */
  filled: boolean;
  /** Why the committed snapshot is unknown (null when it is known). */
  unknownBecause: string | null;
}

/** What the side files of a version 1 directory say, each checked; never trusted after migration. */
export async function readV1SideFiles(fs: LocalFs, dir: string, s: VolumeState): Promise<V1SideFiles> {
  const last = await readSideFile(fs, dir, LAST_SNAPSHOT_FILE);
  const filled = await readSideFile(fs, dir, FILLED_FILE);
  const id = last?.trim() ?? '';
  const valid = last !== null && last.length <= SIDE_FILE_MAX && isSnapshotId(id);
  return {
    committedSnapshot: valid ? id : null,
    filled: s.baseSnapshot !== null && filled !== null && filled.trim() === s.baseSnapshot,
    unknownBecause: valid ? null : last === null ? `${LAST_SNAPSHOT_FILE} is missing` : `${LAST_SNAPSHOT_FILE} does not hold a snapshot id`,
  };
}

/** Mark every allocated cluster of region r dirty (every cluster, when holes cannot be listed). */
export async function rescanRegion(image: LocalFile, r: number, regionSize: number, C: number, imageLength: number, dirty: PagedBitmap): Promise<void> {
  const start = r * regionSize;
  const end = Math.min(start + regionSize, imageLength);
  const extents = await image.dataExtents(start, end);
  if (extents === null) {
    dirty.setRange(Math.floor(start / C), Math.ceil(end / C));
    return;
  }
  for (const [off, len] of extents) dirty.setRange(Math.floor(off / C), Math.ceil((off + len) / C));
}
