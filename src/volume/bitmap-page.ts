/**
 * Bitmap pages: the unit in which island keeps a volume's present, dirty and write-intent
 * bitmaps on local disk (docs/formats/local-state.md has the prose).
 *
 * A bitmap file is a sequence of fixed-size pages. Every logical page is stored twice, in
 * two adjacent slots, so that a write torn by a crash never loses the page: a writer always
 * overwrites the slot holding the older copy, and a reader takes the valid copy with the
 * highest page generation. Logical page i lives at
 *
 *     slot 0: byte (2 * i)     * BITMAP_PAGE_SIZE
 *     slot 1: byte (2 * i + 1) * BITMAP_PAGE_SIZE
 *
 * One slot (4096 bytes, big-endian):
 *
 *   Byte    0 -    3: magic "ISBP" (0x49534250)
 *              4    : format version (1)
 *              5    : kind: 1 present, 2 dirty, 3 write-intent
 *           6 -    7: reserved, zero
 *           8 -   15: page generation (u64, >= 1; grows by one at every write of the page)
 *          16 -   23: stamp (u64): the epoch of a dirty page, the intent epoch of an intent
 *                     page, 0 for a present page. A reader ignores pages whose stamp says
 *                     they belong to a finished epoch (see engine.ts).
 *          24 -   27: page index i (u32; must match the slot's position)
 *          28 -   31: CRC-32 (zlib polynomial) of bytes 0-27 followed by bytes 32-4095
 *          32 - 4095: payload: 4064 bytes = 32512 bits. Bit b of the page is bit (b & 7) of
 *                     payload byte (b >> 3), least significant bit first; it stands for
 *                     item i * 32512 + b (a cluster, or a region for write-intent pages).
 *
 * A slot whose 4096 bytes are all zero, or that lies past the end of the file, is blank: the
 * page was never written there. A slot that is neither blank nor valid (wrong magic, version,
 * kind or index, bad checksum, generation 0) is bad. Reading a page:
 *   - some slot valid: the valid slot with the higher generation wins;
 *   - both blank, or one blank and one bad: the page was never durably written (a torn first
 *     write: a first write fills both slots before its sync, bitmap-file.ts): it is empty;
 *   - both bad: FORMAT_CORRUPT naming the file, the page and both slot offsets.
 */
import { crc32 } from 'node:zlib';
import { corrupt, toSafeNumber } from '../format/bytes.js';

export const BITMAP_PAGE_SIZE = 4096;
/** Slots per logical page. */
export const BITMAP_SLOTS = 2;
export const BITMAP_PAGE_MAGIC = 0x49534250; // "ISBP"
export const BITMAP_PAGE_VERSION = 1;

// Field offsets inside one slot.
export const PG_MAGIC = 0;
export const PG_VERSION = 4;
export const PG_KIND = 5;
export const PG_RESERVED = 6;
export const PG_GENERATION = 8;
export const PG_STAMP = 16;
export const PG_INDEX = 24;
export const PG_CRC = 28;
export const PG_PAYLOAD = 32;
/** Bytes covered by the checksum before the checksum field. */
const PG_CRC_END = PG_CRC + 4;

export const BITMAP_PAYLOAD_BYTES = BITMAP_PAGE_SIZE - PG_PAYLOAD;
/** Items (clusters or regions) one page covers: 32512, so a 64 KiB-cluster page spans ~2 GiB. */
export const BITS_PER_PAGE = BITMAP_PAYLOAD_BYTES * 8;
/** Largest page index a u32 field holds; with 512-byte clusters that still covers ~63 PiB. */
export const MAX_PAGE_INDEX = 0xffff_ffff;

export const PAGE_KIND_PRESENT = 1;
export const PAGE_KIND_DIRTY = 2;
export const PAGE_KIND_INTENT = 3;
export type PageKind = typeof PAGE_KIND_PRESENT | typeof PAGE_KIND_DIRTY | typeof PAGE_KIND_INTENT;

export interface PageContent {
  readonly generation: number;
  readonly stamp: number;
  /** BITMAP_PAYLOAD_BYTES bytes; a view into the slot buffer when decoded. */
  readonly payload: Uint8Array;
}

export type SlotState = { readonly state: 'blank' } | { readonly state: 'bad'; readonly reason: string } | ({ readonly state: 'valid' } & PageContent);

/** Byte offset of one slot of one page in its file. */
export function slotOffset(index: number, slot: number): number {
  return (index * BITMAP_SLOTS + slot) * BITMAP_PAGE_SIZE;
}

function pageCrc(buf: Uint8Array, off: number): number {
  const head = crc32(buf.subarray(off, off + PG_CRC));
  return crc32(buf.subarray(off + PG_CRC_END, off + BITMAP_PAGE_SIZE), head) >>> 0;
}

/**
 * Encode one slot into `out` at `off` (BITMAP_PAGE_SIZE bytes). `payload` may be shorter than
 * BITMAP_PAYLOAD_BYTES (the rest is zero) or null (an empty page).
 */
export function encodePage(kind: PageKind, index: number, generation: number, stamp: number, payload: Uint8Array | null, out: Buffer, off = 0): Buffer {
  if (!Number.isSafeInteger(generation) || generation < 1) throw new RangeError(`page generation must be a positive safe integer: ${generation}`);
  if (!Number.isSafeInteger(stamp) || stamp < 0) throw new RangeError(`page stamp must be a non-negative safe integer: ${stamp}`);
  if (!Number.isInteger(index) || index < 0 || index > MAX_PAGE_INDEX) throw new RangeError(`page index out of range: ${index}`);
  if (payload !== null && payload.length > BITMAP_PAYLOAD_BYTES) throw new RangeError(`page payload of ${payload.length} bytes`);
  if (out.length - off < BITMAP_PAGE_SIZE) throw new RangeError('page buffer too small');
  out.writeUInt32BE(BITMAP_PAGE_MAGIC, off + PG_MAGIC);
  out.writeUInt8(BITMAP_PAGE_VERSION, off + PG_VERSION);
  out.writeUInt8(kind, off + PG_KIND);
  out.writeUInt16BE(0, off + PG_RESERVED);
  out.writeBigUInt64BE(BigInt(generation), off + PG_GENERATION);
  out.writeBigUInt64BE(BigInt(stamp), off + PG_STAMP);
  out.writeUInt32BE(index, off + PG_INDEX);
  const body = off + PG_PAYLOAD;
  if (payload === null) {
    out.fill(0, body, off + BITMAP_PAGE_SIZE);
  } else {
    out.set(payload, body);
    out.fill(0, body + payload.length, off + BITMAP_PAGE_SIZE);
  }
  out.writeUInt32BE(pageCrc(out, off), off + PG_CRC);
  return out;
}

function isBlank(buf: Uint8Array, off: number, end: number): boolean {
  for (let i = off; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * Classify the slot at `buf[off...]` for page `index` of a file of `kind`. `buf` may end
 * before the slot does (a file that was never extended that far): missing bytes read as zero.
 */
export function decodeSlot(buf: Buffer, off: number, kind: PageKind, index: number): SlotState {
  const end = Math.min(buf.length, off + BITMAP_PAGE_SIZE);
  if (off >= buf.length || isBlank(buf, off, end)) return { state: 'blank' };
  if (end - off < BITMAP_PAGE_SIZE) return { state: 'bad', reason: `truncated slot (${end - off} of ${BITMAP_PAGE_SIZE} bytes)` };
  const magic = buf.readUInt32BE(off + PG_MAGIC);
  if (magic !== BITMAP_PAGE_MAGIC) return { state: 'bad', reason: `bad magic 0x${magic.toString(16)}` };
  const crc = buf.readUInt32BE(off + PG_CRC);
  if (crc !== pageCrc(buf, off)) return { state: 'bad', reason: 'checksum mismatch' };
  // The checksum holds, so the fields below were written as they are.
  const version = buf.readUInt8(off + PG_VERSION);
  if (version !== BITMAP_PAGE_VERSION) return { state: 'bad', reason: `unsupported page version ${version}` };
  const k = buf.readUInt8(off + PG_KIND);
  if (k !== kind) return { state: 'bad', reason: `page of kind ${k} in a file of kind ${kind}` };
  const idx = buf.readUInt32BE(off + PG_INDEX);
  if (idx !== index) return { state: 'bad', reason: `page index ${idx} stored in the slot of page ${index}` };
  let generation: number;
  let stamp: number;
  try {
    generation = toSafeNumber(buf.readBigUInt64BE(off + PG_GENERATION), 'page generation', off + PG_GENERATION);
    stamp = toSafeNumber(buf.readBigUInt64BE(off + PG_STAMP), 'page stamp', off + PG_STAMP);
  } catch (err) {
    return { state: 'bad', reason: (err as Error).message };
  }
  if (generation < 1) return { state: 'bad', reason: 'page generation 0' };
  return { state: 'valid', generation, stamp, payload: buf.subarray(off + PG_PAYLOAD, off + BITMAP_PAGE_SIZE) };
}

/** What a reader concluded about one logical page. */
export interface PageChoice {
  /** The winning copy, or null when the page was never durably written (empty). */
  readonly content: PageContent | null;
  /** Generation of each slot's valid copy (0 when blank or bad): tells a writer which slot is older. */
  readonly slotGenerations: readonly [number, number];
  /** Set when one slot was bad: why (for a warning; the page is still usable). */
  readonly repaired: string | null;
}

/**
 * Pick the copy of page `index` from the two slots in `buf` (starting at `off`, slot 0 then
 * slot 1). Throws FORMAT_CORRUPT naming the page when both slots are bad.
 */
export function choosePage(buf: Buffer, off: number, kind: PageKind, index: number, file: string, fileOffset = slotOffset(index, 0)): PageChoice {
  const a = decodeSlot(buf, off, kind, index);
  const b = decodeSlot(buf, off + BITMAP_PAGE_SIZE, kind, index);
  const genA = a.state === 'valid' ? a.generation : 0;
  const genB = b.state === 'valid' ? b.generation : 0;
  if (a.state === 'bad' && b.state === 'bad') {
    throw corrupt(`${file}: bitmap page ${index} is unreadable: slot 0 ${a.reason}, slot 1 ${b.reason}`, fileOffset, {
      file,
      page: index,
      slots: [fileOffset, fileOffset + BITMAP_PAGE_SIZE],
    });
  }
  const repaired = a.state === 'bad' ? `slot 0: ${a.reason}` : b.state === 'bad' ? `slot 1: ${b.reason}` : null;
  let content: PageContent | null = null;
  if (a.state === 'valid' && (b.state !== 'valid' || a.generation >= b.generation)) content = a;
  else if (b.state === 'valid') content = b;
  return { content, slotGenerations: [genA, genB], repaired };
}
