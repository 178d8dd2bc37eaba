/**
 * The files the mount shows: one `<volume>.qcow2` per volume attached here, read-write, and
 * one `<volume>@<snapshot>.qcow2` per snapshot mounted read-only (fetched lazily, pinned
 * while mounted so GC keeps its data even if it is deleted meanwhile).
 */
import { IslandError } from '../errors.js';
import { parseSnapshotId } from '../format/names.js';
import type { Pin } from '../format/records.js';
import { findSnapshot } from '../repo/snapshots.js';
import { SnapshotImage } from '../snapshot/view.js';
import type { FuseVolume } from '../fuse/adapter.js';
import { PIN_TTL_MS, mountFile, type DaemonContext } from './context.js';
import { checkRestorable } from './sources.js';
import { ObservedMap } from '../util/observed-map.js';

/** A snapshot shown read-only on the mount, and the pin that keeps its data. */
interface MountedSnapshot {
  image: SnapshotImage;
  pin: Pin;
}

export class MountTable {
  /** Snapshots mounted read-only, by file name (`<volume>@<snapshot>`). */
  private readonly snapshots = new ObservedMap<string, MountedSnapshot>();
  /** Called when a snapshot view appears or goes (see Service.onFilesChanged). */
  set onChange(fn: () => void) {
    this.snapshots.onChange = fn;
  }

  constructor(private readonly ctx: DaemonContext) {}

  /** Names of the files on the mount (without .qcow2): attached volumes, mounted snapshots. */
  names(): string[] {
    return [...this.ctx.attached.keys(), ...this.snapshots.keys()];
  }

  get(name: string): FuseVolume | undefined {
    return this.ctx.attached.get(name)?.volume ?? this.snapshots.get(name)?.image;
  }

  /** Mounted snapshots, and attached volumes not (or no longer) confirmed writable. */
  isReadOnly(name: string): boolean {
    const a = this.ctx.attached.get(name);
    if (a) return a.access.mode !== 'read-write';
    return this.snapshots.has(name);
  }

  async mountSnapshot(id: unknown): Promise<{ snapshot: string; volume: string; file: string }> {
    const repo = this.ctx.repo;
    const sid = parseSnapshotId(id);
    const m = await findSnapshot(repo, sid);
    if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${sid}`, { details: { snapshot: sid } });
    const name = `${m.volume}@${m.id}`;
    const file = mountFile(this.ctx.config, name);
    if (this.snapshots.has(name)) return { snapshot: m.id, volume: m.volume, file };
    await checkRestorable(repo, m);
    const now = repo.now();
    const pin: Pin = { id: repo.ulid(), snapshot: m.id, volume: m.volume, holder: 'mount', host: repo.host, created: now, expires: now + PIN_TTL_MS };
    await repo.putPin(pin);
    this.snapshots.set(name, { image: new SnapshotImage(repo, m), pin });
    this.ctx.log.info({ snapshot: m.id, volume: m.volume, file }, 'snapshot mounted read-only');
    return { snapshot: m.id, volume: m.volume, file };
  }

  async unmountSnapshot(id: unknown, req: { force?: boolean } = {}): Promise<{ unmounted: string }> {
    const sid = parseSnapshotId(id);
    const name = [...this.snapshots.keys()].find((n) => n.endsWith(`@${sid}`));
    if (name === undefined) throw new IslandError('NOT_FOUND', `snapshot ${sid} is not mounted`, { details: { snapshot: sid } });
    if (this.ctx.openHandles(name) > 0 && !req.force) throw new IslandError('BUSY', `${name}.qcow2 is open; close it first (or --force)`, { details: { snapshot: sid } });
    const v = this.snapshots.get(name) as MountedSnapshot;
    this.snapshots.delete(name);
    await this.ctx.repo.deletePin(v.pin).catch((err: unknown) => this.ctx.log.warn({ err, snapshot: sid }, 'mount pin not removed; it expires on its own'));
    return { unmounted: sid };
  }

  /** Unmount every snapshot (the daemon stops); their pins go, or expire on their own. */
  async closeAll(): Promise<void> {
    for (const [name, v] of this.snapshots) {
      this.snapshots.delete(name);
      await this.ctx.repo.deletePin(v.pin).catch(() => undefined);
    }
  }
}
