/**
 * Image files in and out of island, streamed by qemu-img (any format it reads):
 *
 *   import   a volume whose first snapshot is an image file's content. The volume is
 *            attached here with a fresh qcow2 header, `qemu-img convert -n` writes the
 *            image's data into that file on the mount (island's own qcow2: its header,
 *            tables and cluster size, never the foreign file as it is), a snapshot is
 *            taken and the volume detached. The snapshot is then restorable on any host,
 *            lazily, like any other. Into a new volume (`volume create --from-image`), or
 *            into an existing one that holds nothing yet (a Cinder volume created empty).
 *   export   a snapshot written as a raw or qcow2 image file: the snapshot is shown
 *            read-only on the mount (fetched lazily) and `qemu-img convert` reads it.
 *
 * Everything a request says is checked before anything changes: the file (qemu-img info
 * with a bound; no backing file, external data file or extents in other files, which
 * would let an image read files it does not name), the format, the names and sizes. An
 * import that fails after its volume was created undoes it (detached, its snapshots
 * tombstoned, its record deleted); an import into an existing volume leaves it empty.
 * An export writes a temporary file next to the target and links it into place at the
 * end, so the target appears whole or not at all and an existing file is never replaced.
 *
 * Transfers in progress are listed with their progress (GET /v1/images) for the CLI's
 * progress bar.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { link, stat, unlink } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { IslandError, codeOf } from '../errors.js';
import { DEFAULT_CLUSTER_SIZE, parseClusterSize, parseSnapshotId, parseVolumeName, parseVolumeSize, quoteInput } from '../format/names.js';
import { qcow2MaxVirtualSize } from '../format/qcow2.js';
import { findSnapshot } from '../repo/snapshots.js';
import { mountFile, type SnapshotView, type VolumeView } from './context.js';
import type { Service } from './service.js';

/** Bound on `qemu-img info`: it reads a header and some tables, never the data. */
const INFO_TIMEOUT_MS = 60_000;
/** The largest `qemu-img info` output read (a qcow2 with many snapshots lists them all). */
const INFO_MAX_BYTES = 4 * 1024 * 1024;
/** Sectors: volume sizes are whole 512-byte sectors (names.ts); images are rounded up to one. */
const SECTOR = 512;

/**
 * Input formats island imports. Formats that can pull in other files by name (vmdk's
 * descriptor extents, a qcow2 backing file, luks keys) are refused or checked below.
 */
const INPUT_FORMATS = new Set(['raw', 'qcow2', 'qcow', 'qed', 'vdi', 'vhdx', 'vpc', 'vmdk', 'parallels', 'dmg', 'cloop', 'bochs']);
/** vmdk subformats kept in one file (a descriptor with extents elsewhere is refused). */
const VMDK_ONE_FILE = new Set(['monolithicSparse', 'streamOptimized']);
export const EXPORT_FORMATS = ['raw', 'qcow2'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export interface ImageInfo {
  file: string;
  format: string;
  virtualSize: number;
}

export interface ImportRequest {
  file: unknown;
  /** The image's format (default: what qemu-img detects). */
  format?: unknown;
}

export interface ImportOutcome {
  volume: VolumeView;
  /** The snapshot that holds the image (the volume's first). */
  snapshot: SnapshotView;
  image: ImageInfo;
}

export interface ExportOutcome {
  snapshot: string;
  volume: string;
  file: string;
  format: ExportFormat;
  virtualSize: number;
  /** Bytes the file occupies on its disk (holes are not written). */
  allocatedBytes: number;
}

export interface TransferView {
  kind: 'import' | 'export';
  volume: string;
  snapshot: string | null;
  file: string;
  format: string;
  /** Bytes of the image's virtual size converted so far (from qemu-img's progress). */
  done: number;
  total: number;
  seconds: number;
}

interface Transfer {
  view: Omit<TransferView, 'seconds'>;
  started: number;
  child?: ChildProcess;
}

interface QemuImgInfo {
  'virtual-size'?: unknown;
  format?: unknown;
  'backing-filename'?: unknown;
  'full-backing-filename'?: unknown;
  'format-specific'?: { type?: unknown; data?: { 'data-file'?: unknown; 'create-type'?: unknown; extents?: unknown } };
}

function invalid(message: string, details: Record<string, unknown> = {}): IslandError {
  return new IslandError('INVALID_ARGUMENT', message, { details });
}

/** An absolute path, checked as text (the daemon does not resolve the caller's cwd). */
function parsePath(v: unknown, what: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > 4096 || v.includes('\0')) throw invalid(`${what} must be an absolute path, got ${quoteInput(v)}`);
  if (!isAbsolute(v)) throw invalid(`${what} must be an absolute path (the daemon does not know the caller's directory), got ${quoteInput(v)}`);
  return v;
}

function parseInputFormat(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !INPUT_FORMATS.has(v)) throw invalid(`image format must be one of ${[...INPUT_FORMATS].join(', ')}, got ${quoteInput(v)}`);
  return v;
}

export function parseExportFormat(v: unknown): ExportFormat {
  if (v === undefined) return 'raw';
  if (typeof v !== 'string' || !(EXPORT_FORMATS as readonly string[]).includes(v)) throw invalid(`export format must be raw or qcow2, got ${quoteInput(v)}`);
  return v as ExportFormat;
}

/**
 * Run qemu-img; `onProgress` gets the percentage of `-p` (qemu-img redraws it with
 * carriage returns). Fails with qemu-img's last line of stderr.
 */
function qemuImg(args: string[], opts: { timeoutMs?: number; maxOutput?: number; onProgress?: (pct: number) => void; onChild?: (c: ChildProcess) => void } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: opts.timeoutMs });
    opts.onChild?.(child);
    let out = '';
    let err = '';
    let outBytes = 0;
    const max = opts.maxOutput ?? 64 * 1024;
    child.stdout.on('data', (c: Buffer) => {
      if (opts.onProgress) {
        for (const m of c.toString('latin1').matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)) opts.onProgress(Number(m[1]));
        return;
      }
      outBytes += c.length;
      if (outBytes <= max) out += c.toString('utf8');
    });
    child.stderr.on('data', (c: Buffer) => {
      if (err.length < 16 * 1024) err += c.toString('utf8');
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') reject(new IslandError('INTERNAL', 'qemu-img is not installed (island needs it for image import and export: Debian package qemu-utils)', { cause: e }));
      else reject(new IslandError('LOCAL_IO', `qemu-img ${args[0] ?? ''}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, signal) => {
      if (code === 0 && outBytes <= max) return resolve(out);
      const why = err.trim().split('\n').at(-1) || (signal ? `killed by ${signal}` : outBytes > max ? `more than ${max} bytes of output` : `exit status ${code}`);
      reject(new IslandError('LOCAL_IO', `qemu-img ${args[0] ?? ''}: ${why}`, { details: { args: args.slice(0, 1) } }));
    });
  });
}

/** What qemu-img says of an image file, refusing what island will not read. */
export async function inspectImage(file: string, format?: string): Promise<ImageInfo> {
  const st = await stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new IslandError(err.code === 'ENOENT' ? 'NOT_FOUND' : 'INVALID_ARGUMENT', `image file ${file}: ${err.code ?? err.message}`, { details: { file } });
  });
  if (!st.isFile() && !st.isBlockDevice()) throw invalid(`image file ${file} is not a regular file or a block device`, { file });
  let text: string;
  try {
    text = await qemuImg(['info', '--output=json', ...(format ? ['-f', format] : []), file], { timeoutMs: INFO_TIMEOUT_MS, maxOutput: INFO_MAX_BYTES });
  } catch (err) {
    if (codeOf(err) === 'INTERNAL') throw err;
    throw invalid(`${file} is not an image qemu-img can read${format ? ` as ${format}` : ''}: ${(err as Error).message}`, { file });
  }
  let info: QemuImgInfo;
  try {
    info = JSON.parse(text) as QemuImgInfo;
  } catch {
    throw new IslandError('INTERNAL', `qemu-img info ${file} printed something that is not JSON`, { details: { file } });
  }
  const fmt = info.format;
  const size = info['virtual-size'];
  if (typeof fmt !== 'string' || typeof size !== 'number' || !Number.isSafeInteger(size)) throw new IslandError('INTERNAL', `qemu-img info ${file}: no format or virtual size in its answer`, { details: { file } });
  if (!INPUT_FORMATS.has(fmt)) throw invalid(`${file} is a ${fmt} image; island imports ${[...INPUT_FORMATS].join(', ')}`, { file, format: fmt });
  if (info['backing-filename'] !== undefined || info['full-backing-filename'] !== undefined) {
    throw invalid(`${file} has a backing file (${quoteInput(info['backing-filename'] ?? info['full-backing-filename'])}); import a standalone image (qemu-img convert it first)`, { file });
  }
  const specific = info['format-specific']?.data;
  if (specific?.['data-file'] !== undefined) throw invalid(`${file} keeps its data in another file (${quoteInput(specific['data-file'])}); import a standalone image`, { file });
  if (fmt === 'vmdk' && (typeof specific?.['create-type'] !== 'string' || !VMDK_ONE_FILE.has(specific['create-type']))) {
    throw invalid(`${file} is a vmdk of type ${quoteInput(specific?.['create-type'])}: only single-file vmdk images (${[...VMDK_ONE_FILE].join(', ')}) are imported`, { file });
  }
  if (size <= 0) throw invalid(`${file} is an empty image (virtual size ${size})`, { file });
  return { file, format: fmt, virtualSize: size };
}

/** The volume size an image needs: its virtual size rounded up to whole sectors. */
function sizeFor(info: ImageInfo): number {
  return Math.ceil(info.virtualSize / SECTOR) * SECTOR;
}

export class Images {
  private readonly transfers = new Set<Transfer>();
  private closed = false;

  constructor(private readonly svc: Service) {}

  views(): TransferView[] {
    const now = Date.now();
    return [...this.transfers].map((t) => ({ ...t.view, seconds: (now - t.started) / 1000 }));
  }

  /** A new volume holding an image file's content (POST /v1/volumes with fromImage). */
  async createFromImage(req: { name: unknown; fromImage: unknown; format?: unknown; size?: unknown; clusterSize?: unknown }): Promise<ImportOutcome> {
    const name = parseVolumeName(req.name);
    const file = parsePath(req.fromImage, 'fromImage');
    const format = parseInputFormat(req.format);
    const clusterSize = req.clusterSize === undefined ? DEFAULT_CLUSTER_SIZE : parseClusterSize(req.clusterSize as string | number);
    const asked = req.size === undefined ? undefined : parseVolumeSize(req.size as string | number);
    const info = await inspectImage(file, format);
    const size = asked ?? sizeFor(info);
    if (size < info.virtualSize) throw invalid(`${file} holds a ${info.virtualSize}-byte image; a volume for it needs at least that size (${size} asked)`, { file, size: info.virtualSize, requested: size });
    if (size > qcow2MaxVirtualSize(clusterSize)) throw invalid(`${file} holds a ${info.virtualSize}-byte image, larger than a qcow2 image with ${clusterSize}-byte clusters can address`, { file });
    if (await this.svc.repo.getVolume(name)) throw new IslandError('ALREADY_EXISTS', `volume ${name} already exists`, { details: { volume: name } });
    await this.svc.createVolume({ name, size, clusterSize });
    try {
      return await this.convertInto(name, info);
    } catch (err) {
      await this.undoCreate(name);
      throw err;
    }
  }

  /**
   * An image file's content into an existing volume that holds nothing yet: never attached,
   * not created from a snapshot, no snapshots (POST /v1/volumes/{name}/import).
   */
  async importInto(nameIn: unknown, req: ImportRequest): Promise<ImportOutcome> {
    const name = parseVolumeName(nameIn);
    const file = parsePath(req.file, 'file');
    const format = parseInputFormat(req.format);
    const info = await inspectImage(file, format);
    const v = await this.svc.showVolume(name);
    if (v.status !== 'available' || v.local || v.detaching) throw new IslandError('BUSY', `volume ${name} is ${v.detaching ? 'detaching' : v.status}${v.host ? ` on ${v.host}` : ''}; an image is imported into a detached volume`, { details: { volume: name } });
    if (v.source !== null || (await this.svc.listSnapshots(name)).some((s) => !s.deleted)) {
      throw new IslandError('ALREADY_EXISTS', `volume ${name} already holds data (${v.source ? `created from snapshot ${v.source.id}` : 'it has snapshots'}); an image is imported into an empty volume`, { details: { volume: name } });
    }
    if (v.virtualSize < info.virtualSize) throw invalid(`${file} holds a ${info.virtualSize}-byte image, larger than volume ${name} (${v.virtualSize} bytes); grow the volume first`, { file, volume: name, size: info.virtualSize });
    return this.convertInto(name, info);
  }

  /** Attach, convert into the file on the mount, snapshot, detach. */
  private async convertInto(name: string, info: ImageInfo): Promise<ImportOutcome> {
    const svc = this.svc;
    const t = this.track({ kind: 'import', volume: name, snapshot: null, file: info.file, format: info.format, done: 0, total: info.virtualSize });
    try {
      await svc.attach(name);
      let snapshot: SnapshotView;
      try {
        // The attach made a fresh, all-zero image: qemu-img need not write the zeros.
        await this.convert(t, ['convert', '-p', '-n', '--target-is-zero', '-f', info.format, '-O', 'qcow2', info.file, mountFile(svc.config, name)]);
        const r = await svc.createSnapshots({ volumes: [name], wait: true });
        snapshot = ((r as { snapshots: SnapshotView[] }).snapshots[0]) as SnapshotView;
      } catch (err) {
        await svc.detach(name, { force: true }).catch((e: unknown) => svc.log.error({ volume: name, err: e }, 'import: detach after a failure failed'));
        throw err;
      }
      const volume = await svc.detach(name);
      svc.log.info({ volume: name, file: info.file, format: info.format, snapshot: snapshot.id }, 'image imported');
      return { volume, snapshot, image: info };
    } finally {
      this.transfers.delete(t);
    }
  }

  /** A volume this import created goes again: its snapshots are tombstoned, its record deleted. */
  private async undoCreate(name: string): Promise<void> {
    const svc = this.svc;
    try {
      const ids = (await svc.listSnapshots(name)).filter((s) => !s.deleted).map((s) => s.id);
      if (ids.length) await svc.deleteSnapshots({ ids, force: true });
      await svc.deleteVolume(name);
    } catch (err) {
      svc.log.error({ volume: name, err, code: codeOf(err) }, 'import failed and its volume could not be removed; delete it by hand');
    }
  }

  /** A snapshot as an image file (POST /v1/snapshots/{id}/export). */
  async exportSnapshot(idIn: unknown, req: { file: unknown; format?: unknown }): Promise<ExportOutcome> {
    const svc = this.svc;
    const id = parseSnapshotId(idIn);
    const file = parsePath(req.file, 'file');
    const format = parseExportFormat(req.format);
    const dir = dirname(file);
    const d = await stat(dir).catch(() => null);
    if (!d?.isDirectory()) throw invalid(`the directory of ${file} does not exist`, { file });
    if (await stat(file).catch(() => null)) throw new IslandError('ALREADY_EXISTS', `${file} exists; island does not replace a file on export`, { details: { file } });
    const m = await findSnapshot(svc.repo, id);
    if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${id}`, { details: { snapshot: id } });
    const wasMounted = svc.fileNames().includes(`${m.volume}@${m.id}`);
    const mounted = await svc.mountSnapshot(m.id);
    const part = join(dir, `.${basename(file)}.${m.id}.part`);
    const t = this.track({ kind: 'export', volume: m.volume, snapshot: m.id, file, format, done: 0, total: 0 });
    try {
      const src = await inspectImage(mounted.file, 'qcow2');
      t.view.total = src.virtualSize;
      await this.convert(t, ['convert', '-p', '-f', 'qcow2', '-O', format, mounted.file, part]);
      // link(2) fails when the target appeared meanwhile: an existing file is never replaced.
      await link(part, file).catch((err: NodeJS.ErrnoException) => {
        throw new IslandError(err.code === 'EEXIST' ? 'ALREADY_EXISTS' : 'LOCAL_IO', `${file}: ${err.code ?? err.message}`, { details: { file } });
      });
      const st = await stat(file);
      svc.log.info({ snapshot: m.id, volume: m.volume, file, format }, 'snapshot exported');
      return { snapshot: m.id, volume: m.volume, file, format, virtualSize: src.virtualSize, allocatedBytes: st.blocks * 512 };
    } finally {
      this.transfers.delete(t);
      await unlink(part).catch(() => undefined);
      if (!wasMounted) await svc.unmountSnapshot(m.id, { force: true }).catch((err: unknown) => svc.log.warn({ snapshot: m.id, err }, 'export: the snapshot could not be unmounted'));
    }
  }

  private track(view: Transfer['view']): Transfer {
    if (this.closed) throw new IslandError('BUSY', 'the daemon is stopping');
    const t: Transfer = { view, started: Date.now() };
    this.transfers.add(t);
    return t;
  }

  private convert(t: Transfer, args: string[]): Promise<string> {
    return qemuImg(args, {
      onChild: (c) => (t.child = c),
      onProgress: (pct) => (t.view.done = Math.min(t.view.total, Math.round((pct / 100) * t.view.total))),
    }).then((out) => {
      t.view.done = t.view.total;
      return out;
    });
  }

  /** Stop the conversions in progress (the daemon stops): their requests fail. */
  close(): void {
    this.closed = true;
    for (const t of this.transfers) t.child?.kill('SIGTERM');
  }
}
