/**
 * Crash points: named places inside island's multi-step flows where a test can make the
 * daemon die at once (SIGKILL to itself: no finally blocks, no flushes, exactly what a power
 * cut or an OOM kill leaves). Armed only by the test switch ISLAND_CRASH_AT, which the
 * configuration refuses without ISLAND_TEST_SWITCHES=1; unarmed, a crash point is one
 * comparison.
 *
 * Every point is listed here with what has happened when it fires, so a test can walk
 * them all (test/daemon/crash-points.test.ts) and a reader can see each flow's windows.
 */

export const CRASH_POINTS = {
  'attach.claimed': 'the generation is taken in the store; nothing local exists yet',
  'attach.local-created': 'a restored volume\'s local state exists; the committed snapshot is not recorded yet',
  'attach.recorded': 'local state and committed snapshot are recorded; the volume is not served yet',
  'snapshot.sealed': 'the seal is taken; nothing is uploaded',
  'snapshot.packs-uploaded': 'data and tree packs are in the store; no manifest',
  'snapshot.manifest-written': 'the manifest is in the store; its chain link is not',
  'snapshot.committed': 'the snapshot is committed in the store; the local state does not know it yet',
  'snapshot.completed': 'the local state records the committed snapshot',
  'detach.final-snapshot': 'the final snapshot is committed; the volume is still open here',
  'detach.local-released': 'the local copy is closed and dropped (or kept); no detach record',
  'fill.fetched': 'every cluster of the base is local; completion is not recorded',
  'gc.swept-batch': 'GC deleted its first batch of packs',
  'gc.manifests-removed': 'GC removed the manifests of released snapshots; their tombstones remain',
  'copy.packs-copied': 'a copy moved its packs to the target; no manifest there',
  'prune.tombstoned': 'a prune wrote its first tombstone',
} as const;

export type CrashPoint = keyof typeof CRASH_POINTS;

let armed: string | undefined;

/** Arm one crash point (the composition root does this from the checked configuration). */
export function armCrashPoint(name: string | undefined): void {
  armed = name;
}

export function isCrashPoint(name: string): name is CrashPoint {
  return Object.hasOwn(CRASH_POINTS, name);
}

/** Die here if this point is armed. */
export function crashPoint(name: CrashPoint): void {
  if (armed === name) process.kill(process.pid, 'SIGKILL');
}
