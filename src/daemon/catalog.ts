/**
 * The volume catalog, as the daemon serves it: create (from nothing or from a snapshot),
 * show, list and delete volume records. A record is the store's; what this host knows of a
 * volume attached here (its file, handles, fill) is added to the view.
 */
import { IslandError, codeOf } from '../errors.js';
import { DEFAULT_CLUSTER_SIZE, parseClusterSize, parseVolumeName, parseVolumeSize } from '../format/names.js';
import type { VolumeRecord } from '../format/records.js';
import { qcow2MaxVirtualSize } from '../format/qcow2.js';
import { keys } from '../repo/keys.js';
import { listManifestKeys } from '../repo/manifests.js';
import { listAll } from '../store/types.js';
import { CLONE_PIN_MS, fillView, mountFile, type DaemonContext, type VolumeView } from './context.js';
import { restoreSource } from './sources.js';

export class Catalog {
  constructor(private readonly ctx: DaemonContext) {}

  async create(req: { name: unknown; size: unknown; clusterSize?: unknown; region?: unknown; from?: unknown }): Promise<VolumeView> {
    const repo = this.ctx.repo;
    const name = parseVolumeName(req.name);
    if (req.size === undefined && req.from === undefined) throw new IslandError('INVALID_ARGUMENT', 'a volume needs a size (or a snapshot to start from)');
    let virtualSize = req.size === undefined ? 0 : parseVolumeSize(req.size as string | number);
    let clusterSize = req.clusterSize === undefined ? DEFAULT_CLUSTER_SIZE : parseClusterSize(req.clusterSize as string | number);
    if (virtualSize > qcow2MaxVirtualSize(clusterSize)) {
      throw new IslandError('INVALID_ARGUMENT', `volume size ${virtualSize} is larger than a qcow2 image with ${clusterSize}-byte clusters can address (${qcow2MaxVirtualSize(clusterSize)})`);
    }
    if (req.region !== undefined && req.region !== repo.region) {
      throw new IslandError('INVALID_ARGUMENT', `unknown region ${JSON.stringify(String(req.region)).slice(0, 40)} (configured: ${repo.region})`);
    }
    if (await repo.getVolume(name)) throw new IslandError('ALREADY_EXISTS', `volume ${name} already exists`, { details: { volume: name } });
    let source: VolumeRecord['source'] = null;
    if (req.from !== undefined) {
      const src = await restoreSource(repo, req.from);
      // A volume may be larger than its snapshot (its first attach grows the image, resize.ts),
      // never smaller: the snapshot's data may lie past a smaller end.
      if (req.size !== undefined && virtualSize < src.virtualSize) {
        throw new IslandError('INVALID_ARGUMENT', `snapshot ${src.manifest.id} holds a ${src.virtualSize}-byte image; a volume made from it needs at least that size (${virtualSize} asked)`, { details: { snapshot: src.manifest.id, size: src.virtualSize, requested: virtualSize } });
      }
      if (req.size === undefined) virtualSize = src.virtualSize;
      clusterSize = src.manifest.clusterSize;
      if (virtualSize > qcow2MaxVirtualSize(clusterSize)) {
        throw new IslandError('INVALID_ARGUMENT', `volume size ${virtualSize} is larger than a qcow2 image with the snapshot's ${clusterSize}-byte clusters can address (${qcow2MaxVirtualSize(clusterSize)})`, { details: { snapshot: src.manifest.id } });
      }
      source = { volume: src.manifest.volume, id: src.manifest.id };
      // Until the new volume has a snapshot of its own, the source holds its only copy.
      const now = repo.now();
      await repo.putPin({ id: repo.ulid(), snapshot: source.id, volume: source.volume, holder: 'clone', host: repo.host, created: now, expires: now + CLONE_PIN_MS });
    }
    const rec: VolumeRecord = { name, virtualSize, clusterSize, region: repo.region, created: repo.now(), source, status: 'available', host: null, generation: 0, revision: 1 };
    await repo.putVolume(rec);
    this.ctx.log.info({ volume: name, virtualSize, clusterSize, source }, 'volume created');
    return this.view(rec);
  }

  /** The catalog record of a volume (NOT_FOUND when there is none). */
  async record(name: string): Promise<VolumeRecord> {
    const rec = await this.ctx.repo.getVolume(parseVolumeName(name));
    if (!rec) throw new IslandError('NOT_FOUND', `no volume named ${name}`, { details: { volume: name } });
    return rec;
  }

  view(rec: VolumeRecord): VolumeView {
    const a = this.ctx.attached.get(rec.name);
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
    if (this.ctx.detaching.has(rec.name)) v.detaching = true;
    if (a) {
      const s = a.volume.stats();
      v.local = { file: mountFile(this.ctx.config, rec.name), length: a.volume.length, openHandles: this.ctx.openHandles(rec.name), dirtyClusters: s.dirtyClusters, recovery: a.volume.recovery, fill: a.fill ? fillView(a.fill) : null, access: { ...a.access } };
    }
    return v;
  }

  async show(name: string): Promise<VolumeView> {
    return this.view(await this.record(name));
  }

  async list(): Promise<VolumeView[]> {
    const repo = this.ctx.repo;
    const out: VolumeView[] = [];
    for await (const o of listAll(repo.store, keys.volumesPrefix)) {
      const rec = await repo.getVolume(o.key.slice(keys.volumesPrefix.length)).catch((err: unknown) => {
        this.ctx.log.warn({ key: o.key, code: codeOf(err) }, 'unreadable catalog record');
        return undefined;
      });
      if (rec) out.push(this.view(rec));
    }
    return out;
  }

  /** Delete a volume's record (refused while attached); its snapshots remain. */
  async delete(name: string, releaseClonePin: (snapshot: string) => Promise<void>): Promise<void> {
    const rec = await this.record(name);
    if (this.ctx.attached.has(rec.name) || rec.status === 'attached') {
      throw new IslandError('BUSY', `volume ${rec.name} is attached${rec.host ? ` on ${rec.host}` : ''}; detach it first`, { details: { volume: rec.name, host: rec.host } });
    }
    await this.ctx.repo.store.delete(keys.volume(rec.name));
    await this.ctx.dirs.dropKept(rec.name);
    if (rec.source && !(await this.hasOwnSnapshot(rec.name))) await releaseClonePin(rec.source.id);
    this.ctx.log.info({ volume: rec.name }, 'volume deleted (its snapshots remain)');
  }

  private async hasOwnSnapshot(name: string): Promise<boolean> {
    for await (const _ of listManifestKeys(this.ctx.repo, name)) return true;
    return false;
  }
}
