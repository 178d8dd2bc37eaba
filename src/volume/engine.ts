/**
 * The volume engine: one attached volume's image on local disk, with change tracking and
 * epochs, independent of FUSE (docs/formats/local-state.md has the files and protocols).
 *
 * I/O. read/write at any offset and length (across clusters; writes past the end grow the
 * image, reads past it are short); truncate; fsync is QEMU's fdatasync. Writes run
 * concurrently through a gate that seal, truncate and the start of a new intent epoch close.
 *
 * Write path, in order: (restored volumes) bring the base content of partially written
 * clusters that are not local yet; enter the gate; make the write-intent bits of the regions
 * durable (protocol A of tracking.ts: the first write to a region in an intent epoch pays one
 * page write and one fdatasync, later ones nothing); copy sealed clusters about to change to
 * the side log; set the dirty bits; write the data. A whole cluster of zeros is not written:
 * its dirty bit is persisted, then a hole is punched (the file stays sparse).
 *
 * fsync: fdatasync the image; if present bits changed (restored volumes only), write and sync
 * their pages before replying. In the common case that is exactly one fdatasync.
 *
 * Epochs. seal() drains the writes in flight and swaps the dirty set for an empty one in O(1),
 * then (with writes flowing again) fdatasyncs the image so the sealed content is durable; the
 * Seal handle lists the sealed clusters and reads each one as it was at the seal.
 * complete(id) ends the epoch and records snapshot `id` as the committed snapshot in the
 * same state record write; abandon() merges it back into the dirty set; so does a side log
 * past its budget, close, and a crash (recovery merges every epoch not completed).
 *
 * The state record is the one owner of what is known of the local copy: the committed
 * snapshot (committedSnapshot; markAllDirty forgets it) and the filled mark (markFilled).
 */
import { EventEmitter } from 'node:events';
import { IslandError } from '../errors.js';
import { Coalescer, Gate } from './concurrency.js';
import type { LocalFile, LocalFs } from './files.js';
import type { PresentMap } from './present.js';
import { Seal, SealKeeper, type SealOps, type SealState } from './seal.js';
import { createParts, openParts, syncedPagesOf, DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_SIDE_LOG_BUDGET, type RecoveryInfo, type VolumeCreateOptions, type VolumeLogger, type VolumeOptions, type VolumeParts } from './setup.js';
import { checkIoRange } from './state.js';
import { StateKeeper } from './state-keeper.js';
import { LazyRestore } from './lazy.js';
import { volumeStats, zeroCounters, type Counters, type VolumeStats } from './stats.js';
import { parseSnapshotId } from '../format/names.js';
import type { ChangeTracker } from './tracking.js';

export { Seal } from './seal.js';
export type { VolumeStats } from './stats.js';
export type { SealStatus } from './seal.js';
export { DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_REGION_SIZE, DEFAULT_SIDE_LOG_BUDGET, IMAGE_FILE, hasVolumeState, inspectVolume, localStateDamaged } from './setup.js';
export type { LocalInspection } from './setup.js';
export type { PresentFetcher, RecoveryInfo, VolumeCreateOptions, VolumeLogger, VolumeOptions } from './setup.js';

export { READ_AHEAD_MAX_BYTES, READ_AHEAD_MIN_BYTES } from './lazy.js';

export interface SealAbandonedEvent {
  epoch: number;
  reason: string;
}

function invalid(message: string, details: Record<string, unknown> = {}): IslandError {
  return new IslandError('INVALID_ARGUMENT', message, { details });
}


export class Volume extends EventEmitter {
  readonly dir: string;
  readonly name: string;
  readonly virtualSize: number;
  readonly clusterSize: number;
  readonly regionSize: number;
  readonly baseSnapshot: string | null;
  readonly generation: number;
  /** What open() found and did. */
  readonly recovery: RecoveryInfo;

  private readonly fs: LocalFs;
  private readonly image: LocalFile;
  private readonly tracker: ChangeTracker;
  private readonly present: PresentMap | null;
  private readonly logger: VolumeLogger | undefined;
  /** Logical length: grows when a write past the end starts. */
  private len: number;
  /** A lower bound of the image file's size (writes that completed, truncations). */
  private physLen: number;
  private readonly gate = new Gate();
  private readonly state: StateKeeper;
  private readonly seals: SealKeeper;
  private readonly lazy: LazyRestore | null;
  private readonly abort = new AbortController();
  private readonly zeroCluster: Buffer;
  private readonly flusher = new Coalescer(() => this.flushNow());
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  private readonly sealOps: SealOps;
  private readonly c: Counters = zeroCounters();

  private constructor(p: VolumeParts) {
    super();
    this.dir = p.dir;
    this.fs = p.fs;
    this.name = p.state.name;
    this.virtualSize = p.state.virtualSize;
    this.clusterSize = p.state.clusterSize;
    this.regionSize = p.state.regionSize;
    this.baseSnapshot = p.state.baseSnapshot;
    this.generation = p.state.generation;
    this.state = new StateKeeper({
      fs: p.fs,
      dir: p.dir,
      initial: p.state,
      now: () => ({
        imageLength: this.len,
        epoch: this.tracker.epoch,
        completedEpoch: this.tracker.completedEpoch,
        intentEpoch: this.tracker.recordableIntentEpoch,
        baseLength: this.present?.baseLength ?? 0,
        syncedPages: syncedPagesOf(this.tracker, this.present),
      }),
      written: (st) => {
        this.c.stateWrites++;
        this.tracker.intentEpochRecorded(st.intentEpoch);
      },
    });
    this.recovery = p.recovery;
    this.image = p.image;
    this.tracker = p.tracker;
    this.present = p.present;
    this.logger = p.options.logger;
    this.len = p.imageLength;
    this.physLen = p.imageLength;
    this.zeroCluster = Buffer.alloc(this.clusterSize);
    this.lazy = p.present === null ? null : new LazyRestore(p.present, p.options.fetcher, this.abort.signal, {
      name: this.name, clusterSize: this.clusterSize, gate: this.gate, image: this.image, zeroCluster: this.zeroCluster, counters: this.c, length: () => this.len, checkOpen: () => this.checkOpen(),
    });
    this.seals = new SealKeeper(p.sideLog, this.clusterSize, p.options.sideLogBudget ?? DEFAULT_SIDE_LOG_BUDGET, {
      readImageInGate: (buf, len, pos) => this.image.read(buf, 0, len, pos),
      readImage: (buf, len, pos) => this.gated(() => this.image.read(buf, 0, len, pos)),
      ensurePresent: (c) => this.ensurePresent(c, c),
      abandon: (s, reason) => this.abandonSeal(s, reason),
      warn: (err, msg) => this.warn(err, msg),
    });
    this.sealOps = {
      readSealed: (s, c) => this.seals.readSealed(s, c),
      markUploaded: (s, c) => this.seals.markUploaded(s, c),
      complete: (s, id) => this.complete(s, id),
      abandon: async (s, reason) => {
        s.checkOpen();
        this.abandonSeal(s, reason);
        await this.tracker.persist();
      },
    };
    const every = p.options.flushIntervalMs ?? DEFAULT_FLUSH_INTERVAL_MS;
    if (every > 0) {
      this.timer = setInterval(() => {
        this.flushBitmaps().catch((err: unknown) => this.warn(err, 'background bitmap flush failed'));
      }, every);
      this.timer.unref();
    }
  }

  /** Create a new volume's local state in `dir` and open it. */
  static async create(dir: string, opts: VolumeCreateOptions): Promise<Volume> {
    return new Volume(await createParts(dir, opts));
  }

  /** Open a volume's local state, recovering change tracking after a crash. */
  static async open(dir: string, opts: VolumeOptions = {}): Promise<Volume> {
    return new Volume(await openParts(dir, opts));
  }

  /** The image length in bytes. */
  get length(): number {
    return this.len;
  }

  // ---------- I/O ----------

  /** Read buf.length bytes at `offset`; returns how many (short at the end of the image). */
  async read(buf: Buffer, offset: number): Promise<number> {
    this.checkOpen();
    checkIoRange(offset, buf.length);
    if (buf.length === 0 || offset >= this.len) return 0;
    let want = Math.min(buf.length, this.len - offset);
    const C = this.clusterSize;
    if (this.present !== null && offset < this.present.baseLength) {
      const c1 = Math.floor((offset + want - 1) / C);
      this.lazy?.readAhead(offset, offset + want, c1);
      await this.ensurePresent(Math.floor(offset / C), c1);
    }
    return this.gated(async () => {
      want = Math.min(want, this.len - offset);
      if (want <= 0) return 0;
      const n = await this.image.read(buf, 0, want, offset);
      if (n < want) buf.fill(0, n, want);
      this.c.reads++;
      this.c.bytesRead += want;
      return want;
    });
  }

  /** Write all of buf at `offset` (the image grows as needed); returns buf.length. */
  async write(buf: Buffer, offset: number): Promise<number> {
    this.checkOpen();
    const len = buf.length;
    checkIoRange(offset, len);
    if (len === 0) return 0;
    const end = offset + len;
    await this.change(offset, end, async () => {
      if (end > this.len) this.len = end;
      await this.writeData(buf, offset, end);
      if (end > this.physLen) this.physLen = end;
    });
    this.c.writes++;
    this.c.bytesWritten += len;
    return len;
  }

  /**
   * Discard (QEMU's discard and write-zeroes, a guest's fstrim): bytes [offset, offset + len)
   * below the image length read as zeros afterwards; the length does not change. The same
   * steps as a write (intent, side-log copy, dirty bits), then the dirty pages are made
   * durable (a hole cannot be told from an old one by a rescan) and the hole is punched.
   */
  async discard(offset: number, len: number): Promise<void> {
    this.checkOpen();
    checkIoRange(offset, len);
    const end = Math.min(offset + len, this.len);
    if (len === 0 || offset >= end) return;
    await this.change(offset, end, async () => {
      await this.tracker.persist();
      if (!(await this.image.punchHole(offset, end - offset))) await this.image.write(Buffer.alloc(end - offset), 0, end - offset, offset);
    });
  }

  /**
   * The steps of every change to [offset, end), inside the gate: the write-intent bits,
   * the side-log copy of sealed clusters, the dirty bits; then `apply` (the data), then
   * the present bits of the clusters it covered.
   */
  private async change(offset: number, end: number, apply: () => Promise<void>): Promise<void> {
    const c0 = Math.floor(offset / this.clusterSize);
    const c1 = Math.floor((end - 1) / this.clusterSize);
    await this.enterForWrite(offset, end, c0, c1);
    try {
      this.checkOpen();
      await this.tracker.ensureIntent(offset, end);
      if (this.seals.sealed !== null) await this.seals.protect(c0, c1);
      this.tracker.markDirty(c0, c1);
      await apply();
      if (this.present !== null) for (let c = c0; c <= c1; c++) this.present.written(c);
    } finally {
      this.gate.leave();
    }
  }

  /** QEMU's fdatasync: every completed write is durable, with what is needed to find it again. */
  async fsync(): Promise<void> {
    this.checkOpen();
    await this.gated(async () => {
      this.c.fsyncs++;
      await this.syncImageAndPresent();
    });
  }

  /** Set the image length. Both ways the clusters between the old and new end become dirty. */
  async truncate(newLength: number): Promise<void> {
    this.checkOpen();
    checkIoRange(newLength, 0);
    const C = this.clusterSize;
    const edge = Math.min(newLength, this.len);
    // The cluster cut by the new end (or left partial by the old one) keeps base content.
    if (this.present !== null && edge % C !== 0 && edge < this.present.baseLength) await this.ensurePresent(Math.floor(edge / C), Math.floor(edge / C));
    await this.gate.exclusive(async () => {
      this.checkOpen();
      const old = this.len;
      if (newLength === old) return;
      const lo = Math.min(old, newLength);
      const hi = Math.max(old, newLength);
      const c0 = Math.floor(lo / C);
      const c1 = Math.ceil(hi / C) - 1;
      await this.seals.protect(c0, c1);
      this.tracker.current.setRange(c0, c1 + 1);
      // A truncation leaves holes, which a rescan cannot tell from old ones: bits first.
      await this.tracker.persist();
      await this.image.truncate(newLength);
      this.len = newLength;
      this.physLen = newLength;
      if (this.present !== null && newLength < this.present.baseLength) {
        // What lies past the new end is no longer base content, even if the image grows again.
        this.present.baseLength = Math.ceil(newLength / C) * C;
        await this.image.datasync();
        this.c.imageSyncs++;
        await this.state.save();
      }
    });
  }

  private async syncImageAndPresent(): Promise<void> {
    const pending = this.present?.takePending() ?? [];
    try {
      await this.image.datasync();
      this.c.imageSyncs++;
    } catch (err) {
      this.present?.restorePending(pending);
      throw err;
    }
    if (pending.length > 0) await this.present?.persist(pending);
  }

  /** Enter the gate for a write, with the clusters of a restored volume ready for it. */
  private async enterForWrite(offset: number, end: number, c0: number, c1: number): Promise<void> {
    const C = this.clusterSize;
    const partial = (c: number): boolean => c * C < offset || (c + 1) * C > end;
    for (;;) {
      const present = this.present;
      if (present !== null && offset < present.baseLength) {
        const edges = c0 === c1 ? [c0] : [c0, c1];
        for (const c of edges) if (partial(c) && !present.isPresent(c)) await this.ensurePresent(c, c);
        for (let c = c0; c <= c1; c++) await this.lazy?.fetching.get(c)?.catch(() => undefined);
      }
      if (!this.gate.tryEnter()) await this.gate.enter();
      if (present === null || offset >= present.baseLength) return;
      // Synchronously inside the gate: once marked present, no fetch of these clusters starts.
      let ready = true;
      for (let c = c0; c <= c1 && ready; c++) ready = !this.lazy?.fetching.has(c) && (present.isPresent(c) || !partial(c));
      if (ready) {
        for (let c = c0; c <= c1; c++) present.mark(c);
        return;
      }
      this.gate.leave();
    }
  }

  /** Write the data, punching holes for whole clusters of zeros. */
  private async writeData(buf: Buffer, offset: number, end: number): Promise<void> {
    const C = this.clusterSize;
    const first = Math.ceil(offset / C);
    const last = Math.floor(end / C);
    let runs: Array<[number, number]> | null = null;
    if (first < last && this.image.canPunchHoles()) {
      for (let c = first; c < last; c++) {
        const at = c * C - offset;
        if (buf.compare(this.zeroCluster, 0, C, at, at + C) !== 0) continue;
        const run = runs?.[runs.length - 1];
        if (run !== undefined && run[1] === c) run[1] = c + 1;
        else (runs ??= []).push([c, c + 1]);
      }
    }
    if (runs === null) {
      await this.image.write(buf, 0, buf.length, offset);
      return;
    }
    // A hole is invisible to a rescan after a crash: its dirty bits reach the disk first.
    await this.tracker.persist();
    let pos = offset;
    for (const [a, b] of runs) {
      const from = a * C;
      const to = b * C;
      if (from > pos) await this.image.write(buf, pos - offset, from - pos, pos);
      if (to > this.physLen) {
        // Extend by writing the last byte: a write never shrinks the file, as a racing ftruncate could.
        await this.image.write(buf, to - 1 - offset, 1, to - 1);
        this.physLen = Math.max(this.physLen, to);
      }
      if (await this.image.punchHole(from, to - from)) this.c.zeroClusters += b - a;
      else await this.image.write(buf, from - offset, to - from, from);
      pos = to;
    }
    if (end > pos) await this.image.write(buf, pos - offset, end - pos, pos);
  }

  // ---------- lazy restore (lazy.ts) ----------

  /** Clusters below this still come from the base snapshot until present (0: not restored). */
  get baseClusters(): number {
    return this.lazy?.baseClusters ?? 0;
  }

  /**
   * Make clusters [c0, c1] local without a guest read (the background fill). Clusters
   * already present or being fetched are skipped or waited for; nothing is overwritten.
   */
  async prefetch(c0: number, c1: number): Promise<void> {
    this.checkOpen();
    await this.lazy?.prefetch(c0, c1);
  }

  /**
   * Store base content the caller read and verified itself: cluster `c` from `data`, only
   * while it is still missing (lazy.ts). The background fill uses this.
   */
  async supply(c: number, data: Buffer): Promise<void> {
    this.checkOpen();
    await this.lazy?.supply(c, data);
  }

  private ensurePresent(c0: number, c1: number): Promise<void> {
    return this.lazy?.ensurePresent(c0, c1) ?? Promise.resolve();
  }

  // ---------- epochs ----------

  /**
   * Seal the current epoch: drain the writes in flight, swap the dirty set in O(1), and return
   * the handle of the sealed epoch. BUSY while another seal is open.
   */
  async seal(): Promise<Seal> {
    this.checkOpen();
    const busy = (): IslandError => new IslandError('BUSY', `volume ${this.name} already has a sealed epoch in progress`, { details: { volume: this.name } });
    if (this.seals.sealed !== null) throw busy();
    const s = await this.gate.exclusive(async () => {
      this.checkOpen();
      if (this.seals.sealed !== null) throw busy();
      await this.seals.prepare();
      const { bits, epoch } = this.tracker.swap();
      return this.seals.begin(epoch, bits, this.len);
    });
    this.c.seals++;
    this.persistInBackground();
    // Make the sealed content durable (writes go on meanwhile): a crash must not take back
    // what a completed snapshot holds, or the image would differ from it untracked.
    try {
      await this.image.datasync();
      this.c.imageSyncs++;
    } catch (err) {
      this.abandonSeal(s, `syncing the image at the seal failed: ${(err as Error).message}`);
      throw err;
    }
    return new Seal(s, this.sealOps, this.clusterSize);
  }

  /**
   * The sealed epoch is in snapshot `id`: one state record write carries both the completed
   * epoch and the committed snapshot id, so a crash leaves the old pair or the new one.
   */
  private async complete(s: SealState, id: string): Promise<void> {
    const committed = parseSnapshotId(id, 'committed snapshot id');
    s.checkOpen();
    if (!this.seals.end(s, 'completed')) return;
    this.tracker.completeSealed();
    this.c.sealsCompleted++;
    await this.state.commit(committed);
  }

  private abandonSeal(s: SealState, reason: string): void {
    if (!this.seals.end(s, 'abandoned', reason)) return;
    this.tracker.abandonSealed();
    this.c.sealsAbandoned++;
    this.logger?.warn({ volume: this.name, epoch: s.epoch, reason }, 'sealed epoch abandoned: its clusters are dirty again');
    this.emit('seal-abandoned', { epoch: s.epoch, reason } satisfies SealAbandonedEvent);
    this.persistInBackground();
  }

  // ---------- bitmaps in the background ----------

  /**
   * Persist dirty and present bits and start a new intent epoch (protocol C of tracking.ts):
   * what the timer does. Concurrent calls share one run.
   */
  flushBitmaps(): Promise<void> {
    return this.flusher.request();
  }

  private async flushNow(): Promise<void> {
    if (this.closed) return;
    if (this.present?.hasPending() === true) await this.syncImageAndPresent();
    if (!this.tracker.hasIntent()) {
      await this.tracker.persist();
      return;
    }
    const epoch = await this.gate.exclusive(() => {
      this.checkOpen();
      return this.tracker.beginIntentEpoch();
    });
    await this.tracker.persist();
    this.tracker.intentPersisted(epoch);
    await this.state.save();
  }

  private persistInBackground(): void {
    this.tracker.persist().catch((err: unknown) => this.warn(err, 'persisting dirty bits failed'));
  }

  // ---------- lifecycle and introspection ----------

  /**
   * Abandon an open seal, persist every bit, sync the image and write the clean mark. May be
   * called twice; I/O after close fails with INVALID_ARGUMENT.
   */
  close(): Promise<void> {
    this.closing ??= this.closeNow();
    return this.closing;
  }

  private async closeNow(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    await this.gate.exclusive(() => {
      this.closed = true;
    });
    this.abort.abort(new IslandError('ABORTED', `volume ${this.name} is closing`));
    await Promise.allSettled([...(this.lazy?.fetching.values() ?? [])]);
    if (this.seals.sealed !== null) this.abandonSeal(this.seals.sealed, 'the volume was closed');
    await this.flusher.idle();
    let clean = true;
    try {
      await this.tracker.persist();
      await this.syncImageAndPresent();
      await this.seals.idle();
    } catch (err) {
      clean = false;
      this.warn(err, 'closing the volume: bits could not be persisted; the next open recovers as after a crash');
    }
    await this.tracker.close();
    try {
      if (clean) await this.state.save(true);
    } finally {
      await Promise.allSettled([this.image.close(), this.seals.close(), this.present?.close()]);
    }
  }

  // ---------- what the state record keeps for the daemon ----------

  /**
   * The snapshot whose content the change tracking is relative to: the last snapshot this
   * copy completed (Seal.complete), or the one it was created equal to. Null: none is known,
   * and every cluster counts as changed (the next snapshot must upload everything).
   */
  get committedSnapshot(): string | null {
    return this.state.committedSnapshot;
  }

  /** Every cluster of the base snapshot is local (markFilled was called); false without a base. */
  get filled(): boolean {
    return this.state.filled;
  }

  /** Record durably, in the state record, that every cluster of the base snapshot is local. */
  async markFilled(): Promise<void> {
    this.checkOpen();
    if (this.present === null) throw invalid(`volume ${this.name} was not restored from a snapshot: nothing to fill`, { volume: this.name });
    await this.state.markFilled();
  }

  /**
   * Forget the committed snapshot (it is gone, or unknown) and mark every cluster of the
   * image dirty, durably: the next snapshot uploads the whole image. The bits are durable
   * before the state record says "no committed snapshot", so a crash in between leaves more
   * dirty bits with the old id (an over-approximation), never fewer.
   */
  async markAllDirty(): Promise<void> {
    this.checkOpen();
    const n = Math.ceil(this.len / this.clusterSize);
    if (n > 0) {
      await this.tracker.ensureIntent(0, this.len);
      this.tracker.current.setRange(0, n);
    }
    await this.tracker.persist();
    await this.state.commit(null);
  }

  /** Clusters dirty in the current epoch, ascending. */
  dirtyClusters(): Generator<number> {
    return this.tracker.current.bits();
  }

  /** True when the cluster is dirty in the current or the sealed epoch. */
  isDirty(cluster: number): boolean {
    return this.tracker.isDirty(cluster);
  }

  /** True when the cluster's content is local (always, for a volume not restored from a snapshot). */
  isPresent(cluster: number): boolean {
    return this.present === null || this.present.isPresent(cluster);
  }

  stats(): VolumeStats {
    return volumeStats(this.c, this.tracker, this.present, this.seals);
  }

  /** Run a local I/O through the write gate (so exclusive sections and close wait for it). */
  private async gated<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.gate.tryEnter()) await this.gate.enter();
    try {
      this.checkOpen();
      return await fn();
    } finally {
      this.gate.leave();
    }
  }

  private checkOpen(): void {
    if (this.closed) throw invalid(`volume ${this.name} is closed`, { volume: this.name });
  }

  private warn(err: unknown, msg: string): void {
    this.logger?.warn({ volume: this.name, err: (err as Error)?.message ?? String(err) }, msg);
  }
}
