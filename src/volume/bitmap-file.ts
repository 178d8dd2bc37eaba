/**
 * A bitmap file on local disk: pages of bitmap-page.ts, each kept in two slots. This module
 * reads every page at open (taking the newest valid copy) and writes pages to the slot that
 * holds the older copy, so a write torn by a crash leaves the previous copy intact. It never
 * syncs on its own: callers order writes and datasync() as their protocol requires. Writes
 * and syncs of one file run one at a time.
 *
 * Telling a torn first write from damage (local-state format version 2):
 *  1. The first write of a page (no valid copy in either slot) writes the same copy to both
 *     slots before the caller's datasync. So once a page was synced, neither slot is ever
 *     blank again (later writes overwrite one slot at a time, and a torn slot is bad, not
 *     blank): blank + bad can only be a first write torn before its sync, which held nothing
 *     anyone relied on, and reads as empty. Damage to one slot of a synced page leaves the
 *     other copy; damage to both is FORMAT_CORRUPT.
 *  2. Pages found with one valid and one blank slot (written by version 1, which wrote a
 *     first copy to slot 0 only, or a first write that half reached the disk) get their
 *     blank slot filled with the same copy by settle() at open, before the volume serves.
 *  3. The file's length in pages as durably written is recorded in the state record (synced
 *     pages); a file found shorter was truncated: load() reports the pages it lost as
 *     unreadable, never as empty. A deleted file is refused by open(..., 'r+').
 */
import type { IslandError } from '../errors.js';
import { corrupt } from '../format/bytes.js';
import { BITMAP_PAGE_SIZE, BITMAP_SLOTS, choosePage, encodePage, slotOffset, type PageContent, type PageKind } from './bitmap-page.js';
import { Mutex } from './concurrency.js';
import type { LocalFile, LocalFs, OpenMode } from './files.js';

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
  /** Pages of the file known durably written: the file is at least this many pages long on disk. */
  syncedPages = 0;
  /** Pages found at load with one valid and one blank slot (step 2 at the top). */
  private singles: Array<{ index: number; blank: 0 | 1; content: PageContent }> = [];
  /** Pages the file held at load (its length in pages, bounded by load's maxPages). */
  private loadedPages = 0;

  private constructor(
    readonly path: string,
    readonly kind: PageKind,
    private readonly file: LocalFile,
  ) {}

  /** Open a bitmap file: 'r+' for one that must exist (NOT_FOUND otherwise), 'create' for a new one. */
  static async open(fs: LocalFs, path: string, kind: PageKind, mode: OpenMode = 'r+'): Promise<BitmapFile> {
    return new BitmapFile(path, kind, await fs.open(path, mode));
  }

  /**
   * Read every page (up to `maxPages`). Pages past the end of the file are not listed (they
   * are empty), except those below `syncedPages`, the length the state record says the file
   * had durably: they are unreadable (the file was truncated). Remembers the slot
   * generations for later writes.
   */
  async load(maxPages: number, syncedPages = 0): Promise<LoadResult> {
    const size = await this.file.size();
    const slotBytes = BITMAP_PAGE_SIZE * BITMAP_SLOTS;
    const total = Math.min(maxPages, Math.ceil(size / slotBytes));
    const out: LoadResult = { pages: [], unreadable: [], repaired: [] };
    this.singles = [];
    this.loadedPages = total;
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
          const [g0, g1] = choice.slotGenerations;
          if (content !== null && choice.repaired === null && (g0 === 0 || g1 === 0)) this.singles.push({ index, blank: g0 === 0 ? 0 : 1, content });
        } catch (err) {
          this.gens[index] = [0, 0];
          out.unreadable.push({ index, error: err as IslandError });
        }
      }
    }
    const lost = Math.min(maxPages, syncedPages);
    for (let index = total; index < lost; index++) {
      this.gens[index] = [0, 0];
      const at = slotOffset(index, 0);
      const error = corrupt(`${this.path}: bitmap page ${index} is missing: the file ends at byte ${size} but ${syncedPages} pages were durably written`, at, { file: this.path, page: index, slots: [at, at + BITMAP_PAGE_SIZE] });
      out.unreadable.push({ index, error });
    }
    return out;
  }

  /**
   * After load(), before anything relies on the file: give every page that has a single
   * copy (one valid, one blank slot) its second copy, and make the file durable. From then
   * on the whole file as loaded counts as synced (step 2 at the top).
   */
  settle(): Promise<void> {
    return this.mutex.run(async () => {
      const buf = Buffer.alloc(BITMAP_PAGE_SIZE);
      for (const p of this.singles) {
        encodePage(this.kind, p.index, p.content.generation, p.content.stamp, p.content.payload, buf);
        await this.file.write(buf, 0, BITMAP_PAGE_SIZE, slotOffset(p.index, p.blank));
        const gens = this.gens[p.index] ?? [0, 0];
        gens[p.blank] = p.content.generation;
        this.gens[p.index] = gens;
        this.pageWrites++;
      }
      this.singles = [];
      const written = [...this.unsynced.keys()];
      await this.file.datasync();
      for (const index of written) this.unsynced.delete(index);
      this.syncedPages = Math.max(this.syncedPages, this.loadedPages, ...written.map((i) => i + 1));
    });
  }

  /**
   * Write pages. A page goes to the slot holding its older copy, or, when its newer copy was
   * written but not yet synced, over that copy again: the last synced copy is never the one
   * overwritten, so a crash at any point leaves it readable. Not durable until datasync().
   */
  writePages(pages: readonly PageWrite[]): Promise<void> {
    return this.mutex.run(async () => {
      const buf = Buffer.alloc(BITMAP_PAGE_SIZE);
      const both = Buffer.alloc(BITMAP_PAGE_SIZE * BITMAP_SLOTS);
      for (const p of pages) {
        const gens = this.gens[p.index] ?? [0, 0];
        this.gens[p.index] = gens;
        const pending = this.unsynced.get(p.index);
        const generation = Math.max(gens[0], gens[1]) + 1;
        encodePage(this.kind, p.index, generation, p.stamp, p.payload, buf);
        if (pending === undefined && gens[0] === 0 && gens[1] === 0) {
          // First write of the page: both slots (one write), so a synced page never has a blank slot.
          this.unsynced.set(p.index, 0);
          both.set(buf, 0);
          both.set(buf, BITMAP_PAGE_SIZE);
          await this.file.write(both, 0, both.length, slotOffset(p.index, 0));
          gens[0] = generation;
          gens[1] = generation;
          this.pageWrites++;
          continue;
        }
        const slot = pending ?? (gens[0] <= gens[1] ? 0 : 1);
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
      for (const index of written) if (index + 1 > this.syncedPages) this.syncedPages = index + 1;
    });
  }

  /**
   * Per page, the generations of its two slots (undefined: never seen), for handing the file
   * over to the native write path. Only meaningful with nothing unsynced (after open or create).
   */
  slotGenerations(): ReadonlyArray<readonly [number, number] | undefined> {
    if (this.unsynced.size > 0 || this.singles.length > 0) throw new Error(`${this.path}: pages written since the last sync cannot be handed over`);
    return this.gens.map((g) => (g === undefined ? undefined : ([g[0], g[1]] as const)));
  }

  close(): Promise<void> {
    return this.file.close();
  }
}
