/**
 * Growing volumes (never shrinking: a guest's file systems end where the disk did).
 *
 * The size of a volume is its catalog record's virtualSize; the size of an image is what
 * its qcow2 header says. They differ after a detached volume grew, or after a volume was
 * created from a smaller snapshot: the next attach grows the image to the record.
 *
 * island never rewrites a qcow2 header by hand to grow an image: a larger virtual size can
 * need a larger L1 table (moved elsewhere in the file, with its refcounts), which QEMU's
 * qcow2 driver knows how to do safely. So an image grows through QEMU, writing through the
 * mount like any client (the volume engine tracks its writes, a restored volume fetches
 * what it reads):
 *
 *   nobody has the file open    `qemu-img resize` on the file on the mount (at attach, and
 *                               for an attached volume that is not in use)
 *   a VM has it open            QMP `block_resize` on the VM's qcow2 node for the file
 *                               (the QMP socket of attach --qmp, or of the request)
 *   a libvirt domain has it     `virsh blockresize` of the domain's disk on that file
 *                               (the domain of attach --domain, or of the request)
 *   open, neither               refused: nothing else may write the image under QEMU
 *
 * A detached volume's record is rewritten while this host holds the volume's next
 * generation (taken and released as an attach would): an attach elsewhere meanwhile is
 * refused with ATTACHED_ELSEWHERE instead of rewriting the record from an older copy.
 */
import { execFile } from 'node:child_process';
import { IslandError } from '../errors.js';
import { formatSize, parseVolumeName, parseVolumeSize } from '../format/names.js';
import { parseQcow2Header, qcow2MaxVirtualSize, QCOW2_MAX_HEADER_BYTES } from '../format/qcow2.js';
import type { VolumeRecord } from '../format/records.js';
import { acquireGeneration, releaseGeneration } from '../repo/attach.js';
import type { QmpSession } from '../qmp/session.js';
import { parseDomainName, type Virsh } from '../libvirt/virsh.js';
import type { AnyVolume } from '../volume/write-path.js';
import { mountFile, type Attached, type DaemonContext } from './context.js';

/**
 * Bound on one `qemu-img resize`: it reads the header, L1 and refcount tables and writes
 * new ones; on a restored volume each read may fetch a cluster from the store.
 */
const QEMU_IMG_TIMEOUT_MS = 300_000;
/** Bound on each QMP command of a resize (block_resize writes the new tables before it answers). */
const QMP_RESIZE_TIMEOUT_MS = 60_000;

export interface ResizeRequest {
  size: unknown;
  /** QEMU's QMP socket for a volume a VM has open (default: the one given at attach). */
  qmp?: string;
  /** The libvirt domain that has it open (default: the one given at attach). */
  domain?: string;
}

export interface ResizeOutcome {
  name: string;
  /** The size before (of the image, for a volume attached here; of the record otherwise). */
  from: number;
  to: number;
  /** How the image grew: now (qemu-img, QMP), at the next attach, or not at all (same size). */
  how: 'record' | 'qemu-img' | 'block_resize' | 'blockresize' | 'unchanged';
}

/** The virtual size the qcow2 header of an attached volume's image says. */
export async function imageVirtualSize(volume: AnyVolume): Promise<number> {
  const buf = Buffer.alloc(Math.min(QCOW2_MAX_HEADER_BYTES, volume.clusterSize));
  const n = await volume.read(buf, 0);
  try {
    return parseQcow2Header(buf.subarray(0, n)).virtualSize;
  } catch (err) {
    throw new IslandError('FORMAT_CORRUPT', `the image of ${volume.name} does not start with a qcow2 header: ${(err as Error).message}`, { cause: err, details: { volume: volume.name } });
  }
}

/** `qemu-img resize` of a file on the mount (nobody else has it open). */
export function qemuImgResize(file: string, size: number): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('qemu-img', ['resize', '-f', 'qcow2', file, String(size)], { timeout: QEMU_IMG_TIMEOUT_MS }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const why = String(stderr).trim().split('\n').at(-1) || err.message;
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
      reject(new IslandError(missing ? 'INTERNAL' : 'LOCAL_IO', missing ? 'qemu-img is not installed (island needs it to grow a qcow2 image: Debian package qemu-utils)' : `qemu-img resize ${file} to ${size}: ${why}`, { cause: err, details: { file, size } }));
    });
  });
}

interface BlockNode {
  'node-name'?: unknown;
  drv?: unknown;
  file?: unknown;
}

/** QMP block_resize of the VM's qcow2 node whose image is `file`. */
export async function qmpBlockResize(q: QmpSession, file: string, size: number): Promise<void> {
  const nodes = await q.execute<unknown>('query-named-block-nodes', { flat: true }, { timeoutMs: QMP_RESIZE_TIMEOUT_MS });
  if (!Array.isArray(nodes)) throw new IslandError('QMP_ERROR', 'query-named-block-nodes: malformed reply', { details: { qmp: q.path } });
  const node = (nodes as BlockNode[]).find((n) => n.drv === 'qcow2' && n.file === file && typeof n['node-name'] === 'string');
  if (!node) throw new IslandError('INVALID_ARGUMENT', `the VM on ${q.path} has no qcow2 block node for ${file}; is that the QMP socket of the VM using it?`, { details: { qmp: q.path, file } });
  await q.execute('block_resize', { 'node-name': node['node-name'], size }, { timeoutMs: QMP_RESIZE_TIMEOUT_MS });
}

export class Resizes {
  constructor(
    private readonly ctx: DaemonContext,
    /** Runs `fn` with no attach or detach of `name` in progress (refuses with BUSY otherwise). */
    private readonly exclusive: <T>(name: string, fn: () => Promise<T>) => Promise<T>,
    private readonly qmpSession: (path: string) => QmpSession,
    private readonly virsh: () => Virsh,
  ) {}

  async resize(nameIn: unknown, req: ResizeRequest): Promise<ResizeOutcome> {
    const name = parseVolumeName(nameIn);
    if (req.size === undefined) throw new IslandError('INVALID_ARGUMENT', 'resize needs a size');
    const size = parseVolumeSize(req.size as string | number);
    const domain = req.domain === undefined ? undefined : parseDomainName(req.domain);
    return this.exclusive(name, async () => {
      const rec = await this.record(name);
      const max = qcow2MaxVirtualSize(rec.clusterSize);
      if (size > max) throw new IslandError('INVALID_ARGUMENT', `volume size ${size} is larger than a qcow2 image with ${rec.clusterSize}-byte clusters can address (${max})`, { details: { volume: name, size, max } });
      const a = this.ctx.attached.get(name);
      if (a) return this.resizeAttached(name, a, rec, size, req.qmp, domain);
      const unopened = this.ctx.unopened.get(name);
      if (unopened) {
        // Its local copy may hold writes no snapshot has: the volume stays this host's until settled.
        throw new IslandError('BUSY', `volume ${name} has a local copy on this host that is not served (${unopened.code}); settle it first (island status, attach --discard-local)`, { details: { volume: name } });
      }
      if (rec.status === 'attached' && rec.host !== this.ctx.config.hostId) {
        throw new IslandError('ATTACHED_ELSEWHERE', `volume ${name} is attached on host ${rec.host ?? '?'}; resize it there`, { details: { volume: name, host: rec.host } });
      }
      refuseShrink(name, rec.virtualSize, size);
      if (size === rec.virtualSize) return { name, from: size, to: size, how: 'unchanged' };
      // Hold the volume (as an attach would) while its record is rewritten.
      const att = await acquireGeneration(this.ctx.repo, name);
      try {
        const fresh = await this.record(name);
        refuseShrink(name, fresh.virtualSize, size);
        await this.ctx.repo.putVolume({ ...fresh, virtualSize: size, revision: fresh.revision + 1 });
      } finally {
        await releaseGeneration(this.ctx.repo, name, att.generation, {}, att.head.head);
      }
      this.ctx.log.info({ volume: name, from: rec.virtualSize, to: size }, 'volume grown (its image follows at the next attach)');
      return { name, from: rec.virtualSize, to: size, how: 'record' };
    });
  }

  /** Grow the image of a volume attached here, then its record. */
  private async resizeAttached(name: string, a: Attached, rec: VolumeRecord, size: number, qmp: string | undefined, domain: string | undefined): Promise<ResizeOutcome> {
    if (a.access.mode !== 'read-write') throw new IslandError(a.access.mode === 'fenced' ? 'FENCED' : 'READ_ONLY', `volume ${name} is ${a.access.mode} on this host: ${a.access.why ?? ''}`, { details: { volume: name } });
    const from = await imageVirtualSize(a.volume);
    refuseShrink(name, from, size);
    let how: ResizeOutcome['how'] = 'unchanged';
    if (size > from) how = await this.growImage(name, a, size, qmp, domain);
    a.virtualSize = size;
    if (rec.virtualSize !== size) {
      const fresh = await this.record(name);
      await this.ctx.repo.putVolume({ ...fresh, virtualSize: size, revision: fresh.revision + 1 });
    }
    this.ctx.log.info({ volume: name, from, to: size, how }, 'attached volume grown');
    return { name, from, to: size, how };
  }

  /**
   * Grow the image of an attached volume to `size` through QEMU: qemu-img when nobody has
   * the file open, the VM's block_resize when one has and island has its QMP socket, libvirt's
   * blockresize when island knows the libvirt domain that has it.
   */
  async growImage(name: string, a: Attached, size: number, qmp?: string, domainIn?: string): Promise<'qemu-img' | 'block_resize' | 'blockresize'> {
    const file = mountFile(this.ctx.config, name);
    const open = this.ctx.openHandles(name);
    const path = qmp ?? (domainIn === undefined ? a.qmp : undefined);
    const domain = domainIn ?? a.domain;
    let how: 'qemu-img' | 'block_resize' | 'blockresize';
    if (open === 0) {
      await qemuImgResize(file, size);
      how = 'qemu-img';
    } else if (path !== undefined) {
      await qmpBlockResize(this.qmpSession(path), file, size);
      how = 'block_resize';
    } else if (domain !== undefined) {
      // The domain named must be the one using this file (the one of attach was checked then).
      if (domainIn !== undefined) await this.virsh().checkUses(domain, file);
      await this.virsh().blockResize(domain, file, size);
      how = 'blockresize';
    } else {
      throw new IslandError('BUSY', `${name}.qcow2 is open (${open} handle${open > 1 ? 's' : ''}) and island has neither the QMP socket nor the libvirt domain of the VM using it: an image in use grows only through QEMU (attach --qmp or --domain, or resize --qmp or --domain)`, {
        details: { volume: name, open },
      });
    }
    const now = await imageVirtualSize(a.volume);
    if (now !== size) throw new IslandError('INTERNAL', `${how} of ${name} to ${size} bytes left the image at ${now} bytes`, { details: { volume: name, size, now } });
    return how;
  }

  private async record(name: string): Promise<VolumeRecord> {
    const rec = await this.ctx.repo.getVolume(name);
    if (!rec) throw new IslandError('NOT_FOUND', `no volume named ${name}`, { details: { volume: name } });
    return rec;
  }
}

function refuseShrink(name: string, from: number, size: number): void {
  if (size >= from) return;
  throw new IslandError('INVALID_ARGUMENT', `volume ${name} is ${formatSize(from)} (${from} bytes); it can grow but not shrink to ${formatSize(size)} (${size} bytes): its guest's data may lie past the new end`, {
    details: { volume: name, size: from, requested: size },
  });
}
