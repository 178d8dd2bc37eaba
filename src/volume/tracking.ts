/**
 * Change tracking of one volume: the dirty bitmaps (current epoch and sealed epoch) and the
 * write-intent bitmap, in memory and on disk, with the ordering invariant 6 requires.
 *
 * Files: `dirty.0` and `dirty.1` (kind dirty; epoch e lives in dirty.(e % 2), each page
 * stamped with e) and `intent` (kind intent; pages stamped with the intent epoch). A reader
 * after a crash takes dirty pages stamped after the completed epoch, from both files, and
 * intent pages stamped at or after the intent epoch of the state record (engine.ts).
 *
 * Protocols (the race each step closes):
 *  A. First write to a region in an intent epoch: set the region's bit in memory, write the
 *     intent page and fdatasync the intent file, then let the write proceed. Later writes to
 *     the region see the bit durable and pay nothing. Concurrent first writes share one
 *     page write and one fdatasync (group commit).
 *  B. Persisting dirty bits (lazily: timer, seal, close; eagerly before a hole is punched or
 *     the image is truncated, since a hole is invisible to a rescan): pages of the sealed
 *     epoch are written and synced before pages of the current epoch. The current epoch's
 *     file held the epoch before the seal; whatever of it was merged back into the sealed
 *     set (an abandoned seal) is therefore durable in the sealed file before it is overwritten.
 *  C. A new intent epoch (clearing the intent bitmap): (1) with no write in flight, switch to
 *     epoch I+1 in memory; pages written from now on carry I+1 and keep the bits of I (a
 *     reader counts every stamp >= the recorded epoch, so the bits of I stay visible until
 *     step 3); (2) persist all dirty bits (B): every write that relied on an intent bit of I
 *     has set its dirty bit before step 1; (3) write the state record with intent epoch I+1:
 *     from now on the bits of I are ignored. A failure leaves I recorded and I+1 pages still
 *     counted: a larger rescan after a crash, never a lost change.
 */
import { IslandError } from '../errors.js';
import { BITS_PER_PAGE, PAGE_KIND_DIRTY, PAGE_KIND_INTENT } from './bitmap-page.js';
import { PagedBitmap } from './bitmap.js';
import type { BitmapFile, PageWrite } from './bitmap-file.js';
import { Coalescer, Mutex } from './concurrency.js';

export const DIRTY_FILES = ['dirty.0', 'dirty.1'] as const;
export const INTENT_FILE = 'intent';
export { PAGE_KIND_DIRTY, PAGE_KIND_INTENT };

export interface TrackerCounters {
  dirtySyncs: number;
  intentSyncs: number;
  intentEpochs: number;
}

export interface TrackerInit {
  regionSize: number;
  dirtyFiles: readonly [BitmapFile, BitmapFile];
  intentFile: BitmapFile;
  epoch: number;
  completedEpoch: number;
  intentEpoch: number;
  /** Dirty bits of the current epoch; its unsaved pages are persisted by the next persist(). */
  current: PagedBitmap;
}

export class ChangeTracker {
  readonly regionSize: number;
  epoch: number;
  completedEpoch: number;
  /** Intent epoch pages are written with now. */
  intentEpoch: number;
  /**
   * The intent epoch the state record may carry: an epoch whose predecessors' writes all have
   * durable dirty bits (protocol C step 2). A state record written for any other reason (a
   * completed seal) must not record an epoch past this one.
   */
  recordableIntentEpoch: number;
  current: PagedBitmap;
  sealed: { bits: PagedBitmap; epoch: number } | null = null;
  readonly counters: TrackerCounters = { dirtySyncs: 0, intentSyncs: 0, intentEpochs: 0 };

  private readonly dirtyFiles: readonly [BitmapFile, BitmapFile];
  private readonly intentFile: BitmapFile;
  /** Regions wanted in the current intent epoch (a superset of `intentDurable`). */
  private intentWanted = new PagedBitmap();
  /** Regions whose bit is durable in the current intent epoch. */
  private intentDurable = new PagedBitmap();
  /** Bits of older intent epochs not yet superseded by a durable state record (protocol C). */
  private intentPrev: PagedBitmap | null = null;
  private readonly intentFlush = new Coalescer(() => this.flushIntent());
  private readonly persistMutex = new Mutex();
  private closed = false;

  constructor(init: TrackerInit) {
    this.regionSize = init.regionSize;
    this.dirtyFiles = init.dirtyFiles;
    this.intentFile = init.intentFile;
    this.epoch = init.epoch;
    this.completedEpoch = init.completedEpoch;
    this.intentEpoch = init.intentEpoch;
    this.recordableIntentEpoch = init.intentEpoch;
    this.current = init.current;
  }

  // ---------- write intent (protocol A) ----------

  /** Make the intent bits of every region overlapping bytes [from, to) durable. */
  async ensureIntent(from: number, to: number): Promise<void> {
    const r0 = Math.floor(from / this.regionSize);
    const r1 = Math.floor((Math.max(to, from + 1) - 1) / this.regionSize);
    let missing = false;
    for (let r = r0; r <= r1; r++) {
      if (!this.intentDurable.get(r)) {
        this.intentWanted.set(r);
        missing = true;
      }
    }
    if (!missing) return;
    // A run that starts after our bits were set includes them; a second round only when a
    // new intent epoch began in between (it cannot while the caller holds the write gate).
    for (let round = 0; round < 2; round++) {
      await this.intentFlush.request();
      let done = true;
      for (let r = r0; r <= r1 && done; r++) {
        if (!this.intentDurable.get(r)) {
          this.intentWanted.set(r);
          done = false;
        }
      }
      if (done) return;
    }
    throw new IslandError('INTERNAL', 'write-intent bits did not become durable');
  }

  private intentPayload(p: number): Uint8Array | null {
    const wanted = this.intentWanted.page(p);
    const prev = this.intentPrev?.page(p);
    if (prev === undefined) return wanted === undefined ? null : Uint8Array.prototype.slice.call(wanted);
    const out = Uint8Array.prototype.slice.call(prev);
    if (wanted !== undefined) for (let i = 0; i < out.length; i++) out[i] = (out[i] ?? 0) | (wanted[i] ?? 0);
    return out;
  }

  private async flushIntent(): Promise<void> {
    const pages = this.intentWanted.takeUnsaved();
    if (pages.length === 0) return;
    const stamp = this.intentEpoch;
    const durable = this.intentDurable;
    const writes: PageWrite[] = pages.map((index) => ({ index, stamp, payload: this.intentPayload(index) }));
    try {
      await this.intentFile.writePages(writes);
      await this.intentFile.datasync();
      this.counters.intentSyncs++;
    } catch (err) {
      if (this.intentEpoch === stamp) this.intentWanted.markUnsaved(pages);
      throw err;
    }
    for (const w of writes) if (w.payload !== null) durable.orPage(w.index, w.payload);
  }

  /** True when some region has its intent bit set, or an older intent epoch is still recorded. */
  hasIntent(): boolean {
    return this.intentPrev !== null || this.intentWanted.pageIndices().length > 0;
  }

  /** Protocol C step 1 (the caller holds the write gate exclusively); returns the new epoch. */
  beginIntentEpoch(): number {
    const prev = this.intentPrev ?? new PagedBitmap();
    prev.or(this.intentDurable);
    prev.takeUnsaved();
    this.intentPrev = prev;
    this.intentEpoch++;
    this.intentWanted = new PagedBitmap();
    this.intentDurable = new PagedBitmap();
    this.counters.intentEpochs++;
    return this.intentEpoch;
  }

  /** Protocol C step 2 done for `epoch`: the state record may now carry it. */
  intentPersisted(epoch: number): void {
    if (epoch > this.recordableIntentEpoch) this.recordableIntentEpoch = epoch;
  }

  /** Protocol C step 3 done: the state record carries `epoch`; bits of older epochs are dead. */
  intentEpochRecorded(epoch: number): void {
    if (epoch === this.intentEpoch) this.intentPrev = null;
  }

  // ---------- dirty bits ----------

  /** Mark clusters [c0, c1] (inclusive) dirty in the current epoch. */
  markDirty(c0: number, c1: number): void {
    for (let c = c0; c <= c1; c++) this.current.set(c);
  }

  isDirty(c: number): boolean {
    return this.current.get(c) || (this.sealed?.bits.get(c) ?? false);
  }

  /** Seal: the current set becomes the sealed set; O(1). */
  swap(): { bits: PagedBitmap; epoch: number } {
    if (this.sealed !== null) throw new IslandError('BUSY', 'a sealed epoch is already open');
    const sealed = { bits: this.current, epoch: this.epoch };
    this.sealed = sealed;
    this.current = new PagedBitmap();
    this.epoch++;
    return sealed;
  }

  /** The sealed epoch is in a completed snapshot. */
  completeSealed(): void {
    if (this.sealed === null) return;
    this.completedEpoch = this.sealed.epoch;
    this.sealed = null;
  }

  /** The sealed epoch is given up: its clusters are dirty again in the current epoch. */
  abandonSealed(): void {
    if (this.sealed === null) return;
    this.current.or(this.sealed.bits);
    this.sealed = null;
  }

  /** Persist every unsaved dirty page (protocol B). Serialised; safe to call any time. */
  persist(): Promise<void> {
    return this.persistMutex.run(() => this.persistNow());
  }

  private async persistNow(): Promise<void> {
    if (this.closed) return;
    const jobs = this.sealed === null ? [] : [this.sealed];
    jobs.push({ bits: this.current, epoch: this.epoch });
    for (const job of jobs) {
      const pages = job.bits.takeUnsaved();
      if (pages.length === 0) continue;
      const file = this.dirtyFiles[job.epoch % 2] as BitmapFile;
      // Pages are encoded as they are when written: bits set meanwhile are kept (and their
      // page is unsaved again, for the next run).
      const writes: PageWrite[] = pages.map((index) => ({ index, stamp: job.epoch, payload: job.bits.page(index) ?? null }));
      try {
        await file.writePages(writes);
        await file.datasync();
        this.counters.dirtySyncs++;
      } catch (err) {
        job.bits.markUnsaved(pages);
        throw err;
      }
    }
  }

  /** Wait for background work, stop writing and close the files. */
  async close(): Promise<void> {
    await this.intentFlush.idle();
    await this.persistMutex.run(() => undefined);
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([this.dirtyFiles[0].close(), this.dirtyFiles[1].close(), this.intentFile.close()]);
  }

  /** The files (for handing them over to the native write path). */
  files(): { dirty: readonly [BitmapFile, BitmapFile]; intent: BitmapFile } {
    return { dirty: this.dirtyFiles, intent: this.intentFile };
  }

  /** Synced page counts of the files, for the state record. */
  syncedPages(): { dirty0: number; dirty1: number; intent: number } {
    return { dirty0: this.dirtyFiles[0].syncedPages, dirty1: this.dirtyFiles[1].syncedPages, intent: this.intentFile.syncedPages };
  }

  pageWrites(): { dirty: number; intent: number } {
    return { dirty: (this.dirtyFiles[0]?.pageWrites ?? 0) + (this.dirtyFiles[1]?.pageWrites ?? 0), intent: this.intentFile.pageWrites };
  }
}

/** Pages needed to cover `items` bits. */
export function pagesFor(items: number): number {
  return Math.ceil(items / BITS_PER_PAGE);
}
