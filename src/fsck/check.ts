/**
 * island fsck: prove snapshots restorable, find damage, repair what can be repaired.
 *
 *  1. Records: every catalog record, manifest, link, tombstone, pin, generation record,
 *     checkpoint and damage mark decodes and checks (records.ts); every manifest has its
 *     chain link and every link of a snapshot not deleted has its manifest (chain.ts).
 *  2. Structure: the tree of every snapshot being checked (live ones, and deleted ones
 *     still inside the grace period: GC keeps their objects) is walked once per distinct
 *     subtree; every node is read and verified; every blob location is checked against
 *     its pack's trailer (trees.ts, packs.ts). No blob data is read.
 *  3. Deep (--deep[=PERCENT]): every pack the trees reach, or a seeded sample of them, is
 *     read whole and every frame decoded and hashed; when frames fail, the trees are
 *     walked again (from the caches) to name the snapshots they affect.
 *  4. Relations: forks, damage marks, stale pins; orphans (packs that nothing references,
 *     no manifest lists and no upload checkpoint names) when the whole store is checked.
 *     With --qcow2, qemu-img check of each snapshot's image; with --local, the local copies
 *     on this host against the snapshots they count from (local.ts).
 *  5. Repair (--repair, repair.ts); then the report and its exit status.
 * A finding never stops the run; a store that does not answer does (operational error).
 */
import { IslandError } from '../errors.js';
import type { BlobKind } from '../format/blob.js';
import type { Manifest } from '../format/records.js';
import { keys, parsePackKey } from '../repo/keys.js';
import type { Repository } from '../repo/repository.js';
import { listAll, type ObjectInfo, type OpOptions } from '../store/types.js';
import { Rng } from '../util/random.js';
import { Findings, findingView, type FindingView } from './findings.js';
import { PackIndexes, verifyPack, type BadBlob } from './packs.js';
import { checkChains } from './chain.js';
import { checkLocal, type LocalSummary } from './local.js';
import { readRecords } from './records.js';
import { repair, type RepairOptions } from './repair.js';
import { TreeChecker } from './trees.js';

export interface FsckOptions extends OpOptions {
  /** Verify blob data: 100 for every pack, less for a sample of that percentage. */
  deepPercent?: number;
  /** Seed of the deep sample (printed, so a run can be repeated). */
  seed?: number;
  volume?: string;
  snapshot?: string;
  /** Grace period G: deleted snapshots inside it are still checked; orphans younger are not. */
  graceMs: number;
  repair?: RepairOptions;
  /**
   * Check a snapshot's image as qcow2 (qemu-img check over a read-only view of it); given,
   * every checked snapshot that no error affects is checked.
   */
  qcow2?: (m: Manifest) => Promise<Qcow2Check>;
  /** Also check the local copies under these directories (one subdirectory per volume). */
  localRoots?: string[];
  onProgress?: (phase: string, done: number, total: number) => void;
}

/** What `qemu-img check` said of a snapshot's image. */
export interface Qcow2Check {
  corruptions: number;
  leaks: number;
  /** The check could not complete (the image does not open as qcow2, say): why. */
  failure: string | null;
}

export interface FsckSummary {
  records: number;
  snapshotsChecked: number;
  /** Deleted snapshots past the grace period, left to GC and not checked. */
  snapshotsReleased: number;
  nodes: number;
  blobReferences: number;
  packsListed: number;
  packsReached: number;
  trailerReads: number;
  packsVerified: number;
  bytesVerified: number;
  blobsVerified: number;
  seed: number | null;
  /** --local: local copies checked, clusters compared with their snapshot by hash. */
  local: LocalSummary | null;
  /** Snapshots whose image qemu-img check examined. */
  qcow2Checked: number;
  orphanPacks: number;
  orphanBytes: number;
  /** Unreferenced packs younger than the grace period (an upload may still commit them). */
  recentUnreferencedPacks: number;
  errors: number;
  warnings: number;
  repaired: number;
  /** Snapshots some error leaves unrestorable (sorted). */
  damagedSnapshots: string[];
}

export interface FsckReport {
  summary: FsckSummary;
  findings: FindingView[];
  /** 0 clean, 1 errors found and all corrected, 4 errors left uncorrected. */
  exitCode: 0 | 1 | 4;
}

export async function runFsck(repo: Repository, opts: FsckOptions): Promise<FsckReport> {
  const signal = opts.signal;
  const progress = opts.onProgress ?? (() => undefined);
  const now = repo.now();
  const findings = new Findings();

  // 1. records
  progress('records', 0, 0);
  const rec = await readRecords(repo, findings, { signal });
  if (opts.snapshot !== undefined && !rec.manifests.has(opts.snapshot) && !rec.badManifests.has(opts.snapshot)) {
    throw new IslandError('NOT_FOUND', `no snapshot ${opts.snapshot}`, { details: { snapshot: opts.snapshot } });
  }
  const livePins = rec.pins.filter((p) => p.expires > now);
  const pinned = new Set(livePins.map((p) => p.snapshot));
  const released = (m: Manifest): boolean => {
    const t = rec.tombstones.get(m.id);
    return t !== undefined && now - t.created >= opts.graceMs && !pinned.has(m.id);
  };
  const whole = opts.volume === undefined && opts.snapshot === undefined;
  const wanted = (m: Manifest): boolean => (opts.volume === undefined || m.volume === opts.volume) && (opts.snapshot === undefined || m.id === opts.snapshot);
  const packsListed = new Map<string, ObjectInfo>();
  for (const prefix of keys.packPrefixes) for await (const o of listAll(repo.store, prefix, { signal })) if (parsePackKey(o.key)) packsListed.set(o.key, o);
  // Chain links and manifests, each against the other; a lost manifest's tree is checked from its link's copy.
  const chains = checkChains(rec, packsListed, findings, wanted);
  const selected = [...rec.manifests.values(), ...chains.lost]
    .filter(wanted)
    .filter((m) => opts.snapshot !== undefined || !released(m))
    .sort((a, b) => (a.id < b.id ? -1 : 1));
  const releasedCount = [...rec.manifests.values()].filter(released).length;

  // 2. structure
  const indexes = new PackIndexes(repo, { signal });
  const walkAll = async (bad: Map<string, Map<number, BadBlob>>): Promise<TreeChecker> => {
    const checker = new TreeChecker(repo, findings, indexes, bad, signal);
    let done = 0;
    for (const m of selected) {
      await checker.check(m);
      progress('trees', ++done, selected.length);
    }
    return checker;
  };
  let checker = await walkAll(new Map());

  // 3. deep
  let seed: number | null = null;
  let packsVerified = 0;
  let bytesVerified = 0;
  let blobsVerified = 0;
  if (opts.deepPercent !== undefined) {
    const pct = opts.deepPercent;
    const reached = [...checker.reached].sort();
    let sample = reached;
    if (pct < 100) {
      seed = (opts.seed ?? Math.floor(Math.random() * 0x1_0000_0000)) >>> 0;
      const rng = new Rng(seed);
      const shuffled = [...reached];
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
      }
      sample = shuffled.slice(0, Math.ceil((reached.length * pct) / 100)).sort();
    }
    const bad = new Map<string, Map<number, BadBlob>>();
    for (const key of sample) {
      const p = parsePackKey(key);
      if (!p) continue;
      const kind: BlobKind = p.kind;
      const id = Buffer.from(p.id, 'hex');
      const r = await verifyPack(repo, kind, id, { signal });
      packsVerified++;
      bytesVerified += r.bytes;
      blobsVerified += r.blobs;
      if (r.index.ok) indexes.set(kind, id, r.index);
      if (r.bad.size > 0) bad.set(key, r.bad);
      progress('deep', packsVerified, sample.length);
    }
    if (bad.size > 0) checker = await walkAll(bad);
  }

  // 4. relations
  const byParent = new Map<string, Manifest[]>();
  for (const m of selected) {
    if (rec.tombstones.has(m.id)) continue;
    const k = `${m.volume}/${m.parent ?? 'root'}`;
    byParent.set(k, [...(byParent.get(k) ?? []), m]);
  }
  for (const [k, ms] of byParent) {
    if (ms.length < 2) continue;
    const f = findings.add('fork', `snapshots/${k}`, `${ms.length} snapshots share the parent ${k}: ${ms.map((m) => `${m.id} (generation ${m.generation} on ${m.host})`).join(', ')}; readers take the highest generation`, 'none needed: nothing is lost; fence the old host and delete the branch you do not want');
    for (const m of ms) findings.affect(f, m.id);
  }
  for (const m of selected) {
    const d = rec.damage.get(m.id);
    if (!d) continue;
    const f = findings.add('damaged-snapshot', keys.damage(m.id), `snapshot ${m.id} of ${m.volume} was marked damaged: ${d.findings.join('; ')}`, 'none: it is refused as a restore source; delete it, or copy it back from another region');
    findings.affect(f, m.id);
  }
  for (const p of rec.pins) {
    if (p.expires > now && rec.manifests.has(p.snapshot)) continue;
    if (opts.volume !== undefined && p.volume !== opts.volume) continue;
    const why = p.expires <= now ? `expired ${new Date(p.expires).toISOString()}` : 'its snapshot does not exist';
    findings.add('stale-pin', keys.pin(p.snapshot, p.id), `${p.holder} pin of ${p.host} on ${p.snapshot}: ${why}`, 'delete the pin');
  }
  let qcow2Checked = 0;
  if (opts.qcow2) {
    const hurt = new Set<string>();
    for (const f of findings.all()) if (f.severity === 'error') for (const id of f.snapshots) hurt.add(id);
    for (const m of selected) {
      if (hurt.has(m.id) || rec.tombstones.has(m.id)) continue;
      const r = await opts.qcow2(m);
      qcow2Checked++;
      progress('qcow2', qcow2Checked, selected.length);
      if (r.corruptions === 0 && r.failure === null) continue;
      const what = r.failure ?? `qemu-img check found ${r.corruptions} corruption(s) and ${r.leaks} leaked cluster(s)`;
      const f = findings.add('qcow2-corruption', keys.manifest(m.volume, m.id), `the image in snapshot ${m.id} of ${m.volume} (${m.consistency}): ${what}`, 'none by island (the bytes are what QEMU wrote): restore it and run qemu-img check -r on the copy, or use an older snapshot');
      findings.affect(f, m.id);
    }
  }
  const local = opts.localRoots ? await checkLocal(repo, opts.localRoots, rec.manifests, findings, { volume: opts.volume, signal }) : null;
  let orphanPacks = 0;
  let orphanBytes = 0;
  let recent = 0;
  if (whole) {
    const listedByManifests = new Set<string>();
    for (const m of rec.manifests.values()) for (const p of m.packs) listedByManifests.add(p.toString('hex'));
    for (const [key, info] of packsListed) {
      const id = parsePackKey(key)!.id;
      // A pack a chain link's snapshot wrote is never an orphan: with its manifest lost it is the only copy of that data.
      if (checker.reached.has(key) || listedByManifests.has(id) || rec.checkpointPacks.has(id) || chains.linkPacks.has(id)) continue;
      if (now - info.mtime < opts.graceMs) {
        recent++;
        continue;
      }
      orphanPacks++;
      orphanBytes += info.size;
      const f = findings.add('orphan', key, `pack ${key} (${info.size} bytes, written ${new Date(info.mtime).toISOString()}) is referenced by nothing`, 'delete it with --repair --prune-orphans (gc also frees it)');
      f.bytes = info.size;
    }
  }

  // 5. repair
  if (opts.repair) await repair(repo, findings, checker, rec, { ...opts.repair, signal, graceMs: opts.graceMs, now });

  const all = findings.all();
  const errors = all.filter((f) => f.severity === 'error');
  const left = errors.filter((f) => f.repaired !== true);
  const damaged = new Set<string>();
  for (const f of left) for (const s of f.snapshots) damaged.add(s);
  return {
    summary: {
      records: rec.count,
      snapshotsChecked: selected.length,
      snapshotsReleased: releasedCount,
      nodes: checker.stats.nodes,
      blobReferences: checker.stats.blobRefs,
      packsListed: packsListed.size,
      packsReached: checker.reached.size,
      trailerReads: indexes.reads,
      packsVerified,
      bytesVerified,
      blobsVerified,
      seed,
      qcow2Checked,
      local,
      orphanPacks,
      orphanBytes,
      recentUnreferencedPacks: recent,
      errors: errors.length,
      warnings: all.length - errors.length,
      repaired: all.filter((f) => f.repaired === true).length,
      damagedSnapshots: [...damaged].sort(),
    },
    findings: all.map(findingView),
    exitCode: left.length > 0 ? 4 : errors.length > 0 ? 1 : 0,
  };
}
