/**
 * Garbage collection (docs/protocols.md, "Garbage collection").
 *
 *  1. Read tombstones. A snapshot is released when its tombstone is older than the grace
 *     period G; younger tombstones still protect their snapshot (a writer that checked
 *     the parent just before the tombstone may still commit within W < G).
 *  2. Roots: every manifest that is not released, plus every snapshot with a live pin
 *     (an attach filling from it, a copy, an upload reusing it).
 *  3. Mark every tree node and blob reachable from the roots, walking each distinct
 *     subtree once (shared subtrees are shared work), and count the live bytes of every
 *     pack (pack-usage.ts: each distinct frame once).
 *  4. Delete a pack only when nothing marked lies in it AND it is older than G: a pack
 *     younger than G may belong to an upload that has not committed yet (its manifest is
 *     not written, or not yet visible in a lagging listing). A pack with some live frames
 *     is kept whole and reported with its reclaimable bytes (see below).
 *  5. Last, remove the manifests of released snapshots that nothing pins, then their
 *     tombstones. Chain links are kept: they are how readers find the newest snapshot.
 * Every deletion is of something no root reaches; a GC that dies midway leaves only
 * garbage that the next run collects.
 *
 * Reclaimable bytes of a partly dead pack: what rewriting it with only its live frames
 * would free, i.e. its size minus (live frame bytes + one TRAILER_ENTRY_LEN trailer entry
 * per live frame + FOOTER_LEN). The dead frames and their trailer entries, exactly. So for
 * every pack something marked lies in:
 *
 *   size = liveBytes + liveFrames * TRAILER_ENTRY_LEN + FOOTER_LEN + reclaimable
 *
 * and the report's totals obey the same sum (liveBytes + packOverheadBytes +
 * reclaimableBytes = bytes of the packs with live frames).
 */
import { requireReadable } from '../crypto/open.js';
import { IslandError } from '../errors.js';
import type { Manifest } from '../format/records.js';
import { collectNodeRefs } from '../format/tree.js';
import { hex } from '../format/location.js';
import { FOOTER_LEN, TRAILER_ENTRY_LEN } from '../format/pack.js';
import { decodeManifest, decodeTombstone, type Tombstone } from '../format/records.js';
import { Semaphore } from '../store/limit.js';
import { listAll, type OpOptions } from '../store/types.js';
import { manifestTree } from './commit.js';
import { keys, parseLinkKey, parsePackKey } from './keys.js';
import { allPacksExist } from './snapshots.js';
import { MANIFEST_READS, readManifests, type ManifestKey } from './manifests.js';
import { PackUsage } from './pack-usage.js';
import type { Repository } from './repository.js';
import { crashPoint } from '../util/crash.js';

/** Partly dead packs listed in a report, most reclaimable first (the count and the total cover all). */
export const GC_TOP_PACKS = 20;
/** Deleted pack keys listed in a report (the count and bytes cover all). */
export const GC_LISTED_DELETIONS = 100;
/** Packs deleted per store request batch; progress is reported and the signal checked between batches. */
export const GC_SWEEP_BATCH = 200;

export type GcPhase = 'tombstones' | 'checkpoints' | 'roots' | 'mark' | 'account' | 'sweep' | 'records';

export interface GcOptions extends OpOptions {
  /** Grace period G in ms. */
  graceMs: number;
  dryRun?: boolean;
  /** Progress: `total` is known for mark (roots) and sweep (packs to delete). */
  onProgress?: (phase: GcPhase, done: number, total?: number) => void;
  /** Packs per delete batch (default GC_SWEEP_BATCH). */
  sweepBatch?: number;
}

export interface PartlyDeadPack {
  key: string;
  size: number;
  liveBytes: number;
  liveFrames: number;
  reclaimableBytes: number;
}

export interface GcReport {
  dryRun: boolean;
  roots: number;
  releasedSnapshots: string[];
  nodesVisited: number;
  packsTotal: number;
  /** Bytes of every pack in the listing. */
  packBytesTotal: number;
  /** Packs deleted (or, in a dry run, that would be). */
  packsDeleted: number;
  /** The first GC_LISTED_DELETIONS of them. */
  deletedPackKeys: string[];
  /** Pack bytes deleted (or that would be). */
  bytesFreed: number;
  /** Unreachable packs kept because they are younger than the grace period. */
  packsTooYoung: number;
  /** Unmarked packs kept because a live upload checkpoint lists them. */
  packsProtected: number;
  /** Packs something marked lies in. */
  livePacks: number;
  /** Frame bytes and count of every distinct reachable blob and node. */
  liveBytes: number;
  liveFrames: number;
  /** Trailer entries of the live frames plus a footer per live pack. */
  packOverheadBytes: number;
  /** Live packs with dead frames, and the bytes rewriting them would free. */
  partlyDeadPacks: number;
  reclaimableBytes: number;
  /** The GC_TOP_PACKS partly dead packs with the most reclaimable bytes. */
  topPartlyDead: PartlyDeadPack[];
  manifestsDeleted: number;
  tombstonesDeleted: number;
  checkpointsDeleted: number;
  /** Released snapshots some of whose packs are still live (through a later snapshot) or not yet gone (lagging listing): their tombstones are kept for a later GC. */
  releasedDeferred: number;
  /** Tombstones of released snapshots that wrote no pack, kept while their chain links stay (the proof they were collected, not lost). */
  tombstonesKept: number;
}

/** Keep `top` sorted by reclaimable bytes, descending, at most GC_TOP_PACKS long. */
function offerTop(top: PartlyDeadPack[], p: PartlyDeadPack): void {
  if (top.length === GC_TOP_PACKS && (top[top.length - 1] as PartlyDeadPack).reclaimableBytes >= p.reclaimableBytes) return;
  let i = top.length;
  while (i > 0 && (top[i - 1] as PartlyDeadPack).reclaimableBytes < p.reclaimableBytes) i--;
  top.splice(i, 0, p);
  if (top.length > GC_TOP_PACKS) top.pop();
}

export async function collectGarbage(repo: Repository, opts: GcOptions): Promise<GcReport> {
  // Without the key of an encrypted store no tree can be read: delete nothing, and say so.
  await requireReadable(repo.store, repo.frames.encrypted, 'GC');
  const now = repo.now();
  const signal = opts.signal;
  const progress = opts.onProgress ?? (() => undefined);
  // 1. tombstones
  const tombstones = new Map<string, Tombstone>();
  for await (const o of listAll(repo.store, keys.tombstonesPrefix, { signal })) {
    const buf = await repo.store.get(o.key, { signal }).catch(() => undefined);
    if (!buf) continue;
    const t = decodeTombstone(buf);
    tombstones.set(t.snapshot, t);
  }
  progress('tombstones', tombstones.size);
  const released = (id: string): boolean => {
    const t = tombstones.get(id);
    return t !== undefined && now - t.created >= opts.graceMs;
  };
  // 2a. packs of live upload checkpoints, listed BEFORE manifests: an upload writes its
  //     checkpoint before its manifest, so one of the two listings shows its packs.
  const protectedPacks = new Set<string>();
  const staleCheckpoints: string[] = [];
  for await (const o of listAll(repo.store, keys.checkpointsPrefix, { signal })) {
    const buf = await repo.store.get(o.key, { signal }).catch(() => undefined);
    if (!buf) continue;
    const c = decodeManifest(buf);
    if (now - c.created >= opts.graceMs) {
      staleCheckpoints.push(o.key);
      continue;
    }
    // A checkpoint does not say which kind each pack is: keep both names alive.
    for (const p of c.packs) {
      protectedPacks.add(`data/${hex(p)}`);
      protectedPacks.add(`meta/${hex(p)}`);
    }
  }
  progress('checkpoints', protectedPacks.size / 2);
  // 2. roots
  const pinned = new Set((await repo.listPins(undefined, { signal })).filter((p) => p.expires > now).map((p) => p.snapshot));
  const roots: Manifest[] = [];
  const releasedManifests: { volume: string; id: string }[] = [];
  const skip = (k: ManifestKey): boolean => {
    if (!released(k.id) || pinned.has(k.id)) return false;
    releasedManifests.push(k);
    return true;
  };
  roots.push(...(await readManifests(repo, undefined, { signal, skip })));
  // 2b. snapshots whose manifest is lost (or not listed yet) while their chain link remains:
  //     the link holds the manifest's copy (fsck --repair writes it back), and the packs they
  //     wrote may be the only copy of the volume's newest data. While those packs remain
  //     they are roots. Links of tombstoned snapshots are skipped; a link whose packs are
  //     gone is a snapshot an earlier GC collected. A link that does not decode stops GC:
  //     what it protects cannot be known.
  const known = new Set([...roots.map((m) => m.id), ...releasedManifests.map((r) => r.id)]);
  const releasedLinks: Manifest[] = [];
  for await (const o of listAll(repo.store, keys.allLinksPrefix, { signal })) {
    const k = parseLinkKey(o.key);
    if (!k) continue;
    let m: Manifest | undefined;
    try {
      m = await repo.getLink(k.volume, k.parent, k.generation, { signal });
    } catch (err) {
      throw new IslandError('FORMAT_CORRUPT', `GC stopped: the chain link ${o.key} cannot be read (${(err as Error).message}); it may be the only record of a snapshot whose packs GC would delete. Run island fsck --repair first`, { cause: err, details: { key: o.key } });
    }
    if (!m || known.has(m.id)) continue;
    known.add(m.id);
    if (tombstones.has(m.id)) {
      // A released snapshot whose manifest an earlier run removed: its tombstone waits
      // for its packs to go (step 5), and the link says which packs those are.
      if (released(m.id)) releasedLinks.push(m);
      continue;
    }
    if (await allPacksExist(repo, m, { signal })) roots.push(m);
  }
  progress('roots', roots.length);
  // 3. mark everything the roots reach, counting live frames per pack.
  const markedNodes = new Set<string>();
  const usage = new PackUsage();
  const reader = repo.nodeReader();
  // A node is identified by where it is stored, not by its hash: equal nodes written by
  // two uploads live in two packs, and both packs are reachable.
  const where = (loc: { pack: Buffer; offset: number }): string => `${hex(loc.pack)}:${loc.offset}`;
  let rootsDone = 0;
  for (const m of roots) {
    if (m.tree.root !== null) {
      for await (const visit of collectNodeRefs(manifestTree(m), reader, { skip: (ref) => markedNodes.has(where(ref.loc)), signal })) {
        const loc = visit.ref.loc;
        markedNodes.add(where(loc));
        usage.add(`meta/${hex(loc.pack)}`, loc.offset, loc.length);
        if (visit.node.kind === 'leaf') {
          for (const e of visit.node.entries) if (e.kind === 'blob') usage.add(`data/${hex(e.loc.pack)}`, e.loc.offset, e.loc.length);
        }
      }
    }
    progress('mark', ++rootsDone, roots.length);
  }
  // 4. account live packs and choose the packs to sweep
  const report: GcReport = {
    dryRun: opts.dryRun === true,
    roots: roots.length,
    releasedSnapshots: releasedManifests.map((r) => r.id),
    nodesVisited: markedNodes.size,
    packsTotal: 0,
    packBytesTotal: 0,
    packsDeleted: 0,
    deletedPackKeys: [],
    bytesFreed: 0,
    packsTooYoung: 0,
    packsProtected: 0,
    livePacks: 0,
    liveBytes: 0,
    liveFrames: 0,
    packOverheadBytes: 0,
    partlyDeadPacks: 0,
    reclaimableBytes: 0,
    topPartlyDead: [],
    manifestsDeleted: 0,
    tombstonesDeleted: 0,
    checkpointsDeleted: 0,
    releasedDeferred: 0,
    tombstonesKept: 0,
  };
  markedNodes.clear();
  const doomed: string[] = [];
  for (const prefix of keys.packPrefixes) {
    for await (const o of listAll(repo.store, prefix, { signal })) {
      const p = parsePackKey(o.key);
      if (!p) continue;
      report.packsTotal++;
      report.packBytesTotal += o.size;
      const name = `${p.kind === 'data' ? 'data' : 'meta'}/${p.id}`;
      if (usage.has(name)) {
        report.livePacks++;
        const live = usage.live(name);
        if (!live) continue; // a reference outside any readable pack: kept, not accounted
        const overhead = live.frames * TRAILER_ENTRY_LEN + FOOTER_LEN;
        const reclaimable = Math.max(0, o.size - live.bytes - overhead);
        report.liveBytes += live.bytes;
        report.liveFrames += live.frames;
        report.packOverheadBytes += overhead;
        if (reclaimable > 0) {
          report.partlyDeadPacks++;
          report.reclaimableBytes += reclaimable;
          offerTop(report.topPartlyDead, { key: o.key, size: o.size, liveBytes: live.bytes, liveFrames: live.frames, reclaimableBytes: reclaimable });
        }
        continue;
      }
      if (protectedPacks.has(name)) {
        report.packsProtected++;
        continue;
      }
      if (now - o.mtime < opts.graceMs) {
        report.packsTooYoung++;
        continue;
      }
      doomed.push(o.key);
      report.bytesFreed += o.size;
      if (report.deletedPackKeys.length < GC_LISTED_DELETIONS) report.deletedPackKeys.push(o.key);
    }
    progress('account', report.packsTotal);
  }
  report.packsDeleted = doomed.length;
  if (opts.dryRun) {
    report.manifestsDeleted = releasedManifests.length;
    report.tombstonesDeleted = releasedManifests.length;
    report.checkpointsDeleted = staleCheckpoints.length;
    return report;
  }
  // 4b. sweep, in batches (a signal between batches stops it; what is left is garbage still)
  const batch = Math.max(1, opts.sweepBatch ?? GC_SWEEP_BATCH);
  progress('sweep', 0, doomed.length);
  for (let i = 0; i < doomed.length; i += batch) {
    if (signal?.aborted) throw new IslandError('ABORTED', `GC stopped after deleting ${i} of ${doomed.length} packs; the next run deletes the rest`, { cause: signal.reason });
    const part = doomed.slice(i, i + batch);
    await repo.store.deleteMany(part, { signal });
    crashPoint('gc.swept-batch');
    progress('sweep', i + part.length, doomed.length);
  }
  // 5. the manifests of released snapshots, then the tombstones of those whose packs are
  //    all gone. A released snapshot some of whose packs are live (kept for a remaining
  //    snapshot) or still there (the listing lagged, or they are younger than G) keeps its
  //    tombstone for a later GC, which finds its packs through its chain link: without the
  //    tombstone its link and packs would look like a snapshot whose manifest was lost, a
  //    root to GC and evidence to attach, once the snapshot keeping its packs live is
  //    collected too.
  const sem = new Semaphore(MANIFEST_READS);
  const manifests = await Promise.all(releasedManifests.map((r) => sem.run(() => repo.getManifest(r.volume, r.id, { signal }).catch(() => undefined), signal)));
  for (const r of releasedManifests) {
    await repo.store.delete(keys.manifest(r.volume, r.id), { signal });
    report.manifestsDeleted++;
  }
  if (releasedManifests.length) crashPoint('gc.manifests-removed');
  const candidates = [...releasedManifests.map((r, i) => ({ id: r.id, m: manifests[i] })), ...releasedLinks.map((m) => ({ id: m.id, m }))];
  const unsettled = await Promise.all(candidates.map((c) => sem.run(async () => c.m !== undefined && (await someUnsettled(repo, c.m, usage, signal)), signal)));
  for (const [i, c] of candidates.entries()) {
    // A snapshot that wrote no pack (no change, or a revert sharing an older tree) keeps
    // its tombstone for as long as its chain link is there: with no pack to have gone
    // first, the tombstone is the only proof that its missing manifest was collected, not
    // lost (attach would take the link for evidence of a lost snapshot: HEAD_UNCERTAIN).
    if (c.m !== undefined && c.m.packs.length === 0) {
      report.tombstonesKept++;
      continue;
    }
    if (unsettled[i]) {
      report.releasedDeferred++;
      continue;
    }
    await repo.store.delete(keys.tombstone(c.id), { signal });
    report.tombstonesDeleted++;
  }
  if (staleCheckpoints.length) await repo.store.deleteMany(staleCheckpoints, { signal });
  report.checkpointsDeleted = staleCheckpoints.length;
  progress('records', report.manifestsDeleted + report.tombstonesDeleted + report.checkpointsDeleted);
  return report;
}

/** Whether a pack `m` wrote is still live (marked) or still in the store. */
async function someUnsettled(repo: Repository, m: Manifest, usage: PackUsage, signal: AbortSignal | undefined): Promise<boolean> {
  for (const p of m.packs) {
    const id = hex(p);
    if (usage.has(`data/${id}`) || usage.has(`meta/${id}`)) return true;
    if (await repo.store.head(keys.pack('data', p), { signal })) return true;
    if (await repo.store.head(keys.pack('metadata', p), { signal })) return true;
  }
  return false;
}
