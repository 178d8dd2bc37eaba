/**
 * A bitmap file on local disk: pages of bitmap-page.ts, each kept in two slots. This module
 * reads every page at open (taking the newest valid copy) and writes pages to the slot that
 * holds the older copy, so a write torn by a crash leaves the previous copy intact. It never
 * syncs on its own: callers order writes and datasync() as their protocol requires. Writes
 * and syncs of one file run one at a time.
 */
import { IslandError } from '../errors.js';
import { BITMAP_PAGE_SIZE, BITMAP_SLOTS, choosePage, encodePage, slotOffset, type PageContent, type PageKind } from './bitmap-page.js';
import { Mutex } from './concurrency.js';
import type { LocalFile, LocalFs } from './files.js';

/** Pages read per call at load: 1 MiB, so loading a big bitmap never allocates much at once. */
const LOAD_BATCH_PAGES = 128;

export interface PageWrite {
  readonly index: number;
  readonly stamp: number;
  /** Null for an empty page. */
  readonly payload: Uint8Array | null;
}

export interface LoadedPage {
  readonly index: number;
  /** Null when the page was never durably written (empty). */
  readonly content: PageContent | null;
}

export interface LoadResult {
  readonly pages: LoadedPage[];
  /** Pages whose two slots were both bad: FORMAT_CORRUPT errors naming them. */
  readonly unreadable: Array<{ index: number; error: IslandError }>;
  /** Pages that had one bad slot (the other copy was used). */
  readonly repaired: Array<{ index: number; reason: string }>;
}

export class BitmapFile {
  /** Per page: generation of the valid copy in slot 0 and slot 1 (0 when none). */
  private readonly gens: Array<[number, number] | undefined> = [];
  /** Pages written since the last datasync, and the slot each went to. */
  private readonly unsynced = new Map<number, number>();
  private readonly mutex = new Mutex();
  /** Writes issued; for stats. */
  pageWrites = 0;

  private constructor(
    readonly path: string,
    readonly kind: PageKind,
    private readonly file: LocalFile,
  ) {}

  static async open(fs: LocalFs, path: string, kind: PageKind): Promise<BitmapFile> {
    return new BitmapFile(path, kind, await fs.open(path, 'create'));
  }

  /**
   * Read every page (up to `maxPages`). Pages past the end of the file are not listed (they
   * are empty). Remembers the slot generations for later writes.
   */
  async load(maxPages: number): Promise<LoadResult> {
    const size = await this.file.size();
    const slotBytes = BITMAP_PAGE_SIZE * BITMAP_SLOTS;
    const total = Math.min(maxPages, Math.ceil(size / slotBytes));
    const out: LoadResult = { pages: [], unreadable: [], repaired: [] };
    const buf = Buffer.alloc(LOAD_BATCH_PAGES * slotBytes);
    for (let first = 0; first < total; first += LOAD_BATCH_PAGES) {
      const count = Math.min(LOAD_BATCH_PAGES, total - first);
      const n = await this.file.read(buf, 0, count * slotBytes, slotOffset(first, 0));
      const view = buf.subarray(0, n);
      for (let i = 0; i < count; i++) {
        const index = first + i;
        try {
          const choice = choosePage(view, i * slotBytes, this.kind, index, this.path);
          this.gens[index] = [choice.slotGenerations[0], choice.slotGenerations[1]];
          if (choice.repaired !== null) out.repaired.push({ index, reason: choice.repaired });
          // The payload is a view into the batch buffer: copy what survives this loop.
          const content = choice.content === null ? null : { ...choice.content, payload: Uint8Array.prototype.slice.call(choice.content.payload) };
          out.pages.push({ index, content });
        } catch (err) {
          this.gens[index] = [0, 0];
          out.unreadable.push({ index, error: err as IslandError });
        }
      }
    }
    return out;
  }

  /**
   * Write pages. A page goes to the slot holding its older copy, or, when its newer copy was
   * written but not yet synced, over that copy again: the last synced copy is never the one
   * overwritten, so a crash at any point leaves it readable. Not durable until datasync().
   */
  writePages(pages: readonly PageWrite[]): Promise<void> {
    return this.mutex.run(async () => {
      const buf = Buffer.alloc(BITMAP_PAGE_SIZE);
      for (const p of pages) {
        const gens = this.gens[p.index] ?? [0, 0];
        this.gens[p.index] = gens;
        const pending = this.unsynced.get(p.index);
        const slot = pending ?? (gens[0] <= gens[1] ? 0 : 1);
        const generation = Math.max(gens[0], gens[1]) + 1;
        encodePage(this.kind, p.index, generation, p.stamp, p.payload, buf);
        this.unsynced.set(p.index, slot);
        // Until the write returns, the slot's content is unknown.
        gens[slot] = 0;
        await this.file.write(buf, 0, BITMAP_PAGE_SIZE, slotOffset(p.index, slot));
        gens[slot] = generation;
        this.pageWrites++;
      }
    });
  }

  /** fdatasync: every page written before it is durable once it returns. */
  datasync(): Promise<void> {
    return this.mutex.run(async () => {
      const written = [...this.unsynced.keys()];
      await this.file.datasync();
      for (const index of written) this.unsynced.delete(index);
    });
  }

  close(): Promise<void> {
    return this.file.close();
  }
}
