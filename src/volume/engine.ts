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
 * complete() ends the epoch, abandon() merges it back into the dirty set; so does a side log
 * past its budget, close, and a crash (recovery merges every epoch not completed).
 */
import { EventEmitter } from 'node:events';
import { IslandError } from '../errors.js';
import { Coalescer, Gate, Mutex } from './concurrency.js';
import type { LocalFile, LocalFs } from './files.js';
import type { PresentMap } from './present.js';
import { Seal, SealKeeper, type SealOps, type SealState } from './seal.js';
import { createParts, openParts, DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_SIDE_LOG_BUDGET, type PresentFetcher, type RecoveryInfo, type VolumeCreateOptions, type VolumeLogger, type VolumeOptions, type VolumeParts } from './setup.js';
import { MAX_IMAGE_LENGTH, writeState, type VolumeState } from './state.js';
import type { ChangeTracker } from './tracking.js';

export { Seal } from './seal.js';
export type { SealStatus } from './seal.js';
export { DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_REGION_SIZE, DEFAULT_SIDE_LOG_BUDGET, IMAGE_FILE } from './setup.js';
export type { PresentFetcher, RecoveryInfo, VolumeCreateOptions, VolumeLogger, VolumeOptions } from './setup.js';

/** Read-ahead of a sequential reader of missing clusters: first window, largest window. */
export const READ_AHEAD_MIN_BYTES = 512 * 1024;
export const READ_AHEAD_MAX_BYTES = 4 * 1024 * 1024;
/** How far from the last read's end a read may start and still count as sequential. */
const READ_AHEAD_SLACK_BYTES = 1024 * 1024;

export interface VolumeStats {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Whole zero clusters written as holes. */
  zeroClusters: number;
  /** fsync() calls (QEMU's flushes). */
  fsyncs: number;
  /** fdatasync calls by file; `total` is their sum. State record writes are counted apart. */
  fdatasyncs: { image: number; intent: number; dirty: number; present: number; total: number };
  /** State record replacements (each: fsync of the file and of the directory). */
  stateWrites: number;
  pageWrites: { intent: number; dirty: number; present: number };
  /** New intent epochs begun (the intent bitmap cleared). */
  intentEpochs: number;
  seals: number;
  sealsCompleted: number;
  sealsAbandoned: number;
  sideLogCopies: number;
  sideLogBytes: number;
  /** readSealed calls that saw a write race their image read and re-read the side log copy. */
  readSealedRetries: number;
  fetches: number;
  fetchedClusters: number;
  /** Clusters dirty in the current epoch. */
  dirtyClusters: number;
  /** Clusters of the open seal (0 without one). */
  sealedClusters: number;
}

export interface SealAbandonedEvent {
  epoch: number;
  reason: string;
}

type Counters = Omit<VolumeStats, 'fdatasyncs' | 'pageWrites' | 'intentEpochs' | 'sideLogCopies' | 'sideLogBytes' | 'readSealedRetries' | 'dirtyClusters' | 'sealedClusters'> & {
  imageSyncs: number;
};

function invalid(message: string, details: Record<string, unknown> = {}): IslandError {
  return new IslandError('INVALID_ARGUMENT', message, { details });
}

function checkRange(offset: number, len: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw invalid(`offset must be a non-negative integer: ${offset}`, { offset });
  if (offset + len > MAX_IMAGE_LENGTH) throw new IslandError('TOO_LARGE', `I/O up to byte ${offset + len} is past island's image limit of ${MAX_IMAGE_LENGTH}`, { details: { offset, len } });
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
  private readonly fetcher: PresentFetcher | undefined;
  private readonly logger: VolumeLogger | undefined;
  /** Logical length: grows when a write past the end starts. */
  private len: number;
  /** A lower bound of the image file's size (writes that completed, truncations). */
  private physLen: number;
  private readonly gate = new Gate();
  private readonly stateMutex = new Mutex();
  private stateSequence: number;
  private readonly seals: SealKeeper;
  private readonly fetching = new Map<number, Promise<void>>();
  /** Sequential reads of missing clusters: where the last one started and ended, and how far ahead is requested. */
  private readonly seq = { start: -1, end: -Infinity, aheadTo: -1, window: 0 };
  private readonly abort = new AbortController();
  private readonly zeroCluster: Buffer;
  private readonly flusher = new Coalescer(() => this.flushNow());
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  private readonly sealOps: SealOps;
  private readonly c: Counters = {
    reads: 0,
    writes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    zeroClusters: 0,
    fsyncs: 0,
    imageSyncs: 0,
    stateWrites: 0,
    seals: 0,
    sealsCompleted: 0,
    sealsAbandoned: 0,
    fetches: 0,
    fetchedClusters: 0,
  };

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
    this.stateSequence = p.state.sequence;
    this.recovery = p.recovery;
    this.image = p.image;
    this.tracker = p.tracker;
    this.present = p.present;
    this.fetcher = p.options.fetcher;
    this.logger = p.options.logger;
    this.len = p.imageLength;
    this.physLen = p.imageLength;
    this.zeroCluster = Buffer.alloc(this.clusterSize);
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
      complete: (s) => this.complete(s),
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
    checkRange(offset, buf.length);
    if (buf.length === 0 || offset >= this.len) return 0;
    let want = Math.min(buf.length, this.len - offset);
    const C = this.clusterSize;
    if (this.present !== null && offset < this.present.baseLength) {
      const c1 = Math.floor((offset + want - 1) / C);
      this.readAhead(offset, offset + want, c1);
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
    checkRange(offset, len);
    if (len === 0) return 0;
    const end = offset + len;
    const C = this.clusterSize;
    const c0 = Math.floor(offset / C);
    const c1 = Math.floor((end - 1) / C);
    await this.enterForWrite(offset, end, c0, c1);
    try {
      this.checkOpen();
      await this.tracker.ensureIntent(offset, end);
      if (this.seals.sealed !== null) await this.seals.protect(c0, c1);
      this.tracker.markDirty(c0, c1);
      if (end > this.len) this.len = end;
      await this.writeData(buf, offset, end);
      if (end > this.physLen) this.physLen = end;
      if (this.present !== null) for (let c = c0; c <= c1; c++) this.present.written(c);
      this.c.writes++;
      this.c.bytesWritten += len;
    } finally {
      this.gate.leave();
    }
    return len;
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
    checkRange(newLength, 0);
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
        await this.saveState();
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
        for (let c = c0; c <= c1; c++) await this.fetching.get(c)?.catch(() => undefined);
      }
      if (!this.gate.tryEnter()) await this.gate.enter();
      if (present === null || offset >= present.baseLength) return;
      // Synchronously inside the gate: once marked present, no fetch of these clusters starts.
      let ready = true;
      for (let c = c0; c <= c1 && ready; c++) ready = !this.fetching.has(c) && (present.isPresent(c) || !partial(c));
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

  // ---------- lazy restore ----------

  /** Clusters below this still come from the base snapshot until present (0: not restored). */
  get baseClusters(): number {
    return this.present === null ? 0 : Math.ceil(this.present.baseLength / this.clusterSize);
  }

  /**
   * Make clusters [c0, c1] local without a guest read (the background fill). Clusters
   * already present or being fetched are skipped or waited for; nothing is overwritten.
   */
  async prefetch(c0: number, c1: number): Promise<void> {
    this.checkOpen();
    const last = Math.min(c1, this.baseClusters - 1);
    if (c0 > last) return;
    await this.ensurePresent(c0, last);
  }


  /**
   * A reader going through missing clusters in order gets the clusters after its read
   * fetched before it asks: the window starts at READ_AHEAD_MIN_BYTES and doubles per
   * sequential read up to READ_AHEAD_MAX_BYTES; a new window is requested once the reader
   * is half way into the last one, so the fetches stay large (the fetcher reads adjacent
   * blobs with one ranged GET). Reads out of order reset it. The read never waits for it.
   */
  private readAhead(start: number, end: number, c1: number): void {
    const s = this.seq;
    const C = this.clusterSize;
    // Parallel requests of one sequential stream arrive slightly out of order: allow a slack.
    const sequential = start > s.start && Math.abs(start - s.end) <= READ_AHEAD_SLACK_BYTES;
    s.start = start;
    s.end = Math.max(end, sequential ? s.end : 0);
    if (!sequential) {
      s.window = 0;
      s.aheadTo = c1;
      return;
    }
    s.window = Math.min(READ_AHEAD_MAX_BYTES, Math.max(READ_AHEAD_MIN_BYTES, s.window * 2));
    const clusters = Math.max(1, Math.floor(s.window / C));
    if (s.aheadTo - c1 > clusters / 2) return;
    const from = Math.max(c1, s.aheadTo) + 1;
    const to = Math.min(c1 + clusters, this.baseClusters - 1);
    if (from > to) return;
    s.aheadTo = to;
    // A failed read-ahead costs nothing: the read that needs the cluster fetches it again.
    this.ensurePresent(from, to).catch(() => undefined);
  }

  /** Make clusters [c0, c1] local, fetching missing runs (single flight per cluster). */
  private async ensurePresent(c0: number, c1: number): Promise<void> {
    const present = this.present;
    if (present === null) return;
    const waits: Array<Promise<void>> = [];
    let runStart = -1;
    const endRun = (c: number): void => {
      if (runStart >= 0) waits.push(this.fetchRun(runStart, c - runStart));
      runStart = -1;
    };
    for (let c = c0; c <= c1; c++) {
      const inflight = this.fetching.get(c);
      if (inflight !== undefined) {
        endRun(c);
        waits.push(inflight);
      } else if (present.isPresent(c)) {
        endRun(c);
      } else if (runStart < 0) {
        runStart = c;
      }
    }
    endRun(c1 + 1);
    if (waits.length > 0) await Promise.all(waits);
  }

  /**
   * Store base content the caller read and verified itself: cluster `c` from `data`, only
   * while it is still missing. A cluster being fetched is waited for; one that is present
   * (written by the guest, fetched) is left alone. The background fill uses this for blobs
   * that lie together in a pack but apart in the volume (one ranged GET for all of them).
   */
  async supply(c: number, data: Buffer): Promise<void> {
    this.checkOpen();
    if (this.present === null || c >= this.baseClusters) return;
    const inflight = this.fetching.get(c);
    if (inflight !== undefined) return inflight;
    if (this.present.isPresent(c)) return;
    return this.fetchRun(c, 1, data);
  }

  private fetchRun(first: number, count: number, supplied?: Buffer): Promise<void> {
    const C = this.clusterSize;
    const run = (async () => {
      const fetcher = this.fetcher;
      if (fetcher === undefined && supplied === undefined) {
        throw new IslandError('LOCAL_IO', `cluster ${first} of volume ${this.name} is not local and no fetcher is configured`, { details: { volume: this.name, cluster: first } });
      }
      this.c.fetches++;
      const data = supplied ?? (await fetcher!.fetch(first, count, this.abort.signal));
      if (data.length > count * C) throw new IslandError('INTERNAL', `fetcher returned ${data.length} bytes for ${count} clusters`);
      if (!this.gate.tryEnter()) await this.gate.enter();
      try {
        this.checkOpen();
        const present = this.present as PresentMap;
        for (let i = 0; i < count; i++) {
          const c = first + i;
          if (present.isPresent(c)) continue; // written (or truncated away) meanwhile
          const from = c * C;
          const part = data.subarray(Math.min(i * C, data.length), Math.min((i + 1) * C, data.length));
          const n = Math.max(0, Math.min(part.length, this.len - from));
          if (n > 0) {
            const zero = part.compare(this.zeroCluster, 0, n, 0, n) === 0;
            if (!zero || !(await this.image.punchHole(from, n))) await this.image.write(part, 0, n, from);
          }
          present.mark(c);
          present.written(c);
          this.c.fetchedClusters++;
        }
      } finally {
        this.gate.leave();
      }
    })();
    const tracked: Promise<void> = run.finally(() => {
      for (let i = 0; i < count; i++) if (this.fetching.get(first + i) === tracked) this.fetching.delete(first + i);
    });
    for (let i = 0; i < count; i++) this.fetching.set(first + i, tracked);
    return tracked;
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

  private async complete(s: SealState): Promise<void> {
    s.checkOpen();
    if (!this.seals.end(s, 'completed')) return;
    this.tracker.completeSealed();
    this.c.sealsCompleted++;
    await this.saveState();
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
    await this.saveState();
  }

  private persistInBackground(): void {
    this.tracker.persist().catch((err: unknown) => this.warn(err, 'persisting dirty bits failed'));
  }

  private saveState(clean = false): Promise<void> {
    return this.stateMutex.run(async () => {
      const intentEpoch = this.tracker.recordableIntentEpoch;
      const s: VolumeState = {
        name: this.name,
        virtualSize: this.virtualSize,
        clusterSize: this.clusterSize,
        regionSize: this.regionSize,
        imageLength: this.len,
        generation: this.generation,
        epoch: this.tracker.epoch,
        completedEpoch: this.tracker.completedEpoch,
        intentEpoch,
        baseLength: this.present?.baseLength ?? 0,
        baseSnapshot: this.baseSnapshot,
        clean,
        sequence: ++this.stateSequence,
      };
      await writeState(this.fs, this.dir, s);
      this.c.stateWrites++;
      this.tracker.intentEpochRecorded(intentEpoch);
    });
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
    await Promise.allSettled([...this.fetching.values()]);
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
      if (clean) await this.saveState(true);
    } finally {
      await Promise.allSettled([this.image.close(), this.seals.close(), this.present?.close()]);
    }
  }

  /** Clusters dirty in the current epoch, ascending. */
  /**
   * Mark every cluster of the image dirty, durably: the next snapshot uploads the whole
   * image (used when the snapshot the change tracking was relative to is gone).
   */
  async markAllDirty(): Promise<void> {
    this.checkOpen();
    const n = Math.ceil(this.len / this.clusterSize);
    if (n > 0) {
      await this.tracker.ensureIntent(0, this.len);
      this.tracker.markDirty(0, n - 1);
    }
    await this.tracker.persist();
  }

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
    const t = this.tracker.counters;
    const pages = this.tracker.pageWrites();
    const presentSyncs = this.present?.syncs ?? 0;
    const { imageSyncs, ...rest } = this.c;
    return {
      ...rest,
      fdatasyncs: { image: imageSyncs, intent: t.intentSyncs, dirty: t.dirtySyncs, present: presentSyncs, total: imageSyncs + t.intentSyncs + t.dirtySyncs + presentSyncs },
      pageWrites: { intent: pages.intent, dirty: pages.dirty, present: this.present?.pageWrites ?? 0 },
      intentEpochs: t.intentEpochs,
      sideLogCopies: this.seals.copies,
      sideLogBytes: this.seals.sideLogBytes,
      readSealedRetries: this.seals.readRetries,
      dirtyClusters: this.tracker.current.count(),
      sealedClusters: this.seals.sealed?.clusterCount() ?? 0,
    };
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
