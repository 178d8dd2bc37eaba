/**
 * Snapshots of attached volumes, as the daemon takes them: one job per volume at a time,
 * sealed alone (crash-consistent), in a QEMU pause (stop, seal, cont: qemu-flushed) or
 * inside a guest freeze (freeze, stop, seal, cont, thaw: guest-frozen). The QMP sessions
 * and guest agents are kept per socket path; a VM's SHUTDOWN event triggers a final
 * snapshot of its volumes. docs/qmp.md has the sequences.
 *
 * A volume attached with a libvirt domain (attach --domain) and no QMP socket is quiesced
 * through libvirt instead (libvirt/quiesce.ts: domfsfreeze, suspend, seal, resume,
 * domfsthaw), and the domain's lifecycle is watched (libvirt/events.ts): when it stops, its
 * volumes get a final snapshot. docs/libvirt.md has the sequence.
 */
import { IslandError, codeOf } from '../errors.js';
import { parseVolumeName } from '../format/names.js';
import type { Manifest } from '../format/records.js';
import { findSnapshot } from '../repo/snapshots.js';
import { checkHolds } from '../repo/fencing.js';
import { takeSnapshot } from '../snapshot/create.js';
import { EncodePool } from '../snapshot/pool.js';
import { LifecycleWatch } from '../libvirt/events.js';
import { quiesced, type Quiesced } from '../libvirt/quiesce.js';
import { Virsh } from '../libvirt/virsh.js';
import { GuestAgent } from '../qmp/guest-agent.js';
import { QmpSession } from '../qmp/session.js';
import type { Seal } from '../volume/engine.js';
import type { AnyVolume } from '../volume/write-path.js';
import { snapshotView, type Attached, type DaemonContext, type SnapshotJob, type SnapshotView } from './context.js';

export type Consistency = Manifest['consistency'];

export class SnapshotJobs {
  private pool: EncodePool | undefined;
  private readonly qmpSessions = new Map<string, QmpSession>();
  private readonly agents = new Map<string, GuestAgent>();
  private readonly watches = new Map<string, LifecycleWatch>();
  private virshClient: Virsh | undefined;

  /** Called after a snapshot of a clone's first own snapshot commits (its source can be unpinned). */
  constructor(
    private readonly ctx: DaemonContext,
    private readonly onFirstOwnSnapshot: (source: Manifest) => Promise<void>,
    /** Told when the store shows another host took a volume: it is fenced here. */
    private readonly onFenced: (name: string, a: Attached, err: unknown) => void,
  ) {}

  private encodePool(): EncodePool {
    this.pool ??= new EncodePool();
    return this.pool;
  }

  /** The snapshot `id` a local copy's change tracking is relative to, if it still exists. */
  async parentById(name: string, id: string, volume: AnyVolume): Promise<Manifest | null> {
    const repo = this.ctx.repo;
    // The parent is the volume's own snapshot, or (before its first one) its source's.
    const m = (await repo.getManifest(name, id)) ?? (await findSnapshot(repo, id));
    if (!m || (await repo.getTombstone(id))) {
      this.ctx.log.warn({ volume: name, snapshot: id }, 'the last snapshot of the local copy is gone: the next snapshot uploads everything');
      await volume.markAllDirty();
      return null;
    }
    return m;
  }

  /** Snapshot attached volumes (several volumes of one VM are sealed back to back). */
  async create(req: { volumes: unknown; consistency?: unknown; wait?: unknown; qmp?: unknown; qga?: unknown }): Promise<{ snapshots: SnapshotView[] } | { started: string[] }> {
    const attached = this.ctx.attached;
    if (!Array.isArray(req.volumes) || req.volumes.length === 0 || req.volumes.length > 64) throw new IslandError('INVALID_ARGUMENT', 'volumes must be a list of 1 to 64 volume names');
    const names = req.volumes.map((v) => parseVolumeName(v));
    for (const n of names) {
      const a = attached.get(n);
      if (!a) throw new IslandError('NOT_FOUND', `volume ${n} is not attached on this host`, { details: { volume: n } });
      if (a.job) throw new IslandError('BUSY', `a snapshot of ${n} is already in progress`, { details: { volume: n } });
    }
    const qmpOf = (n: string): string | undefined => (typeof req.qmp === 'string' ? req.qmp : attached.get(n)?.qmp);
    const qgaOf = (n: string): string | undefined => (typeof req.qga === 'string' ? req.qga : attached.get(n)?.qga);
    // A QMP socket wins over a domain: island then talks to QEMU itself.
    const domainOf = (n: string): string | undefined => (qmpOf(n) === undefined ? attached.get(n)?.domain : undefined);
    const requested = req.consistency;
    if (requested !== undefined && requested !== 'crash' && requested !== 'flush' && requested !== 'freeze') {
      throw new IslandError('INVALID_ARGUMENT', `consistency must be crash, flush or freeze, got ${JSON.stringify(String(requested)).slice(0, 30)}`);
    }
    const consistency = requested ?? (names.every((n) => qmpOf(n) ?? domainOf(n)) ? 'flush' : 'crash');
    let jobs: Promise<Manifest>[];
    if (consistency === 'crash') {
      jobs = names.map((n) => this.one(n, 'crash'));
    } else {
      const missing = names.filter((n) => !qmpOf(n) && !domainOf(n));
      if (missing.length) throw new IslandError('INVALID_ARGUMENT', `${consistency} consistency needs QEMU's QMP socket (attach --qmp or snapshot --qmp) or the libvirt domain (attach --domain) for ${missing.join(', ')}`);
      const noAgent = consistency === 'freeze' ? names.filter((n) => qmpOf(n) && !qgaOf(n)) : [];
      if (noAgent.length) throw new IslandError('INVALID_ARGUMENT', `freeze consistency needs the guest agent's socket (attach --qga or snapshot --qga) for ${noAgent.join(', ')}`);
      // The volumes of one VM (one QMP socket, or one domain) are sealed in one pause.
      const groups = new Map<string, { qmp?: string; domain?: string; vols: string[] }>();
      for (const n of names) {
        const key = qmpOf(n) !== undefined ? `qmp:${qmpOf(n)}` : `domain:${domainOf(n)}`;
        const g = groups.get(key) ?? { qmp: qmpOf(n), domain: domainOf(n), vols: [] };
        g.vols.push(n);
        groups.set(key, g);
      }
      jobs = [];
      for (const { qmp: path, domain, vols } of groups.values()) {
        if (path === undefined) {
          // Through libvirt: without an explicit level, the best the domain gives (freeze,
          // or a pause when no guest agent answers), recorded as it really was.
          const q = await this.domainSeal(domain as string, vols, requested === undefined ? undefined : consistency);
          for (const [i, n] of vols.entries()) jobs.push(this.one(n, q.consistency, q.result[i], q.pauseMs ?? undefined));
          continue;
        }
        const { seals, pauseMs } = consistency === 'freeze' ? await this.frozenSeal(qgaOf(vols[0] as string) as string, path, vols) : await this.pausedSeal(path, vols);
        const level = consistency === 'freeze' ? 'guest-frozen' : 'qemu-flushed';
        for (const [i, n] of vols.entries()) jobs.push(this.one(n, level, seals[i], pauseMs));
      }
    }
    if (req.wait === false) {
      for (const j of jobs) j.catch(() => undefined);
      return { started: names };
    }
    const ms = await Promise.all(jobs);
    return { snapshots: ms.map((m) => snapshotView(m, false)) };
  }

  /** Snapshot one attached volume (joins the one in progress, if any). */
  one(name: string, consistency: Consistency, seal?: Seal, pauseMs?: number): Promise<Manifest> {
    const a = this.ctx.attached.get(name);
    if (!a) return Promise.reject(new IslandError('NOT_FOUND', `volume ${name} is not attached on this host`));
    return this.oneOf(name, a, consistency, seal, pauseMs);
  }

  /** Snapshot a volume this host holds, attached or detaching (joins the one in progress, if any). */
  oneOf(name: string, a: Attached, consistency: Consistency, seal?: Seal, pauseMs?: number): Promise<Manifest> {
    if (a.job) return a.job.promise;
    const job: SnapshotJob = { volume: name, started: Date.now(), done: 0, total: 0, promise: Promise.resolve(null as unknown as Manifest) };
    job.promise = (async () => {
      try {
        return await this.run(name, a, job, consistency, seal, pauseMs);
      } catch (err) {
        this.ctx.log.error({ volume: name, err, code: codeOf(err) }, 'snapshot failed; its changes go into the next one');
        throw err;
      } finally {
        a.job = undefined;
      }
    })();
    a.job = job;
    return job.promise;
  }

  private async run(name: string, a: Attached, job: SnapshotJob, consistency: Consistency, seal: Seal | undefined, pauseMs: number | undefined): Promise<Manifest> {
    // Fencing before anything is uploaded (the commit checks again at its commit point).
    if (a.access.mode === 'fenced') throw new IslandError('FENCED', `volume ${name} is fenced on this host: ${a.access.why ?? ''}`, { details: { volume: name } });
    try {
      await checkHolds(this.ctx.repo, name, a.generation);
    } catch (err) {
      if (codeOf(err) === 'FENCED') this.onFenced(name, a, err);
      throw err;
    }
    if (a.parentId !== undefined) {
      a.parent = await this.parentById(name, a.parentId, a.volume);
      a.parentId = undefined;
    }
    const from = a.parent && a.parent.volume !== name ? a.parent : null;
    const take = (parent: Manifest | null, source: Manifest | null, level: Consistency, sealed: Seal | undefined, pause: number | null): Promise<Manifest> =>
      takeSnapshot(this.ctx.repo, this.encodePool(), {
        volume: a.volume,
        generation: a.generation,
        parent: parent?.volume === name ? parent : null,
        from: source,
        consistency: level,
        seal: sealed,
        pauseMs: pause,
        windowMs: this.ctx.config.commitWindowMs,
        onProgress: (done, total) => {
          job.done = done;
          job.total = total;
        },
      });
    let m: Manifest;
    try {
      m = await take(a.parent, from, consistency, seal, pauseMs ?? null);
    } catch (err) {
      if (codeOf(err) !== 'SNAPSHOT_DELETED' || a.parent === null) throw err;
      // The parent (or a clone's source) was deleted meanwhile, on any host: its blobs cannot
      // be reused. Everything counts as changed and the snapshot is taken again in full (the
      // failed one merged its seal back). A seal made in a pause is gone with it, so the
      // retry is crash-consistent and says so.
      this.ctx.log.warn({ volume: name, snapshot: a.parent.id }, 'the parent snapshot was deleted during the snapshot: taking it again in full');
      await a.volume.markAllDirty();
      a.parent = null;
      m = await take(null, null, seal === undefined ? consistency : 'crash', undefined, null);
    }
    a.parent = m;
    // The first own snapshot of a clone holds what it needs of its source: unpin it.
    if (from) await this.onFirstOwnSnapshot(from);
    this.ctx.log.info({ volume: name, snapshot: m.id, stats: m.stats, warnings: m.warnings }, 'snapshot committed');
    return m;
  }

  /** One session per QMP socket path, connected on demand (QEMU may start later). */
  qmpSession(path: string): QmpSession {
    let s = this.qmpSessions.get(path);
    if (!s) {
      s = new QmpSession(path, { logger: this.ctx.log.child({ qmp: path }) });
      s.on('shutdown', () => this.onVmShutdown(path));
      this.qmpSessions.set(path, s);
    }
    return s;
  }

  /** QEMU shut down: the volumes it used get a final snapshot (QEMU flushed before quitting). */
  private onVmShutdown(path: string): void {
    for (const [name, a] of this.ctx.attached) {
      if (a.qmp !== path) continue;
      this.ctx.log.info({ volume: name }, 'VM shut down: final snapshot');
      this.one(name, 'qemu-flushed').catch(() => undefined);
    }
  }

  /** The virsh client for the configured libvirt URI. */
  virsh(): Virsh {
    this.virshClient ??= new Virsh(this.ctx.config.libvirtUri);
    return this.virshClient;
  }

  /**
   * Seal the volumes of one libvirt domain inside libvirt's freeze and suspend (or suspend
   * only for `flush`); `level` undefined: freeze when the agent answers, else the pause.
   */
  private async domainSeal(domain: string, vols: string[], level: 'flush' | 'freeze' | undefined): Promise<Quiesced<Seal[]>> {
    const attached = this.ctx.attached;
    for (const n of vols) await attached.get(n)?.volume.flushBitmaps();
    const log = this.ctx.log.child({ domain, volumes: vols });
    return quiesced(this.virsh(), domain, level ?? 'freeze', level !== undefined, log, () => Promise.all(vols.map((n) => (attached.get(n) as Attached).volume.seal())));
  }

  /** Follow a domain's lifecycle (attach --domain): its stop triggers final snapshots. */
  watchDomain(domain: string): void {
    if (this.watches.has(domain)) return;
    const w = new LifecycleWatch(this.virsh(), domain, this.ctx.log.child({ domain }));
    w.on('stopped', (reason) => this.onDomainStopped(domain, reason));
    w.start();
    this.watches.set(domain, w);
  }

  /** Stop following a domain once no attached volume names it. */
  unwatchDomain(domain: string): void {
    for (const a of this.ctx.attached.values()) if (a.domain === domain) return;
    this.watches.get(domain)?.close();
    this.watches.delete(domain);
  }

  /**
   * The domain stopped: its volumes get a final snapshot, after any snapshot in progress
   * (that one sealed before the last writes). After a guest shutdown QEMU closed its images
   * cleanly (qemu-flushed); a domain destroyed, crashed or stopped unwatched may not have.
   */
  private onDomainStopped(domain: string, reason: string): void {
    const level: Consistency = reason === 'Shutdown' ? 'qemu-flushed' : 'crash';
    for (const [name, a] of this.ctx.attached) {
      if (a.domain !== domain || a.qmp !== undefined) continue;
      this.ctx.log.info({ volume: name, domain, reason, consistency: level }, 'domain stopped: final snapshot');
      void (async () => {
        while (a.job) await a.job.promise.catch(() => undefined);
        if (this.ctx.attached.get(name) !== a) return;
        await this.one(name, level);
      })().catch(() => undefined);
    }
  }

  /**
   * stop (QEMU drains and flushes its caches), seal every volume, cont: the pause is
   * bounded by QMP timeouts, and cont is sent on every path once stop was sent.
   */
  private async pausedSeal(path: string, vols: string[]): Promise<{ seals: Seal[]; pauseMs: number }> {
    const attached = this.ctx.attached;
    const q = this.qmpSession(path);
    for (const n of vols) await attached.get(n)?.volume.flushBitmaps();
    const t0 = performance.now();
    let seals: Seal[] = [];
    try {
      await q.stop({ timeoutMs: 5_000 });
      seals = await Promise.all(vols.map((n) => (attached.get(n) as Attached).volume.seal()));
    } finally {
      await this.resume(q);
    }
    // Whole milliseconds, rounded up (the manifest stores integers).
    return { seals, pauseMs: Math.ceil(performance.now() - t0) };
  }

  private guestAgent(path: string): GuestAgent {
    let a = this.agents.get(path);
    if (!a || a.closed) {
      a = new GuestAgent(path, { logger: this.ctx.log.child({ qga: path }) });
      this.agents.set(path, a);
    }
    return a;
  }

  /**
   * freeze: the guest agent freezes the guest's filesystems (they are clean and quiescent),
   * then stop/seal/cont as for flush, then thaw. Thaw is sent on every path once freeze was
   * sent, even when freeze failed or timed out (it may have frozen some filesystems).
   */
  private async frozenSeal(qga: string, qmp: string, vols: string[]): Promise<{ seals: Seal[]; pauseMs: number }> {
    const agent = this.guestAgent(qga);
    try {
      const frozen = await agent.fsfreezeFreeze();
      this.ctx.log.info({ qga, filesystems: frozen, volumes: vols }, 'guest filesystems frozen');
      return await this.pausedSeal(qmp, vols);
    } catch (err) {
      throw new IslandError(codeOf(err), `freeze snapshot of ${vols.join(', ')}: ${(err as Error).message} (is qemu-guest-agent running in the guest? --consistency flush needs no agent)`, { cause: err, details: { qga, volumes: vols } });
    } finally {
      await this.thaw(agent);
    }
  }

  private async thaw(agent: GuestAgent): Promise<void> {
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        await agent.fsfreezeThaw();
        return;
      } catch (err) {
        this.ctx.log.error({ err, qga: agent.path, attempt }, 'thaw failed: guest filesystems may still be frozen');
      }
    }
  }

  private async resume(q: QmpSession): Promise<void> {
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        await q.cont({ timeoutMs: 5_000 });
        return;
      } catch (err) {
        this.ctx.log.error({ err, qmp: q.path, attempt }, 'cont failed: the VM may still be paused');
      }
    }
  }

  async close(): Promise<void> {
    for (const w of this.watches.values()) w.close();
    this.watches.clear();
    for (const q of this.qmpSessions.values()) await q.close().catch(() => undefined);
    for (const g of this.agents.values()) await g.close().catch(() => undefined);
    await this.pool?.close();
  }
}
