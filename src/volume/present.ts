/**
 * The present bitmap of a volume restored from a snapshot: which clusters of the base image
 * are local. Clusters that start at or past the base length (the base image's length, lowered
 * when the image is truncated below it) are present by definition, so a new volume (base
 * length 0) has every cluster present and no present file at all.
 *
 * File `present` (kind present, pages stamped 0). Ordering (invariant 6): a present bit may
 * reach the disk only after the cluster's local data is durable, since a present bit over
 * missing data would serve zeros instead of the base content; and the present bits of clusters
 * the guest wrote must be durable before the flush reply, since a refetch would overwrite
 * fsynced guest data. So a cluster becomes `pending` once its local data is written; a flush
 * takes the pending list, fdatasyncs the image, and only then writes and syncs the pages.
 */
import { PagedBitmap } from './bitmap.js';
import type { BitmapFile } from './bitmap-file.js';
import { Mutex } from './concurrency.js';

export const PRESENT_FILE = 'present';

export class PresentMap {
  /** What the engine serves from: set as soon as a cluster's local content is authoritative. */
  private readonly bits: PagedBitmap;
  /** What may be (or has been) written to disk. */
  private readonly saved: PagedBitmap;
  private pending: number[] = [];
  private readonly mutex = new Mutex();
  syncs = 0;

  constructor(
    private readonly file: BitmapFile,
    loaded: PagedBitmap,
    public baseLength: number,
    private readonly clusterSize: number,
  ) {
    this.bits = loaded;
    this.saved = new PagedBitmap();
    this.saved.or(loaded);
    this.saved.takeUnsaved();
  }

  isPresent(c: number): boolean {
    return c * this.clusterSize >= this.baseLength || this.bits.get(c);
  }

  /** Mark a cluster present in memory (its content is local or about to be written). */
  mark(c: number): void {
    if (c * this.clusterSize < this.baseLength) this.bits.set(c);
  }

  /** The cluster's local data is written: its bit may be persisted after the next image sync. */
  written(c: number): void {
    if (c * this.clusterSize < this.baseLength) this.pending.push(c);
  }

  hasPending(): boolean {
    return this.pending.length > 0;
  }

  /** Take the clusters whose bits wait for persistence (call right before syncing the image). */
  takePending(): number[] {
    const p = this.pending;
    this.pending = [];
    return p;
  }

  /** Give clusters back when the image sync failed. */
  restorePending(clusters: number[]): void {
    this.pending.push(...clusters);
  }

  /** Persist the bits of `clusters`, whose data the caller has just made durable. */
  persist(clusters: number[]): Promise<void> {
    return this.mutex.run(async () => {
      for (const c of clusters) this.saved.set(c);
      const pages = this.saved.takeUnsaved();
      if (pages.length === 0) return;
      try {
        await this.file.writePages(pages.map((index) => ({ index, stamp: 0, payload: this.saved.page(index) ?? null })));
        await this.file.datasync();
        this.syncs++;
      } catch (err) {
        this.saved.markUnsaved(pages);
        throw err;
      }
    });
  }

  /** The bits and the file (for handing them over to the native write path). */
  parts(): { bits: PagedBitmap; file: BitmapFile } {
    return { bits: this.bits, file: this.file };
  }

  /** Number of present clusters below the base length. */
  count(): number {
    return this.bits.count();
  }

  /** Synced page count of the file, for the state record. */
  get syncedPages(): number {
    return this.file.syncedPages;
  }

  get pageWrites(): number {
    return this.file.pageWrites;
  }

  close(): Promise<void> {
    return this.file.close();
  }
}
