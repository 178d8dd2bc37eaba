/**
 * A region's snapshot history, as the daemon serves it: listing and showing snapshots,
 * deleting them (tombstones), pruning by a retention policy, copies to other regions and
 * garbage collection (one GC at a time per daemon; several hosts may each run one).
 */
import { IslandError } from '../errors.js';
import { parseSnapshotId, parseVolumeName } from '../format/names.js';
import type { Manifest } from '../format/records.js';
import { collectGarbage, type GcPhase, type GcReport } from '../repo/gc.js';
import { keys } from '../repo/keys.js';
import { readSnapshots } from '../repo/manifests.js';
import { pruneSnapshots, type PruneReport } from '../repo/prune.js';
import { parseRetentionPolicy } from '../repo/retention.js';
import { deleteSnapshot, findSnapshot } from '../repo/snapshots.js';
import { listAll } from '../store/types.js';
import { snapshotView, type DaemonContext, type SnapshotView } from './context.js';
import { refuseHeadDelete } from './detached-snapshots.js';
import { copyOutcome, type Copies, type CopyOutcome, type CopyView } from './copies.js';

interface GcJob {
  dryRun: boolean;
  started: number;
  phase: GcPhase;
  done: number;
  total: number | null;
}

export interface GcView {
  dryRun: boolean;
  phase: GcPhase;
  done: number;
  /** Known in the mark (roots) and sweep (packs) phases. */
  total: number | null;
  seconds: number;
}

export class History {
  /** The GC running on this daemon, if any. */
  private gcJob: GcJob | undefined;

  constructor(
    private readonly ctx: DaemonContext,
    readonly copies: Copies,
  ) {}

  async list(volume?: string): Promise<SnapshotView[]> {
    const repo = this.ctx.repo;
    const name = volume === undefined ? undefined : parseVolumeName(volume);
    const damageMarks = async (): Promise<Set<string>> => {
      const ids = new Set<string>();
      for await (const o of listAll(repo.store, keys.damagePrefix)) ids.add(o.key.slice(keys.damagePrefix.length));
      return ids;
    };
    // The damage marks are listed beside the snapshots (each one's manifest and tombstone).
    const [damaged, listed] = await Promise.all([damageMarks(), readSnapshots(repo, name, { onError: () => undefined })]);
    const out = listed.map((s) => snapshotView(s.manifest, s.deleted, damaged.has(s.manifest.id)));
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async show(id: unknown): Promise<SnapshotView> {
    const repo = this.ctx.repo;
    const sid = parseSnapshotId(id);
    const m = await findSnapshot(repo, sid);
    if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${sid}`, { details: { snapshot: sid } });
    return snapshotView(m, (await repo.getTombstone(sid)) !== undefined, (await repo.getDamage(sid).catch(() => undefined)) !== undefined);
  }

  /** Tombstone snapshots (GC frees their data later). */
  async delete(req: { ids: unknown; force?: unknown }): Promise<{ deleted: string[] }> {
    const repo = this.ctx.repo;
    if (!Array.isArray(req.ids) || req.ids.length === 0 || req.ids.length > 1000) throw new IslandError('INVALID_ARGUMENT', 'ids must be a list of 1 to 1000 snapshot ids');
    const ids = [...new Set(req.ids.map((i) => parseSnapshotId(i)))];
    // Check every id before writing any tombstone, so a typo in a list deletes nothing. One
    // listing finds them all (by id alone: any volume's), their manifests and tombstones
    // read as a snapshot list reads them; the checks then go in the order given.
    const wanted = new Set(ids);
    const listed = new Map((await readSnapshots(repo, undefined, { skip: (k) => !wanted.has(k.id) })).map((s) => [s.manifest.id, s]));
    const found: Manifest[] = [];
    for (const id of ids) {
      const s = listed.get(id);
      if (!s) throw new IslandError('NOT_FOUND', `no snapshot ${id}`, { details: { snapshot: id } });
      const m = s.manifest;
      if (s.deleted) throw new IslandError('SNAPSHOT_DELETED', `snapshot ${id} is already deleted`, { details: { snapshot: id } });
      if (this.ctx.attached.get(m.volume)?.job) throw new IslandError('BUSY', `a snapshot of ${m.volume} is in progress; delete after it commits`, { details: { snapshot: id } });
      found.push(m);
    }
    await refuseHeadDelete(this.ctx, found);
    const deleted: string[] = [];
    for (const m of found) {
      await deleteSnapshot(repo, m.volume, m.id, { force: req.force === true, reason: 'deleted by request' });
      deleted.push(m.id);
      this.ctx.log.info({ snapshot: m.id, volume: m.volume, forced: req.force === true }, 'snapshot deleted (tombstone written)');
    }
    return { deleted };
  }

  /**
   * Copy a snapshot to another configured region (docs/protocols.md, "Copy"): with wait,
   * resolves when the copy committed there; without, once it started.
   */
  async copy(req: { id: unknown; to: unknown; wait?: boolean }): Promise<CopyOutcome | { started: CopyView }> {
    if (req.to === undefined) throw new IslandError('INVALID_ARGUMENT', 'a copy needs a target region (--to REGION)');
    const job = await this.copies.start(req.id, req.to);
    if (req.wait === false) return { started: this.copies.views().find((v) => v.snapshot === job.snapshot && v.to === job.to) as CopyView };
    return copyOutcome(job, await job.promise);
  }

  /** Tombstone the snapshots of a volume that a retention policy does not keep. */
  async prune(req: { volume: unknown; keep: unknown; dryRun?: unknown }): Promise<PruneReport> {
    const repo = this.ctx.repo;
    const volume = parseVolumeName(req.volume);
    if (typeof req.keep !== 'object' || req.keep === null || Array.isArray(req.keep)) throw new IslandError('INVALID_ARGUMENT', 'keep must be an object of retention rules, e.g. {"last": 3, "daily": 7}');
    const policy = parseRetentionPolicy(req.keep as Record<string, unknown>);
    const dryRun = req.dryRun === true;
    if (!dryRun && this.ctx.attached.get(volume)?.job) throw new IslandError('BUSY', `a snapshot of ${volume} is in progress; prune after it commits`, { details: { volume } });
    const report = await pruneSnapshots(repo, volume, policy, { dryRun });
    // Snapshots outlive their volume, so a volume without a record may still be pruned.
    if (report.kept.length + report.deleted.length + report.skipped.length === 0 && !(await repo.getVolume(volume))) {
      throw new IslandError('NOT_FOUND', `no volume ${volume} and no snapshots of it`, { details: { volume } });
    }
    this.ctx.log.info({ volume, dryRun, policy, kept: report.kept.length, deleted: report.deleted.map((d) => d.id), skipped: report.skipped.map((s) => ({ id: s.id, code: s.code })) }, 'snapshots pruned');
    return report;
  }

  /**
   * Each volume created from a snapshot that has no snapshot of its own holds one clone pin
   * on it (they are interchangeable): its first snapshot, or its deletion, releases one.
   */
  async releaseClonePin(snapshot: string): Promise<void> {
    const pin = (await this.ctx.repo.listPins(snapshot)).find((p) => p.holder === 'clone');
    if (pin) await this.ctx.repo.deletePin(pin);
  }

  async gc(req: { dryRun?: unknown }): Promise<GcReport> {
    if (this.gcJob) throw new IslandError('BUSY', `a GC is already running on this host (${this.gcJob.phase}, started ${new Date(this.gcJob.started).toISOString()})`);
    const dryRun = req.dryRun === true;
    const job: GcJob = { dryRun, started: Date.now(), phase: 'tombstones', done: 0, total: null };
    this.gcJob = job;
    try {
      const report = await collectGarbage(this.ctx.repo, {
        graceMs: this.ctx.config.gcGraceMs,
        dryRun,
        onProgress: (phase, done, total) => {
          job.phase = phase;
          job.done = done;
          job.total = total ?? null;
        },
      });
      const { deletedPackKeys: _keys, topPartlyDead: _top, ...summary } = report;
      this.ctx.log.info(summary, 'gc finished');
      return report;
    } finally {
      this.gcJob = undefined;
    }
  }

  gcStatus(): GcView | null {
    const j = this.gcJob;
    return j ? { dryRun: j.dryRun, phase: j.phase, done: j.done, total: j.total, seconds: (Date.now() - j.started) / 1000 } : null;
  }
}
