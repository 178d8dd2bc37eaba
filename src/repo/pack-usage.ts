/**
 * Live bytes per pack, counted while GC marks (docs/protocols.md, "Garbage collection").
 *
 * One blob location (pack, frame offset, frame length) is reached from many places: every
 * leaf that keeps an unchanged cluster of an older snapshot points at the same frame, and
 * equal clusters in one image share one frame. Each distinct frame is counted once.
 *
 * Memory: no object per blob. Each pack holds one Float64Array of keys
 * `offset * 2^KEY_LENGTH_BITS + length`, 8 bytes per reference; when the array fills it is
 * sorted and deduplicated in place, and it doubles only if more than half of it is distinct.
 * So a pack costs at most 16 bytes per distinct live frame (128 MiB for the 16 Mi frames of
 * a fully written TiB), plus its map entry.
 *
 * A key packs offset and length into one safe integer: frames lie in packs of at most
 * MAX_PACK_SIZE (2^28) bytes and are at most MAX_BLOB_FRAME (< 2^23) long, so the key stays
 * below 2^51. A location outside those bounds cannot be read from any pack a reader accepts;
 * its pack is marked unaccounted (kept, never reported as partly dead).
 */
import { MAX_BLOB_FRAME } from '../format/blob.js';
import { MAX_PACK_SIZE } from '../format/pack.js';

const KEY_LENGTH_BITS = 23;
const KEY_LENGTH_SPAN = 2 ** KEY_LENGTH_BITS;
const INITIAL_CAPACITY = 64;

export interface PackLive {
  /** Bytes of the distinct live frames in the pack. */
  bytes: number;
  /** Number of distinct live frames. */
  frames: number;
}

interface Refs {
  keys: Float64Array;
  n: number;
  /** Set when a reference could not be encoded: the pack's usage is unknown. */
  unaccounted: boolean;
}

/** Sort keys[0..n) and drop repeats; returns the new count. */
function compact(keys: Float64Array, n: number): number {
  const part = keys.subarray(0, n).sort();
  let w = 0;
  for (let r = 0; r < n; r++) {
    const k = part[r] as number;
    if (w === 0 || part[w - 1] !== k) part[w++] = k;
  }
  return w;
}

export class PackUsage {
  private readonly packs = new Map<string, Refs>();

  /** Count a frame reference in `pack` (any string naming the pack, e.g. "data/<hex>"). */
  add(pack: string, offset: number, length: number): void {
    let r = this.packs.get(pack);
    if (!r) {
      r = { keys: new Float64Array(INITIAL_CAPACITY), n: 0, unaccounted: false };
      this.packs.set(pack, r);
    }
    if (!Number.isInteger(offset) || offset < 0 || offset >= MAX_PACK_SIZE || !Number.isInteger(length) || length < 1 || length > MAX_BLOB_FRAME || length >= KEY_LENGTH_SPAN) {
      r.unaccounted = true;
      return;
    }
    if (r.n === r.keys.length) {
      r.n = compact(r.keys, r.n);
      if (r.n > r.keys.length / 2) {
        const grown = new Float64Array(r.keys.length * 2);
        grown.set(r.keys.subarray(0, r.n));
        r.keys = grown;
      }
    }
    r.keys[r.n++] = offset * KEY_LENGTH_SPAN + length;
  }

  has(pack: string): boolean {
    return this.packs.has(pack);
  }

  get size(): number {
    return this.packs.size;
  }

  /** The live frames of a pack, each distinct location once; undefined if nothing marked lies in it or its usage is unknown. */
  live(pack: string): PackLive | undefined {
    const r = this.packs.get(pack);
    if (!r || r.unaccounted) return undefined;
    r.n = compact(r.keys, r.n);
    let bytes = 0;
    for (let i = 0; i < r.n; i++) bytes += (r.keys[i] as number) % KEY_LENGTH_SPAN;
    return { bytes, frames: r.n };
  }
}
