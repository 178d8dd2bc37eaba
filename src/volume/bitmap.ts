/**
 * An in-memory bitmap over clusters (or regions), cut into the same pages as its file
 * (bitmap-page.ts): BITS_PER_PAGE bits per page, least significant bit first, each page a
 * plain Uint8Array of BITMAP_PAYLOAD_BYTES that a native fast path can share.
 *
 * Pages are allocated on the first bit set in them, so an empty bitmap costs nothing and a
 * fresh one is made in O(1) whatever the volume size (sealing swaps bitmaps this way). The
 * bitmap remembers which pages changed since they were last handed to a writer ("unsaved"),
 * so persisting costs what changed, not the volume size.
 */
import { BITMAP_PAYLOAD_BYTES, BITS_PER_PAGE } from './bitmap-page.js';

export class PagedBitmap {
  private readonly pages: Array<Uint8Array | undefined> = [];
  private readonly unsaved = new Set<number>();

  /** Index of the page holding `bit`. */
  static pageOf(bit: number): number {
    return Math.floor(bit / BITS_PER_PAGE);
  }

  get(bit: number): boolean {
    const page = this.pages[Math.floor(bit / BITS_PER_PAGE)];
    if (page === undefined) return false;
    const b = bit % BITS_PER_PAGE;
    return ((page[b >>> 3] ?? 0) & (1 << (b & 7))) !== 0;
  }

  /** Set one bit; true when it was clear. */
  set(bit: number): boolean {
    const p = Math.floor(bit / BITS_PER_PAGE);
    let page = this.pages[p];
    if (page === undefined) {
      page = new Uint8Array(BITMAP_PAYLOAD_BYTES);
      this.pages[p] = page;
    }
    const b = bit % BITS_PER_PAGE;
    const byte = page[b >>> 3] ?? 0;
    const mask = 1 << (b & 7);
    if ((byte & mask) !== 0) return false;
    page[b >>> 3] = byte | mask;
    this.unsaved.add(p);
    return true;
  }

  /** Set bits [from, to); returns how many were clear. Whole pages are filled at once. */
  setRange(from: number, to: number): number {
    let n = 0;
    for (let i = from; i < to; ) {
      const p = Math.floor(i / BITS_PER_PAGE);
      if (i === p * BITS_PER_PAGE && to - i >= BITS_PER_PAGE) {
        n += BITS_PER_PAGE - this.countPage(p);
        this.fillPage(p);
        i += BITS_PER_PAGE;
        continue;
      }
      if (this.set(i)) n++;
      i++;
    }
    return n;
  }

  private countPage(p: number): number {
    const page = this.pages[p];
    let n = 0;
    if (page === undefined) return 0;
    for (let i = 0; i < page.length; i++) {
      let v = page[i] ?? 0;
      while (v !== 0) {
        v &= v - 1;
        n++;
      }
    }
    return n;
  }

  /** Clear one bit; true when it was set. */
  clear(bit: number): boolean {
    const p = Math.floor(bit / BITS_PER_PAGE);
    const page = this.pages[p];
    if (page === undefined) return false;
    const b = bit % BITS_PER_PAGE;
    const byte = page[b >>> 3] ?? 0;
    const mask = 1 << (b & 7);
    if ((byte & mask) === 0) return false;
    page[b >>> 3] = byte & ~mask;
    this.unsaved.add(p);
    return true;
  }

  /** True when every bit in [from, to) is set. */
  allSet(from: number, to: number): boolean {
    for (let i = from; i < to; i++) if (!this.get(i)) return false;
    return true;
  }

  /** The payload of page p (a live view), or undefined when nothing was ever set in it. */
  page(p: number): Uint8Array | undefined {
    return this.pages[p];
  }

  /** Replace page p with a copy of `payload` (loading from disk); marks nothing unsaved. */
  loadPage(p: number, payload: Uint8Array): void {
    let empty = true;
    for (let i = 0; i < payload.length; i++) {
      if (payload[i] !== 0) {
        empty = false;
        break;
      }
    }
    if (empty) {
      this.pages[p] = undefined;
      return;
    }
    const copy = new Uint8Array(BITMAP_PAYLOAD_BYTES);
    copy.set(payload.subarray(0, BITMAP_PAYLOAD_BYTES));
    this.pages[p] = copy;
  }

  /** OR page p with `payload`; marks the page unsaved when a bit was added. */
  orPage(p: number, payload: Uint8Array): void {
    let page = this.pages[p];
    let changed = false;
    for (let i = 0; i < payload.length && i < BITMAP_PAYLOAD_BYTES; i++) {
      const v = payload[i] ?? 0;
      if (v === 0) continue;
      if (page === undefined) {
        page = new Uint8Array(BITMAP_PAYLOAD_BYTES);
        this.pages[p] = page;
      }
      const old = page[i] ?? 0;
      if ((old | v) !== old) {
        page[i] = old | v;
        changed = true;
      }
    }
    if (changed) this.unsaved.add(p);
  }

  /** Set every bit of page p (a page that could not be read counts as all set). */
  fillPage(p: number): void {
    const page = new Uint8Array(BITMAP_PAYLOAD_BYTES).fill(0xff);
    this.pages[p] = page;
    this.unsaved.add(p);
  }

  /** this |= other; cost proportional to other's allocated pages. */
  or(other: PagedBitmap): void {
    other.pages.forEach((page, p) => {
      if (page !== undefined) this.orPage(p, page);
    });
  }

  /** Indices of allocated pages, ascending. */
  pageIndices(): number[] {
    const out: number[] = [];
    this.pages.forEach((page, p) => {
      if (page !== undefined) out.push(p);
    });
    return out;
  }

  /** Set bits, ascending. */
  *bits(): Generator<number> {
    for (let p = 0; p < this.pages.length; p++) {
      const page = this.pages[p];
      if (page === undefined) continue;
      const base = p * BITS_PER_PAGE;
      for (let i = 0; i < page.length; i++) {
        const v = page[i] ?? 0;
        if (v === 0) continue;
        for (let j = 0; j < 8; j++) if ((v & (1 << j)) !== 0) yield base + i * 8 + j;
      }
    }
  }

  /** Number of set bits. */
  count(): number {
    let n = 0;
    for (let p = 0; p < this.pages.length; p++) n += this.countPage(p);
    return n;
  }

  /** Pages changed since they were last taken, ascending; they count as saved from now on. */
  takeUnsaved(): number[] {
    const out = [...this.unsaved].sort((a, b) => a - b);
    this.unsaved.clear();
    return out;
  }

  /** Give pages back after a failed write: they are unsaved again. */
  markUnsaved(pages: Iterable<number>): void {
    for (const p of pages) this.unsaved.add(p);
  }

  hasUnsaved(): boolean {
    return this.unsaved.size > 0;
  }
}
