/**
 * The daemon's operations, independent of how they are asked for (the control API and
 * tests call these). This class only composes the parts, each of which owns its state:
 *
 *   catalog.ts         volume records: create, show, list, delete
 *   attachments.ts     attach, detach, reopening volumes after a stop or crash
 *   resize.ts          growing volumes: the record, and the image through QEMU
 *   fills.ts           background fills of restored volumes, and their pins
 *   snapshot-jobs.ts   snapshots of attached volumes, with QMP and the guest agent
 *   history.ts         snapshot listing, delete, prune, copy to other regions, GC
 *   mounts.ts          the files the mount shows, and read-only snapshot mounts
 *   images.ts          image files imported into volumes and snapshots exported as images
 *   detached-snapshots.ts  snapshots of volumes attached nowhere (sharing their head's tree)
 *
 * Local directories (<dataDir>/volumes/<name>, <dataDir>/kept/<name>) are owned by
 * volume/directories.ts.
 */
import type { Logger } from 'pino';
import type { Config, WritePath } from '../config.js';
import type { Manifest } from '../format/records.js';
import type { GcReport } from '../repo/gc.js';
import type { PruneReport } from '../repo/prune.js';
import { Repository } from '../repo/repository.js';
import { openStore } from '../store/open.js';
import { LocalDirectories } from '../volume/directories.js';
import type { FuseVolume } from '../fuse/adapter.js';
import { NativeVolume } from '../volume/native-volume.js';
import { Attachments, type DetachRequest } from './attachments.js';
import { Catalog } from './catalog.js';
import { detachingView, fillView, snapshotView, type Access, type AttachRequest, type Attached, type DaemonContext, type FillView, type SnapshotView, type VolumeView } from './context.js';
import { Copies, type CopyOutcome, type CopyView, type RegionOpener } from './copies.js';
import { Fills } from './fills.js';
import { History, type GcView } from './history.js';
import { MountTable } from './mounts.js';
import { capacity, type CapacityView } from './capacity.js';
import type { DetachingView } from './context.js';
import type { ResizeOutcome, ResizeRequest } from './resize.js';
import { SnapshotJobs } from './snapshot-jobs.js';
import { Images } from './images.js';
import { revertDetached, snapshotDetached } from './detached-snapshots.js';
import { ObservedMap } from '../util/observed-map.js';

export { PIN_TTL_MS, snapshotView, fillView } from './context.js';
export type { Access, AttachRequest, Attached, FillJob, FillView, SnapshotJob, SnapshotView, VolumeView } from './context.js';
export type { GcView } from './history.js';
export type { CapacityView } from './capacity.js';
export type { DetachRequest } from './attachments.js';
export type { ResizeOutcome, ResizeRequest } from './resize.js';

export interface StatusView {
  host: string;
  mount: string;
  /** The FUSE server that serves the mount (transport: native or fuse-native) and what it tells. */
  fuse: Record<string, unknown>;
  /** The write path attached volumes open on (config writePath): native (C) or typescript. */
  writePath: WritePath;
  attached: number;
  /** Local volumes that could not be opened at start, and why: not served until settled. */
  unopened: { name: string; code: string; why: string }[];
  gc: GcView | null;
  copies: CopyView[];
  /** The data disk: its size and free space, what attached volumes may grow into and use. */
  capacity: CapacityView;
  /** Volumes detached with --no-wait whose final snapshot is still uploading (still held here). */
  detaching: DetachingView[];
  volumes: {
    name: string;
    length: number;
    openHandles: number;
    dirtyClusters: number;
    /** The write path this volume runs on (one opened before a change of writePath keeps its own). */
    writePath: WritePath;
    generation: number;
    lastSnapshot: string | null;
    snapshot: { done: number; total: number; seconds: number } | null;
    fill: FillView | null;
    access: Access;
  }[];
}

export class Service {
  readonly attached = new ObservedMap<string, Attached>();
  /** Open handles on a file of the mount (the composition root wires it to the FUSE mount). */
  openHandles: (name: string) => number = () => 0;
  /** Called when the files the mount shows change (attach, detach, snapshot mount); serve.ts wires it to the mount. */
  set onFilesChanged(fn: () => void) {
    this.attached.onChange = fn;
    this.mounts.onChange = fn;
  }
  /** Set by serve.ts once the mount is made. */
  fuseStatus: () => Record<string, unknown> = () => ({ transport: 'none' });
  /** Copies of snapshots to other regions. */
  readonly copies: Copies;
  private readonly ctx: DaemonContext;
  private readonly catalog: Catalog;
  private readonly fills: Fills;
  private readonly snapshots: SnapshotJobs;
  private readonly attachments: Attachments;
  private readonly history: History;
  private readonly mounts: MountTable;
  /** Image import and export (images.ts), built on the operations below. */
  readonly images: Images;

  constructor(
    readonly config: Config,
    readonly repo: Repository,
    readonly log: Logger,
    openRegion: RegionOpener = (name, backend) => new Repository(openStore(backend).store, { host: config.hostId, region: name }),
  ) {
    this.ctx = { config, repo, log, attached: this.attached, detaching: new Map(), unopened: new Map(), dirs: new LocalDirectories(config.dataDir), openHandles: (n) => this.openHandles(n) };
    this.copies = new Copies(config, repo, openRegion, config.commitWindowMs, log);
    this.catalog = new Catalog(this.ctx);
    this.fills = new Fills(this.ctx);
    this.history = new History(this.ctx, this.copies);
    this.snapshots = new SnapshotJobs(
      this.ctx,
      (source: Manifest) => this.history.releaseClonePin(source.id),
      (name, a, err) => this.attachments.fence(name, a, err),
    );
    this.attachments = new Attachments(this.ctx, this.fills, this.snapshots);
    this.mounts = new MountTable(this.ctx);
    this.images = new Images(this);
  }

  /** Reopen the volumes that were attached here when the daemon last stopped or crashed. */
  restore(): Promise<void> {
    return this.attachments.reopenAll();
  }

  // ---- volumes ------------------------------------------------------------------------

  createVolume(req: { name: unknown; size: unknown; clusterSize?: unknown; region?: unknown; from?: unknown }): Promise<VolumeView> {
    return this.catalog.create(req);
  }

  showVolume(name: string): Promise<VolumeView> {
    return this.catalog.show(name);
  }

  listVolumes(): Promise<VolumeView[]> {
    return this.catalog.list();
  }

  deleteVolume(name: string): Promise<void> {
    return this.catalog.delete(name, (id) => this.history.releaseClonePin(id));
  }

  /** Grow a volume (never shrink): its record, and its image when attached here (resize.ts). */
  async resizeVolume(name: string, req: ResizeRequest): Promise<VolumeView & { resize: ResizeOutcome }> {
    const outcome = await this.attachments.resize(name, req);
    return { ...(await this.catalog.show(outcome.name)), resize: outcome };
  }

  /** Revert a volume attached nowhere to one of its snapshots (detached-snapshots.ts). */
  async revertVolume(name: string, req: { snapshot: unknown }): Promise<{ volume: VolumeView; snapshot: SnapshotView }> {
    const m = await revertDetached(this.ctx, name, req.snapshot);
    return { volume: await this.catalog.show(m.volume), snapshot: snapshotView(m, false) };
  }

  async attach(name: string, req: AttachRequest = {}): Promise<VolumeView> {
    const rec = await this.catalog.record(name);
    await this.attachments.attach(rec, req);
    return this.catalog.show(rec.name);
  }

  async detach(name: string, req: DetachRequest = {}): Promise<VolumeView> {
    return this.catalog.show(await this.attachments.detach(name, req));
  }

  async status(): Promise<StatusView> {
    const cap = await capacity(this.ctx);
    return {
      host: this.config.hostId,
      mount: this.config.mount,
      fuse: this.fuseStatus(),
      writePath: this.config.writePath,
      attached: this.attached.size,
      unopened: [...this.ctx.unopened].map(([name, u]) => ({ name, ...u })),
      gc: this.history.gcStatus(),
      copies: this.copies.views(),
      capacity: cap,
      detaching: [...this.ctx.detaching].map(([name, d]) => detachingView(name, d)),
      volumes: [...this.attached].map(([name, a]) => ({
        name,
        length: a.volume.length,
        openHandles: this.openHandles(name),
        dirtyClusters: a.volume.stats().dirtyClusters,
        writePath: a.volume instanceof NativeVolume ? 'native' : 'typescript',
        generation: a.generation,
        lastSnapshot: a.parent?.id ?? null,
        snapshot: a.job ? { done: a.job.done, total: a.job.total, seconds: (Date.now() - a.job.started) / 1000 } : null,
        fill: a.fill ? fillView(a.fill) : null,
        access: { ...a.access },
      })),
    };
  }

  // ---- snapshots ----------------------------------------------------------------------

  async createSnapshots(req: { volumes: unknown; consistency?: unknown; wait?: unknown; qmp?: unknown; qga?: unknown }): Promise<{ snapshots: SnapshotView[] } | { started: string[] }> {
    // Volumes attached nowhere here get a snapshot sharing their head's tree
    // (detached-snapshots.ts): nothing writes them, so they are consistent with any moment
    // the attached ones are sealed at. Those are taken first (a volume attached on another
    // host is refused before any attached one is sealed).
    const names = Array.isArray(req.volumes) && req.volumes.length <= 64 ? (req.volumes as unknown[]) : [];
    const here = (n: unknown): boolean => typeof n === 'string' && (this.attached.has(n) || this.ctx.detaching.has(n));
    const detached = names.filter((n) => !here(n));
    if (detached.length === 0) return this.snapshots.create(req);
    const out: SnapshotView[] = [];
    for (const n of detached) out.push(snapshotView(await snapshotDetached(this.ctx, n, (source) => this.history.releaseClonePin(source.id)), false));
    const rest = names.filter(here);
    if (rest.length === 0) return req.wait === false ? { started: out.map((s) => s.volume) } : { snapshots: out };
    const r = await this.snapshots.create({ ...req, volumes: rest });
    if ('started' in r) return { started: [...out.map((s) => s.volume), ...r.started] };
    return { snapshots: [...out, ...r.snapshots] };
  }

  listSnapshots(volume?: string): Promise<SnapshotView[]> {
    return this.history.list(volume);
  }

  showSnapshot(id: unknown): Promise<SnapshotView> {
    return this.history.show(id);
  }

  deleteSnapshots(req: { ids: unknown; force?: unknown }): Promise<{ deleted: string[] }> {
    return this.history.delete(req);
  }

  copySnapshot(req: { id: unknown; to: unknown; wait?: boolean }): Promise<CopyOutcome | { started: CopyView }> {
    return this.history.copy(req);
  }

  pruneSnapshots(req: { volume: unknown; keep: unknown; dryRun?: unknown }): Promise<PruneReport> {
    return this.history.prune(req);
  }

  gc(req: { dryRun?: unknown }): Promise<GcReport> {
    return this.history.gc(req);
  }

  gcStatus(): GcView | null {
    return this.history.gcStatus();
  }

  // ---- the files the mount shows ------------------------------------------------------

  fileNames(): string[] {
    return this.mounts.names();
  }

  /** Attached volumes on the native write path (and those still uploading a detach). */
  nativeVolumes(): NativeVolume[] {
    const all = [...this.attached.values(), ...[...this.ctx.detaching.values()].map((d) => d.attached)];
    return all.map((a) => a.volume).filter((v): v is NativeVolume => v instanceof NativeVolume);
  }

  fileVolume(name: string): FuseVolume | undefined {
    return this.mounts.get(name);
  }

  isReadOnly(name: string): boolean {
    return this.mounts.isReadOnly(name);
  }

  mountSnapshot(id: unknown): Promise<{ snapshot: string; volume: string; file: string }> {
    return this.mounts.mountSnapshot(id);
  }

  unmountSnapshot(id: unknown, req: { force?: boolean } = {}): Promise<{ unmounted: string }> {
    return this.mounts.unmountSnapshot(id, req);
  }

  /** Stop everything this daemon runs; the volumes are closed cleanly. */
  async closeAll(): Promise<void> {
    this.images.close();
    await this.mounts.closeAll();
    await this.snapshots.close();
    await this.copies.close();
    await this.attachments.closeAll();
  }
}
