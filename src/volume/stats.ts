/** The counters a volume engine keeps, and the stats() view of them. */
import type { PresentMap } from './present.js';
import type { SealKeeper } from './seal.js';
import type { ChangeTracker } from './tracking.js';

export interface VolumeStats {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Whole zero clusters written as holes. */
  zeroClusters: number;
  /** fsync() calls (QEMU's flushes). */
  fsyncs: number;
  /** fdatasync calls by file; `total` is their sum. State record writes are counted apart. */
  fdatasyncs: { image: number; intent: number; dirty: number; present: number; total: number };
  /** State record replacements (each: fsync of the file and of the directory). */
  stateWrites: number;
  pageWrites: { intent: number; dirty: number; present: number };
  /** New intent epochs begun (the intent bitmap cleared). */
  intentEpochs: number;
  seals: number;
  sealsCompleted: number;
  sealsAbandoned: number;
  sideLogCopies: number;
  sideLogBytes: number;
  /** readSealed calls that saw a write race their image read and re-read the side log copy. */
  readSealedRetries: number;
  fetches: number;
  fetchedClusters: number;
  /** Clusters dirty in the current epoch. */
  dirtyClusters: number;
  /** Clusters of the open seal (0 without one). */
  sealedClusters: number;
}

/** What the engine counts itself; the rest of VolumeStats comes from its parts. */
export type Counters = Omit<VolumeStats, 'fdatasyncs' | 'pageWrites' | 'intentEpochs' | 'sideLogCopies' | 'sideLogBytes' | 'readSealedRetries' | 'dirtyClusters' | 'sealedClusters'> & {
  imageSyncs: number;
};

/** Counters at zero, as a volume opens. */
export function zeroCounters(): Counters {
  return { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, zeroClusters: 0, fsyncs: 0, imageSyncs: 0, stateWrites: 0, seals: 0, sealsCompleted: 0, sealsAbandoned: 0, fetches: 0, fetchedClusters: 0 };
}

export function volumeStats(c: Counters, tracker: ChangeTracker, present: PresentMap | null, seals: SealKeeper): VolumeStats {
  const t = tracker.counters;
  const pages = tracker.pageWrites();
  const presentSyncs = present?.syncs ?? 0;
  const { imageSyncs, ...rest } = c;
  return {
    ...rest,
    fdatasyncs: { image: imageSyncs, intent: t.intentSyncs, dirty: t.dirtySyncs, present: presentSyncs, total: imageSyncs + t.intentSyncs + t.dirtySyncs + presentSyncs },
    pageWrites: { intent: pages.intent, dirty: pages.dirty, present: present?.pageWrites ?? 0 },
    intentEpochs: t.intentEpochs,
    sideLogCopies: seals.copies,
    sideLogBytes: seals.sideLogBytes,
    readSealedRetries: seals.readRetries,
    dirtyClusters: tracker.current.count(),
    sealedClusters: seals.sealed?.clusterCount() ?? 0,
  };
}

/** The same figures for a volume on the native write path, from its C counters (native/volume). */
export function nativeVolumeStats(n: Record<string, number>, stateWrites: number, fetches: number): VolumeStats {
  const v = (k: string): number => n[k] ?? 0;
  return {
    reads: v('reads'),
    writes: v('writes'),
    bytesRead: v('bytesRead'),
    bytesWritten: v('bytesWritten'),
    zeroClusters: v('zeroClusters'),
    fsyncs: v('fsyncs'),
    fdatasyncs: { image: v('imageSyncs'), intent: v('intentSyncs'), dirty: v('dirtySyncs'), present: v('presentSyncs'), total: v('imageSyncs') + v('intentSyncs') + v('dirtySyncs') + v('presentSyncs') },
    stateWrites,
    pageWrites: { intent: v('intentPageWrites'), dirty: v('dirtyPageWrites'), present: v('presentPageWrites') },
    intentEpochs: v('intentEpochs'),
    seals: v('seals'),
    sealsCompleted: v('sealsCompleted'),
    sealsAbandoned: v('sealsAbandoned'),
    sideLogCopies: v('sideLogCopies'),
    sideLogBytes: v('sideLogBytes'),
    readSealedRetries: v('sealedReadRetries'),
    fetches,
    fetchedClusters: v('fetchedClusters'),
    dirtyClusters: v('dirtyClusters'),
    sealedClusters: v('sealedClusters'),
  };
}
