/**
 * The daemon's operations, independent of how they are asked for (the control API and
 * tests call these). Volumes are catalog records in the store; attaching one creates
 * (or reopens) its local state under <dataDir>/volumes/<name> and shows its file on the
 * mount; detaching closes it and moves the local copy to <dataDir>/kept/<name>.
 *
 * Until snapshots exist, a detached volume's data lives only in its kept local copy:
 * detach therefore always keeps it, and attaching the volume on another host starts from
 * the volume's last snapshot (none yet) only when forced.
 */
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { volumesDir, type Config } from '../config.js';
import { IslandError, codeOf, isTransient } from '../errors.js';
import { DEFAULT_CLUSTER_SIZE, parseClusterSize, parseSize, parseHostId, parseSnapshotId, parseVolumeName, parseVolumeSize } from '../format/names.js';
import type { Manifest, Pin, VolumeRecord } from '../format/records.js';
import { parseQcow2Header, qcow2MaxVirtualSize } from '../format/qcow2.js';
import { acquireGeneration, releaseGeneration } from '../repo/attach.js';
import { keys, parseManifestKey } from '../repo/keys.js';
import { collectGarbage, type GcPhase, type GcReport } from '../repo/gc.js';
import { pruneSnapshots, type PruneReport } from '../repo/prune.js';
import { parseRetentionPolicy } from '../repo/retention.js';
import { deleteSnapshot, findSnapshot } from '../repo/snapshots.js';
import { EncodePool } from '../snapshot/pool.js';
import { takeSnapshot } from '../snapshot/create.js';
import { Repository } from '../repo/repository.js';
import { listAll } from '../store/types.js';
import { Volume, type PresentFetcher, type Seal } from '../volume/engine.js';
import { LAST_SNAPSHOT_FILE } from '../volume/setup.js';
import { QmpSession } from '../qmp/session.js';
import { GuestAgent } from '../qmp/guest-agent.js';
import { sleep } from '../util/sleep.js';
import { treeFetcher } from '../snapshot/restore.js';
import { fillVolume, type FillProgress } from '../snapshot/fill.js';
import { SnapshotImage } from '../snapshot/view.js';
import type { FuseVolume } from '../fuse/adapter.js';
import { checkRestorable, checkUndamaged, restoreSource } from './sources.js';
import { Copies, copyOutcome, type CopyOutcome, type CopyView, type RegionOpener } from './copies.js';
import { openStore } from '../store/open.js';

export interface VolumeView {
  name: string;
  virtualSize: number;
  clusterSize: number;
  region: string;
  created: string;
  status: VolumeRecord['status'];
  host: string | null;
  generation: number;
  source: VolumeRecord['source'];
  /** Present when attached on this host. */
  local?: { file: string; length: number; openHandles: number; dirtyClusters: number; recovery: Volume['recovery']; fill: FillView | null };
}

export interface AttachRequest {
  qmp?: string;
  qga?: string;
  force?: boolean;
  /** Background fill of a restored volume (default on). */
  fill?: boolean;
  /** Cap on the fill's fetched bytes per second (default: none). */
  fillRate?: string | number;
}

/** A restored volume's background fill. */
export interface FillJob {
  base: string;
  state: 'filling' | 'done' | 'incomplete' | 'stopped' | 'off';
  progress: FillProgress;
  controller: AbortController;
  promise: Promise<void>;
}

export interface FillView {
  base: string;
  state: FillJob['state'];
  totalClusters: number;
  doneClusters: number;
  bytesFetched: number;
  failedClusters: number;
  waiting: boolean;
}

export interface Attached {
  volume: Volume;
  generation: number;
  qmp: string | undefined;
  qga: string | undefined;
  /** The snapshot the local image's change tracking is relative to (null: none yet). */
  parent: Manifest | null;
  /** A snapshot in progress: at most one per volume. */
  job: SnapshotJob | undefined;
  /** The background fill, for volumes restored from a snapshot. */
  fill?: FillJob;
  /** The parent's id, when its manifest is still to be read (see Service.restore). */
  parentId?: string;
}

export interface SnapshotJob {
  volume: string;
  started: number;
  done: number;
  total: number;
  promise: Promise<Manifest>;
}

export interface SnapshotView {
  id: string;
  volume: string;
  parent: string | null;
  created: string;
  host: string;
  generation: number;
  consistency: Manifest['consistency'];
  imageLength: number;
  changedClusters: number;
  zeroClusters: number;
  uploadedBlobs: number;
  uploadedBytes: number;
  reusedBlobs: number;
  packs: number;
  pauseMs: number | null;
  durationMs: number;
  warnings: readonly string[];
  deleted: boolean;
  /** fsck marked it damaged: refused as a restore source. */
  damaged: boolean;
}

export function snapshotView(m: Manifest, deleted: boolean, damaged = false): SnapshotView {
  return {
    id: m.id,
    volume: m.volume,
    parent: m.parent,
    created: new Date(m.created).toISOString(),
    host: m.host,
    generation: m.generation,
    consistency: m.consistency,
    imageLength: m.imageLength,
    ...m.stats,
    warnings: m.warnings,
    deleted,
    damaged,
  };
}

/** Upload window W: a snapshot commits within it or re-checks (docs/protocols.md). */
export const WINDOW_MS = 60 * 60 * 1000;
/** Written when a restored volume holds every cluster of its base: it no longer needs the store. */
const FILLED_FILE = 'filled';
/** A clone pin lasts until the clone's first snapshot commits (or the clone is deleted). */
const CLONE_PIN_MS = 100 * 365 * 24 * 3600 * 1000;
/** An attach pin protects a restore base this long (renewal comes with the background fill). */
export const PIN_TTL_MS = 30 * 24 * 3600 * 1000;

/**
 * A fetcher whose base snapshot is known only after the volume's state is read, and is
 * loaded from the store on first need: a volume that is already filled never needs the
 * store to be served. A failed load is retried by the next fetch.
 */
class LazyFetcher implements PresentFetcher {
  private inner: Promise<PresentFetcher> | undefined;
  private load: (() => Promise<PresentFetcher>) | undefined;
  resolve(load: () => Promise<PresentFetcher>): void {
    this.load = load;
  }
  fetch(first: number, count: number, signal: AbortSignal): Promise<Buffer> {
    const load = this.load;
    if (!load) return Promise.reject(new IslandError('INTERNAL', 'clusters requested from a volume without a base snapshot'));
    this.inner ??= load().catch((err: unknown) => {
      this.inner = undefined;
      throw err;
    });
    return this.inner.then((f) => f.fetch(first, count, signal));
  }
}

/** A snapshot shown read-only on the mount, and the pin that keeps its data. */
interface MountedView {
  view: SnapshotImage;
  pin: Pin;
}

export class Service {
  readonly attached = new Map<string, Attached>();
  /** Snapshots mounted read-only, by file name (`<volume>@<snapshot>`). */
  readonly views = new Map<string, MountedView>();
  /** Names with an attach or detach in progress: a second one is refused. */
  private readonly busy = new Set<string>();
  openHandles: (name: string) => number = () => 0;
  /** Copies of snapshots to other regions. */
  readonly copies: Copies;

  constructor(
    readonly config: Config,
    readonly repo: Repository,
    readonly log: Logger,
    openRegion: RegionOpener = (name, backend) => new Repository(openStore(backend).store, { host: config.hostId, region: name }),
  ) {
    this.copies = new Copies(config, repo, openRegion, WINDOW_MS, log);
  }

  private localDir(name: string): string {
    return join(volumesDir(this.config), name);
  }

  private keptDir(name: string): string {
    return join(this.config.dataDir, 'kept', name);
  }

  /** The GC running on this daemon, if any (one at a time per daemon; several hosts may each run one). */
  private gcJob: GcJob | undefined;

  private pool: EncodePool | undefined;

  private encodePool(): EncodePool {
    this.pool ??= new EncodePool();
    return this.pool;
  }

  /** The snapshot a local copy's change tracking is relative to, if it still exists. */
  private async localParent(dir: string, name: string, volume: Volume): Promise<Manifest | null> {
    const id = await readFile(join(dir, LAST_SNAPSHOT_FILE), 'utf8').then((s) => s.trim(), () => '');
    if (!id) return null;
    return this.parentById(name, id, volume);
  }

  private async parentById(name: string, id: string, volume: Volume): Promise<Manifest | null> {
    // The parent is the volume's own snapshot, or (before its first one) its source's.
    const m = (await this.repo.getManifest(name, id)) ?? (await findSnapshot(this.repo, id));
    if (!m || (await this.repo.getTombstone(id))) {
      this.log.warn({ volume: name, snapshot: id }, 'the last snapshot of the local copy is gone: the next snapshot uploads everything');
      await volume.markAllDirty();
      return null;
    }
    return m;
  }

  /** The manifest a restored volume fetches from (it must still exist: it is pinned). */
  private async baseOf(name: string, id: string): Promise<Manifest> {
    const m = (await this.repo.getManifest(name, id)) ?? (await findSnapshot(this.repo, id));
    if (!m) throw new IslandError('NOT_FOUND', `the base snapshot ${id} of ${name} is gone; its missing clusters cannot be fetched`, { details: { volume: name, snapshot: id } });
    return m;
  }

  /**
   * Start (or resume, after a restart) the background fill of a restored volume. When it
   * completes, the volume holds every cluster of its base, and this host's pins on the base
   * are released.
   */
  private startFill(name: string, a: Attached, baseId: string, req: AttachRequest = {}): void {
    const rate = req.fillRate === undefined ? 0 : parseSize(req.fillRate, { what: 'fillRate', min: 1 });
    const controller = new AbortController();
    const job: FillJob = {
      base: baseId,
      state: 'filling',
      progress: { totalClusters: 0, doneClusters: 0, bytesFetched: 0, failedClusters: 0, waiting: false },
      controller,
      promise: Promise.resolve(),
    };
    a.fill = job;
    if (req.fill === false) {
      job.state = 'off';
      return;
    }
    const log = this.log.child({ volume: name, base: baseId });
    job.promise = (async () => {
      const t0 = performance.now();
      let p: FillProgress;
      // The store may be down (the fill waits for it); anything else ends the fill.
      for (let delay = 1000; ; delay = Math.min(60_000, delay * 2)) {
        try {
          const base = await this.baseOf(name, baseId);
          p = await fillVolume(this.repo, base, a.volume, { signal: controller.signal, rateBytesPerSec: rate, log, onProgress: (x) => (job.progress = x) });
          break;
        } catch (err) {
          if (controller.signal.aborted || !isTransient(err)) throw err;
          job.progress = { ...job.progress, waiting: true };
          log.warn({ err, retryInMs: delay }, 'background fill: the store is unreachable; waiting');
          await sleep(delay, controller.signal);
        }
      }
      job.progress = p;
      if (p.failedClusters > 0) {
        job.state = 'incomplete';
        log.error({ failedClusters: p.failedClusters }, 'background fill finished with clusters that cannot be restored (see island fsck); the base stays pinned');
        return;
      }
      await writeDurable(join(this.localDir(name), FILLED_FILE), baseId + '\n');
      job.state = 'done';
      await this.releasePins(baseId);
      log.info({ clusters: p.totalClusters, bytes: p.bytesFetched, seconds: Math.round(performance.now() - t0) / 1000 }, 'background fill done: the volume no longer needs the store to be read');
    })().catch((err: unknown) => {
      if (controller.signal.aborted) {
        job.state = 'stopped';
        return;
      }
      job.state = 'incomplete';
      log.error({ err, code: codeOf(err) }, 'background fill stopped; it resumes at the next attach or restart');
    });
  }

  /** Resume the fill of a volume restored from `base` unless it already completed. */
  private async resumeFill(name: string, a: Attached, baseId: string, req: AttachRequest = {}): Promise<void> {
    const done = await readFile(join(this.localDir(name), FILLED_FILE), 'utf8').then((x) => x.trim(), () => '');
    if (done === baseId) {
      a.fill = { base: baseId, state: 'done', progress: { totalClusters: 0, doneClusters: 0, bytesFetched: 0, failedClusters: 0, waiting: false }, controller: new AbortController(), promise: Promise.resolve() };
      return;
    }
    this.startFill(name, a, baseId, req);
  }

  /**
   * Each volume created from a snapshot that has no snapshot of its own holds one clone pin
   * on it (they are interchangeable): its first snapshot, or its deletion, releases one.
   */
  private async releaseClonePin(snapshot: string): Promise<void> {
    const pin = (await this.repo.listPins(snapshot)).find((p) => p.holder === 'clone');
    if (pin) await this.repo.deletePin(pin);
  }

  /** Drop this host's attach pins on a snapshot. */
  private async releasePins(snapshot: string): Promise<void> {
    for (const p of await this.repo.listPins(snapshot)) if (p.host === this.repo.host && p.holder === 'attach') await this.repo.deletePin(p);
  }

  private async stopFill(a: Attached): Promise<void> {
    if (!a.fill) return;
    a.fill.controller.abort(new IslandError('ABORTED', 'background fill stopped'));
    await a.fill.promise;
  }

  /** Pin a restore base while the volume may still read from it (expires: see PIN_TTL_MS). */
  private async pinBase(base: Manifest): Promise<void> {
    const now = this.repo.now();
    await this.repo.putPin({ id: this.repo.ulid(), snapshot: base.id, volume: base.volume, holder: 'attach', host: this.repo.host, created: now, expires: now + PIN_TTL_MS });
  }

  private async recordParent(dir: string, m: Manifest): Promise<void> {
    await writeDurable(join(dir, LAST_SNAPSHOT_FILE), m.id + '\n');
  }

  /** Reopen the volumes that were attached here when the daemon last stopped or crashed. */
  async restore(): Promise<void> {
    await mkdir(volumesDir(this.config), { recursive: true });
    for (const name of (await readdir(volumesDir(this.config))).sort()) {
      const vlog = this.log.child({ volume: name });
      try {
        const lazy = new LazyFetcher();
        const volume = await Volume.open(this.localDir(name), { logger: vlog, fetcher: lazy });
        const baseId = volume.baseSnapshot;
        if (baseId) lazy.resolve(async () => treeFetcher(this.repo, await this.baseOf(name, baseId)));
        // The parent is read from the store when the next snapshot needs it: a volume
        // comes back (and is served) even while the store is unreachable.
        const parentId = await readFile(join(this.localDir(name), LAST_SNAPSHOT_FILE), 'utf8').then((x) => x.trim() || undefined, () => undefined);
        const a: Attached = { volume, generation: volume.generation, qmp: undefined, qga: undefined, parent: null, parentId, job: undefined };
        this.attached.set(name, a);
        if (baseId) await this.resumeFill(name, a, baseId);
        vlog.info({ length: volume.length, recovery: volume.recovery }, 'volume reattached');
      } catch (err) {
        // One damaged volume must not take the others down.
        vlog.error({ err, code: codeOf(err) }, 'volume cannot be opened; not served');
      }
    }
  }

  async createVolume(req: { name: unknown; size: unknown; clusterSize?: unknown; region?: unknown; from?: unknown }): Promise<VolumeView> {
    const name = parseVolumeName(req.name);
    if (req.size === undefined && req.from === undefined) throw new IslandError('INVALID_ARGUMENT', 'a volume needs a size (or a snapshot to start from)');
    let virtualSize = req.size === undefined ? 0 : parseVolumeSize(req.size as string | number);
    let clusterSize = req.clusterSize === undefined ? DEFAULT_CLUSTER_SIZE : parseClusterSize(req.clusterSize as string | number);
    if (virtualSize > qcow2MaxVirtualSize(clusterSize)) {
      throw new IslandError('INVALID_ARGUMENT', `volume size ${virtualSize} is larger than a qcow2 image with ${clusterSize}-byte clusters can address (${qcow2MaxVirtualSize(clusterSize)})`);
    }
    if (req.region !== undefined && req.region !== this.repo.region) {
      throw new IslandError('INVALID_ARGUMENT', `unknown region ${JSON.stringify(String(req.region)).slice(0, 40)} (configured: ${this.repo.region})`);
    }
    if (await this.repo.getVolume(name)) throw new IslandError('ALREADY_EXISTS', `volume ${name} already exists`, { details: { volume: name } });
    let source: VolumeRecord['source'] = null;
    if (req.from !== undefined) {
      const src = await restoreSource(this.repo, req.from);
      if (req.size !== undefined && virtualSize !== src.virtualSize) {
        throw new IslandError('INVALID_ARGUMENT', `snapshot ${src.manifest.id} holds a ${src.virtualSize}-byte image; create the volume with that size (or no --size) and grow it afterwards with qemu-img resize`, { details: { snapshot: src.manifest.id } });
      }
      virtualSize = src.virtualSize;
      clusterSize = src.manifest.clusterSize;
      source = { volume: src.manifest.volume, id: src.manifest.id };
      // Until the new volume has a snapshot of its own, the source holds its only copy.
      const now = this.repo.now();
      await this.repo.putPin({ id: this.repo.ulid(), snapshot: source.id, volume: source.volume, holder: 'clone', host: this.repo.host, created: now, expires: now + CLONE_PIN_MS });
    }
    const rec: VolumeRecord = { name, virtualSize, clusterSize, region: this.repo.region, created: this.repo.now(), source, status: 'available', host: null, generation: 0, revision: 1 };
    await this.repo.putVolume(rec);
    this.log.info({ volume: name, virtualSize, clusterSize, source }, 'volume created');
    return this.view(rec);
  }

  private async hasOwnSnapshot(name: string): Promise<boolean> {
    for await (const o of listAll(this.repo.store, keys.manifestsPrefix(name))) if (parseManifestKey(o.key)) return true;
    return false;
  }

  private async record(name: string): Promise<VolumeRecord> {
    const rec = await this.repo.getVolume(parseVolumeName(name));
    if (!rec) throw new IslandError('NOT_FOUND', `no volume named ${name}`, { details: { volume: name } });
    return rec;
  }

  view(rec: VolumeRecord): VolumeView {
    const a = this.attached.get(rec.name);
    const v: VolumeView = {
      name: rec.name,
      virtualSize: rec.virtualSize,
      clusterSize: rec.clusterSize,
      region: rec.region,
      created: new Date(rec.created).toISOString(),
      status: rec.status,
      host: rec.host,
      generation: rec.generation,
      source: rec.source,
    };
    if (a) {
      const s = a.volume.stats();
      v.local = { file: join(this.config.mount, `${rec.name}.qcow2`), length: a.volume.length, openHandles: this.openHandles(rec.name), dirtyClusters: s.dirtyClusters, recovery: a.volume.recovery, fill: a.fill ? fillView(a.fill) : null };
    }
    return v;
  }

  async showVolume(name: string): Promise<VolumeView> {
    return this.view(await this.record(name));
  }

  async listVolumes(): Promise<VolumeView[]> {
    const out: VolumeView[] = [];
    for await (const o of listAll(this.repo.store, keys.volumesPrefix)) {
      const rec = await this.repo.getVolume(o.key.slice(keys.volumesPrefix.length)).catch((err: unknown) => {
        this.log.warn({ key: o.key, code: codeOf(err) }, 'unreadable catalog record');
        return undefined;
      });
      if (rec) out.push(this.view(rec));
    }
    return out;
  }

  async deleteVolume(name: string): Promise<void> {
    const rec = await this.record(name);
    if (this.attached.has(rec.name) || rec.status === 'attached') {
      throw new IslandError('BUSY', `volume ${rec.name} is attached${rec.host ? ` on ${rec.host}` : ''}; detach it first`, { details: { volume: rec.name, host: rec.host } });
    }
    await this.repo.store.delete(keys.volume(rec.name));
    await rm(this.keptDir(rec.name), { recursive: true, force: true });
    if (rec.source && !(await this.hasOwnSnapshot(rec.name))) await this.releaseClonePin(rec.source.id);
    this.log.info({ volume: rec.name }, 'volume deleted (its snapshots remain)');
  }

  private async exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy.has(name)) throw new IslandError('BUSY', `volume ${name} has an attach or detach in progress`, { details: { volume: name } });
    this.busy.add(name);
    try {
      return await fn();
    } finally {
      this.busy.delete(name);
    }
  }

  async attach(name: string, req: AttachRequest = {}): Promise<VolumeView> {
    const rec = await this.record(name);
    return this.exclusive(rec.name, async () => {
      if (this.attached.has(rec.name)) throw new IslandError('BUSY', `volume ${rec.name} is already attached on this host`, { details: { volume: rec.name } });
      const att = await acquireGeneration(this.repo, rec.name, { force: req.force ?? false });
      if (att.tookOverFrom) this.log.warn({ volume: rec.name, from: att.tookOverFrom }, 'forced attach: the previous host must be fenced');
      const dir = this.localDir(rec.name);
      const kept = this.keptDir(rec.name);
      let volume: Volume;
      const vlog = this.log.child({ volume: rec.name });
      let base = att.base;
      if (base && !(await holdsLocally([dir, kept], base.id))) {
        // Refused before anything local changes; the generation just taken is handed back.
        await checkUndamaged(this.repo, base).catch(async (err: unknown) => {
          await releaseGeneration(this.repo, rec.name, att.generation).catch(() => undefined);
          throw err;
        });
      }
      if (!base && rec.source) {
        // A volume created from another volume's snapshot, with no snapshot of its own yet.
        base = (await this.repo.getManifest(rec.source.volume, rec.source.id)) ?? null;
        if (!base) throw new IslandError('NOT_FOUND', `the snapshot ${rec.source.id} that ${rec.name} was created from is gone`, { details: { volume: rec.name, snapshot: rec.source.id } });
        await checkRestorable(this.repo, base);
      }
      let fillFrom: string | undefined;
      if (await exists(kept)) {
        const last = await readFile(join(kept, LAST_SNAPSHOT_FILE), 'utf8').then((x) => x.trim(), () => '');
        if (base && last !== base.id && base.volume === rec.name) {
          // Something newer exists than what this copy holds: restore from it instead.
          vlog.warn({ kept: last || null, latest: base.id }, 'the kept local copy is older than the latest snapshot; dropping it');
          await rm(kept, { recursive: true, force: true });
        } else {
          await rename(kept, dir);
        }
      }
      if (await exists(dir)) {
        const lazy = new LazyFetcher();
        volume = await Volume.open(dir, { logger: vlog, generation: att.generation, fetcher: lazy });
        const baseId = volume.baseSnapshot;
        if (baseId) {
          lazy.resolve(async () => treeFetcher(this.repo, await this.baseOf(rec.name, baseId)));
          fillFrom = baseId;
        }
      } else if (base) {
        await this.pinBase(base);
        volume = await Volume.create(dir, {
          name: rec.name,
          virtualSize: rec.virtualSize,
          clusterSize: base.clusterSize,
          generation: att.generation,
          baseSnapshot: base.id,
          baseLength: base.imageLength,
          fetcher: treeFetcher(this.repo, base),
          logger: vlog,
        });
        await this.recordParent(dir, base);
        fillFrom = base.id;
        vlog.info({ base: base.id, imageLength: base.imageLength }, 'attached from snapshot: clusters are fetched on first touch');
      } else {
        volume = await Volume.create(dir, { name: rec.name, virtualSize: rec.virtualSize, clusterSize: rec.clusterSize, generation: att.generation, logger: vlog });
      }
      const parent = await this.localParent(dir, rec.name, volume);
      const a: Attached = { volume, generation: att.generation, qmp: req.qmp, qga: req.qga, parent, job: undefined };
      this.attached.set(rec.name, a);
      if (fillFrom) await this.resumeFill(rec.name, a, fillFrom, req);
      vlog.info({ generation: att.generation }, 'attached');
      return this.showVolume(rec.name);
    });
  }

  async detach(name: string, req: { force?: boolean; keepLocal?: boolean } = {}): Promise<VolumeView> {
    const vname = parseVolumeName(name);
    return this.exclusive(vname, async () => {
      const a = this.attached.get(vname);
      if (!a) throw new IslandError('NOT_FOUND', `volume ${vname} is not attached on this host`, { details: { volume: vname } });
      const open = this.openHandles(vname);
      if (open > 0 && !req.force) throw new IslandError('BUSY', `${vname}.qcow2 is open (${open} handle${open > 1 ? 's' : ''}); close it or detach with --force`, { details: { volume: vname, open } });
      // The final snapshot: the volume's last state goes to the store before the host
      // lets go of it (its manifest is written before the detach record).
      const last = await this.snapshotOne(vname, 'crash');
      this.log.info({ volume: vname, snapshot: last.id }, 'final snapshot before detach');
      this.attached.delete(vname);
      const base = a.volume.baseSnapshot;
      await this.stopFill(a);
      await a.volume.close();
      if (req.keepLocal) {
        await mkdir(join(this.config.dataDir, 'kept'), { recursive: true });
        await rename(this.localDir(vname), this.keptDir(vname));
      } else {
        await rm(this.localDir(vname), { recursive: true, force: true });
      }
      await releaseGeneration(this.repo, vname, a.generation);
      // The final snapshot holds everything the base gave: this host's pins on it can go.
      if (base) await this.releasePins(base);
      this.log.info({ volume: vname, keptLocal: req.keepLocal === true }, 'detached');
      return this.showVolume(vname);
    });
  }

  status(): { host: string; mount: string; attached: number; gc: GcView | null; copies: CopyView[]; volumes: { name: string; length: number; openHandles: number; dirtyClusters: number; generation: number; lastSnapshot: string | null; snapshot: { done: number; total: number; seconds: number } | null; fill: FillView | null }[] } {
    return {
      host: this.config.hostId,
      mount: this.config.mount,
      attached: this.attached.size,
      gc: this.gcStatus(),
      copies: this.copies.views(),
      volumes: [...this.attached].map(([name, a]) => ({
        name,
        length: a.volume.length,
        openHandles: this.openHandles(name),
        dirtyClusters: a.volume.stats().dirtyClusters,
        generation: a.generation,
        lastSnapshot: a.parent?.id ?? null,
        snapshot: a.job ? { done: a.job.done, total: a.job.total, seconds: (Date.now() - a.job.started) / 1000 } : null,
        fill: a.fill ? fillView(a.fill) : null,
      })),
    };
  }

  /** Snapshot attached volumes (several volumes of one VM are sealed back to back). */
  async createSnapshots(req: { volumes: unknown; consistency?: unknown; wait?: unknown; qmp?: unknown; qga?: unknown }): Promise<{ snapshots: SnapshotView[] } | { started: string[] }> {
    if (!Array.isArray(req.volumes) || req.volumes.length === 0 || req.volumes.length > 64) throw new IslandError('INVALID_ARGUMENT', 'volumes must be a list of 1 to 64 volume names');
    const names = req.volumes.map((v) => parseVolumeName(v));
    for (const n of names) {
      const a = this.attached.get(n);
      if (!a) throw new IslandError('NOT_FOUND', `volume ${n} is not attached on this host`, { details: { volume: n } });
      if (a.job) throw new IslandError('BUSY', `a snapshot of ${n} is already in progress`, { details: { volume: n } });
    }
    const qmpOf = (n: string): string | undefined => (typeof req.qmp === 'string' ? req.qmp : this.attached.get(n)?.qmp);
    const qgaOf = (n: string): string | undefined => (typeof req.qga === 'string' ? req.qga : this.attached.get(n)?.qga);
    const consistency = req.consistency ?? (names.every((n) => qmpOf(n)) ? 'flush' : 'crash');
    if (consistency !== 'crash' && consistency !== 'flush' && consistency !== 'freeze') {
      throw new IslandError('INVALID_ARGUMENT', `consistency must be crash, flush or freeze, got ${JSON.stringify(String(consistency)).slice(0, 30)}`);
    }
    let jobs: Promise<Manifest>[];
    if (consistency === 'crash') {
      jobs = names.map((n) => this.snapshotOne(n, 'crash'));
    } else {
      const missing = names.filter((n) => !qmpOf(n));
      if (missing.length) throw new IslandError('INVALID_ARGUMENT', `${consistency} consistency needs QEMU's QMP socket (attach --qmp or snapshot --qmp) for ${missing.join(', ')}`);
      const noAgent = consistency === 'freeze' ? names.filter((n) => !qgaOf(n)) : [];
      if (noAgent.length) throw new IslandError('INVALID_ARGUMENT', `freeze consistency needs the guest agent's socket (attach --qga or snapshot --qga) for ${noAgent.join(', ')}`);
      // The volumes of one VM (one QMP socket) are sealed in one pause.
      const groups = new Map<string, string[]>();
      for (const n of names) groups.set(qmpOf(n) as string, [...(groups.get(qmpOf(n) as string) ?? []), n]);
      jobs = [];
      for (const [path, vols] of groups) {
        const { seals, pauseMs } = consistency === 'freeze' ? await this.frozenSeal(qgaOf(vols[0] as string) as string, path, vols) : await this.pausedSeal(path, vols);
        const level = consistency === 'freeze' ? 'guest-frozen' : 'qemu-flushed';
        for (const [i, n] of vols.entries()) jobs.push(this.snapshotOne(n, level, seals[i], pauseMs));
      }
    }
    if (req.wait === false) {
      for (const j of jobs) j.catch(() => undefined);
      return { started: names };
    }
    const ms = await Promise.all(jobs);
    return { snapshots: ms.map((m) => snapshotView(m, false)) };
  }

  private qmpSessions = new Map<string, QmpSession>();

  /** One session per QMP socket path, connected on demand (QEMU may start later). */
  qmpSession(path: string): QmpSession {
    let s = this.qmpSessions.get(path);
    if (!s) {
      s = new QmpSession(path, { logger: this.log.child({ qmp: path }) });
      s.on('shutdown', () => this.onVmShutdown(path));
      this.qmpSessions.set(path, s);
    }
    return s;
  }

  /** QEMU shut down: the volumes it used get a final snapshot (QEMU flushed before quitting). */
  private onVmShutdown(path: string): void {
    for (const [name, a] of this.attached) {
      if (a.qmp !== path) continue;
      this.log.info({ volume: name }, 'VM shut down: final snapshot');
      this.snapshotOne(name, 'qemu-flushed').catch(() => undefined);
    }
  }

  /**
   * stop (QEMU drains and flushes its caches), seal every volume, cont: the pause is
   * bounded by QMP timeouts, and cont is sent on every path once stop was sent.
   */
  private async pausedSeal(path: string, vols: string[]): Promise<{ seals: Seal[]; pauseMs: number }> {
    const q = this.qmpSession(path);
    for (const n of vols) await this.attached.get(n)?.volume.flushBitmaps();
    const t0 = performance.now();
    let seals: Seal[] = [];
    try {
      await q.stop({ timeoutMs: 5_000 });
      seals = await Promise.all(vols.map((n) => (this.attached.get(n) as Attached).volume.seal()));
    } finally {
      await this.resume(q);
    }
    // Whole milliseconds, rounded up (the manifest stores integers).
    return { seals, pauseMs: Math.ceil(performance.now() - t0) };
  }

  private agents = new Map<string, GuestAgent>();

  private guestAgent(path: string): GuestAgent {
    let a = this.agents.get(path);
    if (!a || a.closed) {
      a = new GuestAgent(path, { logger: this.log.child({ qga: path }) });
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
      this.log.info({ qga, filesystems: frozen, volumes: vols }, 'guest filesystems frozen');
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
        this.log.error({ err, qga: agent.path, attempt }, 'thaw failed: guest filesystems may still be frozen');
      }
    }
  }

  private async resume(q: QmpSession): Promise<void> {
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        await q.cont({ timeoutMs: 5_000 });
        return;
      } catch (err) {
        this.log.error({ err, qmp: q.path, attempt }, 'cont failed: the VM may still be paused');
      }
    }
  }

  private snapshotOne(name: string, consistency: Manifest['consistency'], seal?: Seal, pauseMs?: number): Promise<Manifest> {
    const a = this.attached.get(name);
    if (!a) return Promise.reject(new IslandError('NOT_FOUND', `volume ${name} is not attached on this host`));
    if (a.job) return a.job.promise;
    const job: SnapshotJob = { volume: name, started: Date.now(), done: 0, total: 0, promise: Promise.resolve(null as unknown as Manifest) };
    job.promise = (async () => {
      try {
        if (a.parentId !== undefined) {
          a.parent = await this.parentById(name, a.parentId, a.volume);
          a.parentId = undefined;
        }
        const m = await takeSnapshot(this.repo, this.encodePool(), {
          volume: a.volume,
          generation: a.generation,
          parent: a.parent?.volume === name ? a.parent : null,
          from: a.parent && a.parent.volume !== name ? a.parent : null,
          consistency,
          seal,
          pauseMs: pauseMs ?? null,
          windowMs: WINDOW_MS,
          onProgress: (done, total) => {
            job.done = done;
            job.total = total;
          },
        });
        const from = a.parent && a.parent.volume !== name ? a.parent : null;
        a.parent = m;
        await this.recordParent(this.localDir(name), m);
        // The first own snapshot of a clone holds what it needs of its source: unpin it.
        if (from) await this.releaseClonePin(from.id);
        this.log.info({ volume: name, snapshot: m.id, stats: m.stats, warnings: m.warnings }, 'snapshot committed');
        return m;
      } catch (err) {
        this.log.error({ volume: name, err, code: codeOf(err) }, 'snapshot failed; its changes go into the next one');
        throw err;
      } finally {
        a.job = undefined;
      }
    })();
    a.job = job;
    return job.promise;
  }

  async listSnapshots(volume?: string): Promise<SnapshotView[]> {
    const out: SnapshotView[] = [];
    const prefix = volume === undefined ? keys.manifestsPrefix() : keys.manifestsPrefix(parseVolumeName(volume));
    const damaged = new Set<string>();
    for await (const o of listAll(this.repo.store, keys.damagePrefix)) damaged.add(o.key.slice(keys.damagePrefix.length));
    for await (const o of listAll(this.repo.store, prefix)) {
      const k = parseManifestKey(o.key);
      if (!k) continue;
      const m = await this.repo.getManifest(k.volume, k.id).catch(() => undefined);
      if (m) out.push(snapshotView(m, (await this.repo.getTombstone(m.id)) !== undefined, damaged.has(m.id)));
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async showSnapshot(id: unknown): Promise<SnapshotView> {
    const sid = parseSnapshotId(id);
    const m = await findSnapshot(this.repo, sid);
    if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${sid}`, { details: { snapshot: sid } });
    return snapshotView(m, (await this.repo.getTombstone(sid)) !== undefined, (await this.repo.getDamage(sid).catch(() => undefined)) !== undefined);
  }

  /** Tombstone snapshots (GC frees their data later). */
  async deleteSnapshots(req: { ids: unknown; force?: unknown }): Promise<{ deleted: string[] }> {
    if (!Array.isArray(req.ids) || req.ids.length === 0 || req.ids.length > 1000) throw new IslandError('INVALID_ARGUMENT', 'ids must be a list of 1 to 1000 snapshot ids');
    const ids = [...new Set(req.ids.map((i) => parseSnapshotId(i)))];
    // Check every id before writing any tombstone, so a typo in a list deletes nothing.
    const found: Manifest[] = [];
    for (const id of ids) {
      const m = await findSnapshot(this.repo, id);
      if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${id}`, { details: { snapshot: id } });
      if (await this.repo.getTombstone(id)) throw new IslandError('SNAPSHOT_DELETED', `snapshot ${id} is already deleted`, { details: { snapshot: id } });
      if (this.attached.get(m.volume)?.job) throw new IslandError('BUSY', `a snapshot of ${m.volume} is in progress; delete after it commits`, { details: { snapshot: id } });
      found.push(m);
    }
    const deleted: string[] = [];
    for (const m of found) {
      const id = m.id;
      await deleteSnapshot(this.repo, m.volume, id, { force: req.force === true, reason: 'deleted by request' });
      deleted.push(id);
      this.log.info({ snapshot: id, volume: m.volume, forced: req.force === true }, 'snapshot deleted (tombstone written)');
    }
    return { deleted };
  }

  /**
   * Copy a snapshot to another configured region (docs/protocols.md, "Copy"): with wait,
   * resolves when the copy committed there; without, once it started.
   */
  async copySnapshot(req: { id: unknown; to: unknown; wait?: boolean }): Promise<CopyOutcome | { started: CopyView }> {
    if (req.to === undefined) throw new IslandError('INVALID_ARGUMENT', 'a copy needs a target region (--to REGION)');
    const job = await this.copies.start(req.id, req.to);
    if (req.wait === false) return { started: this.copies.views().find((v) => v.snapshot === job.snapshot && v.to === job.to) as CopyView };
    return copyOutcome(job, await job.promise);
  }

  /** Tombstone the snapshots of a volume that a retention policy does not keep. */
  async pruneSnapshots(req: { volume: unknown; keep: unknown; dryRun?: unknown }): Promise<PruneReport> {
    const volume = parseVolumeName(req.volume);
    if (typeof req.keep !== 'object' || req.keep === null || Array.isArray(req.keep)) throw new IslandError('INVALID_ARGUMENT', 'keep must be an object of retention rules, e.g. {"last": 3, "daily": 7}');
    const policy = parseRetentionPolicy(req.keep as Record<string, unknown>);
    const dryRun = req.dryRun === true;
    if (!dryRun && this.attached.get(volume)?.job) throw new IslandError('BUSY', `a snapshot of ${volume} is in progress; prune after it commits`, { details: { volume } });
    const report = await pruneSnapshots(this.repo, volume, policy, { dryRun });
    // Snapshots outlive their volume, so a volume without a record may still be pruned.
    if (report.kept.length + report.deleted.length + report.skipped.length === 0 && !(await this.repo.getVolume(volume))) {
      throw new IslandError('NOT_FOUND', `no volume ${volume} and no snapshots of it`, { details: { volume } });
    }
    this.log.info({ volume, dryRun, policy, kept: report.kept.length, deleted: report.deleted.map((d) => d.id), skipped: report.skipped.map((s) => ({ id: s.id, code: s.code })) }, 'snapshots pruned');
    return report;
  }

  async gc(req: { dryRun?: unknown }): Promise<GcReport> {
    if (this.gcJob) throw new IslandError('BUSY', `a GC is already running on this host (${this.gcJob.phase}, started ${new Date(this.gcJob.started).toISOString()})`);
    const dryRun = req.dryRun === true;
    const job: GcJob = { dryRun, started: Date.now(), phase: 'tombstones', done: 0, total: null };
    this.gcJob = job;
    try {
      const report = await collectGarbage(this.repo, {
        graceMs: this.config.gcGraceMs,
        dryRun,
        onProgress: (phase, done, total) => {
          job.phase = phase;
          job.done = done;
          job.total = total ?? null;
        },
      });
      const { deletedPackKeys: _keys, topPartlyDead: _top, ...summary } = report;
      this.log.info(summary, 'gc finished');
      return report;
    } finally {
      this.gcJob = undefined;
    }
  }

  gcStatus(): GcView | null {
    const j = this.gcJob;
    return j ? { dryRun: j.dryRun, phase: j.phase, done: j.done, total: j.total, seconds: (Date.now() - j.started) / 1000 } : null;
  }

  // ---- the files the mount shows -------------------------------------------------------

  /** Names of the files on the mount (without .qcow2): attached volumes, mounted snapshots. */
  fileNames(): string[] {
    return [...this.attached.keys(), ...this.views.keys()];
  }

  fileVolume(name: string): FuseVolume | undefined {
    return this.attached.get(name)?.volume ?? this.views.get(name)?.view;
  }

  isReadOnly(name: string): boolean {
    return this.views.has(name);
  }

  /**
   * Show a snapshot read-only on the mount as `<volume>@<snapshot>.qcow2`, fetched lazily.
   * It is pinned while mounted, so GC keeps its data even if it is deleted meanwhile.
   */
  async mountSnapshot(id: unknown): Promise<{ snapshot: string; volume: string; file: string }> {
    const sid = parseSnapshotId(id);
    const m = await findSnapshot(this.repo, sid);
    if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${sid}`, { details: { snapshot: sid } });
    const name = `${m.volume}@${m.id}`;
    const file = join(this.config.mount, `${name}.qcow2`);
    if (this.views.has(name)) return { snapshot: m.id, volume: m.volume, file };
    await checkRestorable(this.repo, m);
    const now = this.repo.now();
    const pin: Pin = { id: this.repo.ulid(), snapshot: m.id, volume: m.volume, holder: 'mount', host: this.repo.host, created: now, expires: now + PIN_TTL_MS };
    await this.repo.putPin(pin);
    this.views.set(name, { view: new SnapshotImage(this.repo, m), pin });
    this.log.info({ snapshot: m.id, volume: m.volume, file }, 'snapshot mounted read-only');
    return { snapshot: m.id, volume: m.volume, file };
  }

  async unmountSnapshot(id: unknown, req: { force?: boolean } = {}): Promise<{ unmounted: string }> {
    const sid = parseSnapshotId(id);
    const name = [...this.views.keys()].find((n) => n.endsWith(`@${sid}`));
    if (name === undefined) throw new IslandError('NOT_FOUND', `snapshot ${sid} is not mounted`, { details: { snapshot: sid } });
    if (this.openHandles(name) > 0 && !req.force) throw new IslandError('BUSY', `${name}.qcow2 is open; close it first (or --force)`, { details: { snapshot: sid } });
    const v = this.views.get(name)!;
    this.views.delete(name);
    await this.repo.deletePin(v.pin).catch((err: unknown) => this.log.warn({ err, snapshot: sid }, 'mount pin not removed; it expires on its own'));
    return { unmounted: sid };
  }

  async closeAll(): Promise<void> {
    for (const [name, v] of this.views) {
      this.views.delete(name);
      await this.repo.deletePin(v.pin).catch(() => undefined);
    }
    for (const q of this.qmpSessions.values()) await q.close().catch(() => undefined);
    for (const g of this.agents.values()) await g.close().catch(() => undefined);
    await this.pool?.close();
    await this.copies.close();
    for (const [name, a] of this.attached) {
      await this.stopFill(a);
      await a.volume.close().catch((err: unknown) => this.log.error({ volume: name, err }, 'volume close failed'));
    }
  }
}

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

/** Write a small file atomically and durably (temp file, fsync, rename). */
async function writeDurable(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

export function fillView(f: FillJob): FillView {
  return { base: f.base, state: f.state, ...f.progress };
}

/** Whether one of these local copies already holds snapshot `id` (its last snapshot). */
async function holdsLocally(dirs: string[], id: string): Promise<boolean> {
  for (const d of dirs) {
    const last = await readFile(join(d, LAST_SNAPSHOT_FILE), 'utf8').then((x) => x.trim(), () => '');
    if (last === id) return true;
  }
  return false;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

export { parseHostId };
