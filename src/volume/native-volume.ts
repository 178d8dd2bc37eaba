/**
 * The volume engine with its write path in C (native/volume/): the same local state, the same
 * protocols and the same page writes as engine.ts, whose TypeScript write path stays as the
 * oracle the differential test (test/volume/native-diff.test.ts) compares this one with.
 *
 * Division of work. TypeScript creates and recovers the directory (setup.ts, recovery.ts),
 * then hands the C side the recovered state: geometry, epochs, the intent epoch, the dirty
 * and present bits and every bitmap page's slot generations and synced page counts; it closes
 * its own handles and the C side opens the files. From then on the bitmaps and counters
 * belong to C: reads, writes, fsync, discard and truncate run there (on the libuv pool, never
 * on this thread; a native FUSE server calls the same code through `handle`); this class keeps
 * seal orchestration, the fetching of missing clusters (C parks the request and reports the
 * clusters wanted; the fetched bytes are installed through the addon, only where the cluster
 * is still missing), the state record and the flush timer.
 */
import { nativeVolumeStats } from './stats.js';
import { EventEmitter } from 'node:events';
import { IslandError } from '../errors.js';
import { parseSnapshotId } from '../format/names.js';
import { BITMAP_PAYLOAD_BYTES } from './bitmap-page.js';
import { PagedBitmap } from './bitmap.js';
import type { BitmapFile } from './bitmap-file.js';
import { Coalescer } from './concurrency.js';
import { nodeFs } from './files.js';
import { ReadAhead } from './lazy.js';
import { E, errnoOf, EVENT_SEAL_ABANDONED, EVENT_STATE, FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, NATIVE_FILES, NATIVE_OPS, volumeAddon, type BitmapPages, type Handle, type NativeOp, type VolumeAddon } from './native-volume-addon.js';
import { Seal, SealState, type SealOps } from './seal.js';
import { createParts, openParts, DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_SIDE_LOG_BUDGET, type RecoveryInfo, type VolumeCreateOptions, type VolumeOptions, type VolumeParts, type VolumeLogger, type PresentFetcher } from './setup.js';
import { checkIoRange, encodeState } from './state.js';
import { StateKeeper } from './state-keeper.js';
import type { VolumeStats } from './stats.js';

export { FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_ZERO_RANGE, nativeWritePathAvailable, type NativeOp } from './native-volume-addon.js';

export interface NativeVolumeOptions {
  /** Keep the ordered list of file operations (tests): takeOps(). */
  opLog?: boolean;
  /**
   * The same with the bytes of every write, and the state record writes in their place (as
   * op 'record' of file 'state', logged once the record is durable): enough to replay the
   * operations into another file system (tests that crash the replay).
   */
  opLogData?: boolean;
}

export class NativeVolume extends EventEmitter {
  readonly dir: string;
  readonly name: string;
  readonly virtualSize: number;
  readonly clusterSize: number;
  readonly regionSize: number;
  readonly baseSnapshot: string | null;
  readonly generation: number;
  readonly recovery: RecoveryInfo;
  private readonly restored: boolean;
  private readonly a: VolumeAddon;
  private readonly logger: VolumeLogger | undefined;
  private readonly fetcher: PresentFetcher | undefined;
  private readonly state: StateKeeper;
  private readonly flusher = new Coalescer(() => this.flushNow());
  private readonly fetching = new Map<number, Promise<void>>();
  private readonly abort = new AbortController();
  private sealState: SealState | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  /** Read-ahead of sequential reads of missing clusters, fed by the reads' misses (lazy.ts). */
  private readonly ahead: ReadAhead | null;
  private fetches = 0;

  private constructor(
    p: VolumeParts,
    /** The native volume (island_io.h's file behind it: isl_volume_unwrap). */
    readonly handle: Handle,
    a: VolumeAddon,
  ) {
    super();
    this.a = a;
    this.dir = p.dir;
    this.name = p.state.name;
    this.virtualSize = p.state.virtualSize;
    this.clusterSize = p.state.clusterSize;
    this.regionSize = p.state.regionSize;
    this.baseSnapshot = p.state.baseSnapshot;
    this.generation = p.state.generation;
    this.state = new StateKeeper({
      fs: nodeFs,
      dir: p.dir,
      initial: p.state,
      now: () => {
        const info = this.a.volumeRecordInfo(this.handle);
        const [dirty0, dirty1, intent, present] = info.syncedPages;
        return { imageLength: info.imageLength, epoch: info.epoch, completedEpoch: info.completedEpoch, intentEpoch: info.recordableIntentEpoch, baseLength: info.baseLength, syncedPages: { dirty0, dirty1, intent, present } };
      },
      written: (st) => {
        if (this.logData && !this.released) {
          this.leftOps.push(...this.opsNow());
          this.leftOps.push({ file: 'state', op: 'record', a: 0, b: 0, data: encodeState(st) });
        }
        if (!this.released) this.a.volumeIntentRecorded(this.handle, st.intentEpoch);
      },
    });
    this.recovery = p.recovery;
    this.restored = p.present !== null;
    this.logger = p.options.logger;
    this.fetcher = p.options.fetcher;
    this.ahead = this.restored ? new ReadAhead(this.clusterSize, () => this.baseClusters, (c0, c1) => this.ensurePresent(c0, c1)) : null;
    const every = p.options.flushIntervalMs ?? DEFAULT_FLUSH_INTERVAL_MS;
    if (every > 0) {
      this.timer = setInterval(() => {
        this.flushBitmaps().catch((err: unknown) => this.warn(err, 'background bitmap flush failed'));
      }, every);
      this.timer.unref();
    }
  }

  /** Create a new volume's local state in `dir` (setup.ts) and open it on the native path. */
  static async create(dir: string, opts: VolumeCreateOptions & NativeVolumeOptions): Promise<NativeVolume> {
    if (opts.fs !== undefined && opts.fs !== nodeFs) throw new IslandError('INVALID_ARGUMENT', 'the native write path works on the local file system only');
    return NativeVolume.handOver(await createParts(dir, opts), opts);
  }

  /** Open (and recover) a volume's local state (setup.ts), then serve it on the native path. */
  static async open(dir: string, opts: VolumeOptions & NativeVolumeOptions = {}): Promise<NativeVolume> {
    if (opts.fs !== undefined && opts.fs !== nodeFs) throw new IslandError('INVALID_ARGUMENT', 'the native write path works on the local file system only');
    return NativeVolume.handOver(await openParts(dir, opts), opts);
  }

  private static async handOver(p: VolumeParts, opts: NativeVolumeOptions): Promise<NativeVolume> {
    const a = volumeAddon();
    const files = p.tracker.files();
    const present = p.present?.parts() ?? null;
    const bitmapFiles: Array<[number, BitmapFile]> = [
      [1, files.dirty[0]],
      [2, files.dirty[1]],
      [3, files.intent],
    ];
    if (present !== null) bitmapFiles.push([4, present.file]);
    // Everything the C side needs, read before the TypeScript handles close.
    const gens = bitmapFiles.map(([id, f]) => [id, f.slotGenerations(), f.syncedPages] as const);
    await Promise.allSettled([p.image.close(), files.dirty[0].close(), files.dirty[1].close(), files.intent.close(), p.sideLog.close(), present?.file.close()]);
    let self: NativeVolume | null = null;
    const pendingEvents: Array<() => void> = [];
    const h = await a.volumeOpen(
      {
        dir: p.dir,
        clusterSize: p.state.clusterSize,
        regionSize: p.state.regionSize,
        imageLength: p.imageLength,
        baseLength: present === null ? 0 : p.present!.baseLength,
        epoch: p.tracker.epoch,
        completedEpoch: p.tracker.completedEpoch,
        intentEpoch: p.tracker.intentEpoch,
        sideLogBudget: p.options.sideLogBudget ?? DEFAULT_SIDE_LOG_BUDGET,
        opLog: opts.opLog === true,
        opLogData: opts.opLogData === true,
      },
      (c0, c1, reading) => (self !== null ? self.onMiss(c0, c1, reading) : pendingEvents.push(() => self?.onMiss(c0, c1, reading))),
      (kind, x, msg) => (self !== null ? self.onEvent(kind, x, msg) : pendingEvents.push(() => self?.onEvent(kind, x, msg))),
    );
    try {
      for (const [id, g, synced] of gens) {
        g.forEach((pair, page) => {
          if (pair !== undefined) a.volumeLoadGens(h, id, page, pair[0], pair[1]);
        });
        a.volumeLoadSynced(h, id, synced);
      }
      const current = p.tracker.current;
      for (const page of current.pageIndices()) a.volumeLoadBits(h, 1, page, current.page(page)!, false);
      if (present !== null) for (const page of present.bits.pageIndices()) a.volumeLoadBits(h, 4, page, present.bits.page(page)!, false);
    } catch (err) {
      a.volumeRelease(h);
      throw err;
    }
    self = new NativeVolume(p, h, a);
    self.logData = opts.opLogData === true;
    for (const e of pendingEvents) e();
    return self;
  }

  /** The image length in bytes. */
  get length(): number {
    return this.closed ? 0 : this.a.volumeSize(this.handle);
  }

  /** The handle a native FUSE server serves in C (isl_volume_unwrap): FuseVolume.native. */
  get native(): Handle {
    return this.handle;
  }

  // ---------- I/O (the C path) ----------

  async read(buf: Buffer, offset: number): Promise<number> {
    this.checkOpen();
    checkIoRange(offset, buf.length);
    if (buf.length === 0) return 0;
    return this.io('read', () => this.a.volumeRead(this.handle, buf, offset), { offset, len: buf.length });
  }

  async write(buf: Buffer, offset: number): Promise<number> {
    this.checkOpen();
    checkIoRange(offset, buf.length);
    if (buf.length === 0) return 0;
    return this.io('write', () => this.a.volumeWrite(this.handle, buf, offset), { offset, len: buf.length });
  }

  async fsync(): Promise<void> {
    this.checkOpen();
    await this.io('fsync', () => this.a.volumeFsync(this.handle), {});
  }

  /** Discard: [offset, offset + len) below the image length reads as zeros (engine.ts discard()). */
  async discard(offset: number, len: number): Promise<void> {
    this.checkOpen();
    checkIoRange(offset, len);
    if (len === 0) return;
    await this.io('discard', () => this.a.volumeFallocate(this.handle, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE, offset, len), { offset, len });
  }

  /** fallocate with the kernel's modes (PUNCH_HOLE | KEEP_SIZE, ZERO_RANGE [| KEEP_SIZE]). */
  async fallocate(mode: number, offset: number, len: number): Promise<void> {
    this.checkOpen();
    checkIoRange(offset, len);
    await this.io('fallocate', () => this.a.volumeFallocate(this.handle, mode, offset, len), { mode, offset, len });
  }

  async truncate(newLength: number): Promise<void> {
    this.checkOpen();
    checkIoRange(newLength, 0);
    const before = this.a.volumeRecordInfo(this.handle).baseLength;
    for (;;) {
      const edge = Math.min(newLength, this.length);
      const C = this.clusterSize;
      if (this.restored && edge % C !== 0 && edge < before) await this.ensurePresent(Math.floor(edge / C), Math.floor(edge / C));
      try {
        await this.a.volumeTruncate(this.handle, newLength);
        break;
      } catch (err) {
        if (errnoOf(err) !== E.EAGAIN) throw this.ioError('truncate', err, { newLength });
      }
    }
    if (this.a.volumeRecordInfo(this.handle).baseLength !== before) await this.state.save();
  }

  private async io<T>(op: string, f: () => Promise<T>, details: Record<string, unknown>): Promise<T> {
    try {
      return await f();
    } catch (err) {
      throw this.ioError(op, err, details);
    }
  }

  private ioError(op: string, err: unknown, details: Record<string, unknown>): IslandError {
    if (err instanceof IslandError) return err;
    const n = errnoOf(err);
    if (n === undefined) return new IslandError('INTERNAL', `${op} on volume ${this.name}: ${(err as Error).message}`, { cause: err, details });
    if (this.closed) return new IslandError('INVALID_ARGUMENT', `volume ${this.name} is closed`, { details: { volume: this.name } });
    const code = n === E.ENOSPC || n === E.EDQUOT ? 'NO_SPACE' : n === E.EFBIG ? 'TOO_LARGE' : n === E.EINVAL ? 'INVALID_ARGUMENT' : 'LOCAL_IO';
    return new IslandError(code, `${op} on volume ${this.name}: ${(err as Error).message}`, { cause: err, details: { volume: this.name, op, errno: n, ...details } });
  }

  // ---------- misses and the fill ----------

  /**
   * Clusters a parked request wants. A read's miss also feeds the read-ahead: a reader served
   * by the native FUSE server reaches JavaScript only where it misses, so its sequential
   * stream shows as misses one window apart.
   */
  private onMiss(c0: number, c1: number, reading: boolean): void {
    if (reading && this.ahead !== null) this.ahead.note(c0 * this.clusterSize, (c1 + 1) * this.clusterSize, c1);
    let start = -1;
    for (let c = c0; c <= c1 + 1; c++) {
      const needed = c <= c1 && !this.fetching.has(c);
      if (needed && start < 0) start = c;
      if (!needed && start >= 0) {
        this.fetchRun(start, c - start).catch(() => undefined);
        start = -1;
      }
    }
  }

  /** Fetch clusters [first, first + count) and install them (only where still missing). */
  private fetchRun(first: number, count: number, supplied?: Buffer): Promise<void> {
    const C = this.clusterSize;
    const run = (async () => {
      try {
        if (this.fetcher === undefined && supplied === undefined) {
          throw new IslandError('LOCAL_IO', `cluster ${first} of volume ${this.name} is not local and no fetcher is configured`, { details: { volume: this.name, cluster: first } });
        }
        this.fetches++;
        const data = supplied ?? (await this.fetcher!.fetch(first, count, this.abort.signal));
        if (data.length > count * C) throw new IslandError('INTERNAL', `fetcher returned ${data.length} bytes for ${count} clusters`);
        // All at once on the libuv pool, each only where still missing; a failure is thrown after all settle.
        const part = (i: number): Buffer => data.subarray(Math.min(i * C, data.length), Math.min((i + 1) * C, data.length));
        const failed = (await Promise.allSettled(Array.from({ length: count }, (_, i) => this.a.volumeInstall(this.handle, first + i, part(i))))).find((r) => r.status === 'rejected');
        if (failed !== undefined) throw failed.reason;
      } catch (err) {
        // The requests waiting on these clusters fail with EIO; the next one fetches again.
        if (!this.closed) this.a.volumeFetchFailed(this.handle, first, first + count - 1, E.EIO);
        throw err;
      }
    })();
    const tracked: Promise<void> = run.finally(() => {
      for (let i = 0; i < count; i++) if (this.fetching.get(first + i) === tracked) this.fetching.delete(first + i);
    });
    for (let i = 0; i < count; i++) this.fetching.set(first + i, tracked);
    return tracked;
  }

  private async ensurePresent(c0: number, c1: number): Promise<void> {
    const waits: Array<Promise<void>> = [];
    let start = -1;
    for (let c = c0; c <= c1 + 1; c++) {
      const inflight = c <= c1 ? this.fetching.get(c) : undefined;
      if (inflight !== undefined) waits.push(inflight);
      const needed = c <= c1 && inflight === undefined && !this.a.volumeIsPresent(this.handle, c);
      if (needed && start < 0) start = c;
      if (!needed && start >= 0) {
        waits.push(this.fetchRun(start, c - start));
        start = -1;
      }
    }
    await Promise.all(waits);
  }

  /** Clusters below this still come from the base snapshot until present (0: not restored). */
  get baseClusters(): number {
    return this.restored ? Math.ceil(this.a.volumeRecordInfo(this.handle).baseLength / this.clusterSize) : 0;
  }

  /** Make clusters [c0, c1] local without a guest read (the background fill). */
  async prefetch(c0: number, c1: number): Promise<void> {
    this.checkOpen();
    const last = Math.min(c1, this.baseClusters - 1);
    if (c0 <= last) await this.ensurePresent(c0, last);
  }

  /** Store base content the caller read and verified: cluster `c`, only while it is still missing. */
  async supply(c: number, data: Buffer): Promise<void> {
    this.checkOpen();
    if (c >= this.baseClusters) return;
    const inflight = this.fetching.get(c);
    if (inflight !== undefined) return inflight;
    if (this.a.volumeIsPresent(this.handle, c)) return;
    return this.fetchRun(c, 1, data);
  }

  // ---------- epochs ----------

  async seal(): Promise<Seal> {
    this.checkOpen();
    if (this.sealState !== null) throw new IslandError('BUSY', `volume ${this.name} already has a sealed epoch in progress`, { details: { volume: this.name } });
    let r: { epoch: number; length: number; clusters: number };
    try {
      r = await this.a.volumeSeal(this.handle);
    } catch (err) {
      if (errnoOf(err) === E.EBUSY) throw new IslandError('BUSY', `volume ${this.name} already has a sealed epoch in progress`, { details: { volume: this.name } });
      throw this.ioError('seal', err, {});
    }
    const bits = bitmapOf(this.a.volumeSealedPages(this.handle, r.epoch));
    const s = new SealState(r.epoch, bits, r.length);
    this.sealState = s;
    this.persistInBackground();
    return new Seal(s, this.sealOps, this.clusterSize);
  }

  private readonly sealOps: SealOps = {
    readSealed: (s, c) => this.readSealed(s, c),
    markUploaded: (s, c) => {
      if (s.status !== 'open') return;
      const r = this.a.volumeMarkUploaded(this.handle, s.epoch, c);
      if (r === -E.EINVAL) throw notSealed(s, c);
    },
    complete: async (s, id) => {
      const committed = parseSnapshotId(id, 'committed snapshot id');
      s.checkOpen();
      try {
        await this.a.volumeComplete(this.handle, s.epoch);
      } catch (err) {
        if (errnoOf(err) === E.ECANCELED) return s.checkOpen();
        throw this.ioError('complete', err, {});
      }
      this.endSeal(s, 'completed', null);
      await this.state.commit(committed);
    },
    abandon: async (s, reason) => {
      s.checkOpen();
      try {
        await this.a.volumeAbandon(this.handle, s.epoch);
      } catch (err) {
        if (errnoOf(err) !== E.ECANCELED) throw this.ioError('abandon', err, {});
      }
      this.endSeal(s, 'abandoned', reason);
    },
  };

  private async readSealed(s: SealState, c: number): Promise<Buffer> {
    s.checkOpen();
    if (!Number.isSafeInteger(c) || c < 0 || !s.bits.get(c)) throw notSealed(s, c);
    if (s.uploaded.get(c)) throw new IslandError('INVALID_ARGUMENT', `cluster ${c} of sealed epoch ${s.epoch} is already marked uploaded`, { details: { cluster: c } });
    const buf = Buffer.alloc(this.clusterSize);
    for (;;) {
      let n: number;
      try {
        n = await this.a.volumeReadSealed(this.handle, s.epoch, c, buf);
      } catch (err) {
        const e = errnoOf(err);
        if (e === E.ECANCELED) {
          s.checkOpen();
          this.endSeal(s, 'abandoned', 'the seal ended while a cluster was read');
          s.checkOpen();
        }
        if (e === E.EALREADY) throw new IslandError('INVALID_ARGUMENT', `cluster ${c} of sealed epoch ${s.epoch} is already marked uploaded`, { details: { cluster: c } });
        if (e === E.EINVAL) throw notSealed(s, c);
        throw this.ioError('readSealed', err, { cluster: c });
      }
      if (n >= 0) return buf.subarray(0, n);
      await this.ensurePresent(c, c);
    }
  }

  private endSeal(s: SealState, status: 'completed' | 'abandoned', reason: string | null): void {
    if (s.status !== 'open') return;
    s.status = status;
    s.reason = reason;
    if (this.sealState === s) this.sealState = null;
    if (status === 'abandoned') {
      this.logger?.warn({ volume: this.name, epoch: s.epoch, reason }, 'sealed epoch abandoned: its clusters are dirty again');
      this.emit('seal-abandoned', { epoch: s.epoch, reason });
    }
  }

  private onEvent(kind: number, a: number, msg: string): void {
    if (kind === EVENT_SEAL_ABANDONED) {
      const s = this.sealState;
      if (s !== null && s.epoch === a) this.endSeal(s, 'abandoned', msg);
      this.persistInBackground();
    } else if (kind === EVENT_STATE && !this.closed) {
      this.state.save().catch((err: unknown) => this.warn(err, 'writing the state record failed'));
    }
  }

  // ---------- bitmaps and the state record ----------

  /** Persist dirty and present bits and start a new intent epoch (protocol C): what the timer does. */
  flushBitmaps(): Promise<void> {
    return this.flusher.request();
  }

  private async flushNow(): Promise<void> {
    if (this.closed) return;
    await this.a.volumeSyncPresent(this.handle);
    const epoch = await this.a.volumeNewIntentEpoch(this.handle);
    if (epoch > 0) await this.state.save();
  }

  /** Persist the unsaved dirty pages now (protocol B; the timer, a seal and close do it too). */
  async persistDirty(): Promise<void> {
    this.checkOpen();
    await this.io('persist', () => this.a.volumePersist(this.handle), {});
  }

  private persistInBackground(): void {
    this.a.volumePersist(this.handle).catch((err: unknown) => this.warn(err, 'persisting dirty bits failed'));
  }

  private released = false;
  private logData = false;

  close(): Promise<void> {
    this.closing ??= this.closeNow();
    return this.closing;
  }

  private async closeNow(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    await this.flusher.idle();
    this.closed = true;
    this.abort.abort(new IslandError('ABORTED', `volume ${this.name} is closing`));
    let clean = false;
    try {
      clean = await this.a.volumeClose(this.handle);
    } catch (err) {
      this.warn(err, 'closing the volume: bits could not be persisted; the next open recovers as after a crash');
    }
    await Promise.allSettled([...this.fetching.values()]);
    if (this.sealState !== null) this.endSeal(this.sealState, 'abandoned', 'the volume was closed');
    try {
      if (clean) await this.state.save(true);
    } finally {
      this.leftOps = this.opsNow();
      this.lastStats = this.stats();
      this.released = true;
      this.a.volumeRelease(this.handle);
    }
  }

  // ---------- what the state record keeps ----------

  get committedSnapshot(): string | null {
    return this.state.committedSnapshot;
  }

  get filled(): boolean {
    return this.state.filled;
  }

  async markFilled(): Promise<void> {
    this.checkOpen();
    if (!this.restored) throw new IslandError('INVALID_ARGUMENT', `volume ${this.name} was not restored from a snapshot: nothing to fill`, { details: { volume: this.name } });
    await this.state.markFilled();
  }

  async markAllDirty(): Promise<void> {
    this.checkOpen();
    await this.io('markAllDirty', () => this.a.volumeMarkAllDirty(this.handle), {});
    await this.state.commit(null);
  }

  *dirtyClusters(): Generator<number> {
    yield* bitmapOf(this.a.volumeDirtyPages(this.handle)).bits();
  }

  isDirty(cluster: number): boolean {
    return this.a.volumeIsDirty(this.handle, cluster);
  }

  isPresent(cluster: number): boolean {
    return this.a.volumeIsPresent(this.handle, cluster);
  }

  private lastStats: VolumeStats | null = null;

  stats(): VolumeStats {
    if (this.lastStats !== null) return this.lastStats;
    return nativeVolumeStats(this.a.volumeStats(this.handle) as Record<string, number>, this.state.writes, this.fetches);
  }

  /** The file operations logged since the last call (opened with opLog). */
  takeOps(): NativeOp[] {
    const left = this.leftOps;
    this.leftOps = [];
    return this.released ? left : [...left, ...this.opsNow()];
  }

  private leftOps: NativeOp[] = [];

  private opsNow(): NativeOp[] {
    const { ops: flat, data } = this.a.volumeTakeOps(this.handle);
    const out: NativeOp[] = [];
    for (let i = 0; i + 3 < flat.length; i += 4) {
      out.push({ file: NATIVE_FILES[flat[i]!] ?? 'image', op: NATIVE_OPS[flat[i + 1]!] ?? '', a: flat[i + 2]!, b: flat[i + 3]!, data: data[i / 4] ?? null });
    }
    return out;
  }

  private checkOpen(): void {
    if (this.closed) throw new IslandError('INVALID_ARGUMENT', `volume ${this.name} is closed`, { details: { volume: this.name } });
  }

  private warn(err: unknown, msg: string): void {
    this.logger?.warn({ volume: this.name, err: (err as Error)?.message ?? String(err) }, msg);
  }
}


function bitmapOf(p: BitmapPages): PagedBitmap {
  const bits = new PagedBitmap();
  p.pages.forEach((page, i) => bits.loadPage(page, p.data.subarray(i * BITMAP_PAYLOAD_BYTES, (i + 1) * BITMAP_PAYLOAD_BYTES)));
  return bits;
}

function notSealed(s: SealState, c: number): IslandError {
  return new IslandError('INVALID_ARGUMENT', `cluster ${c} is not in sealed epoch ${s.epoch}`, { details: { cluster: c, epoch: s.epoch } });
}
