/**
 * The pack: an immutable object of blob frames written by one snapshot, followed by a
 * trailer that lists them and a fixed-size footer. A pack holds blobs of one kind only
 * (data packs and metadata packs). Its id is the SHA-256 of all its bytes; the hex of the
 * id names the object.
 *
 *   [frame 0][frame 1]...[frame n-1][trailer: n entries][footer: FOOTER_LEN bytes]
 *   ^ offset 0                      ^ trailer offset     ^ pack size - FOOTER_LEN
 *
 * Frames (blob.ts) are contiguous from offset 0 to the trailer offset, in trailer order,
 * with no gaps: the trailer entries tile the blob area exactly. A reader range-GETs the
 * footer (the last FOOTER_LEN bytes), then the trailer, then any run of adjacent frames.
 * All integers are big-endian.
 *
 * Trailer entry, version 1, TRAILER_ENTRY_LEN = 52 bytes:
 *
 *   Byte  0-31   blob id (as in the frame header)
 *   Byte 32-39   frame offset in the pack (u64)
 *   Byte 40-43   frame length (header + payload)
 *   Byte 44-47   plain length
 *   Byte 48      codec (as in the frame header)
 *   Byte 49-51   reserved, zero
 *
 * Footer, version 1, FOOTER_LEN = 64 bytes, the last bytes of the pack:
 *
 *   Byte  0-3    magic: "ISLP" (0x49 0x53 0x4c 0x50)
 *   Byte  4      version: 1 (covers the footer and the trailer entry layout)
 *   Byte  5      kind: 1 = data pack, 2 = metadata pack (same values as the frame's kind)
 *   Byte  6-7    flags: none defined in version 1; must be 0 (PACK_FLAGS_KNOWN)
 *   Byte  8-11   blob count n
 *   Byte 12-15   trailer length: n * TRAILER_ENTRY_LEN
 *   Byte 16-23   trailer offset (u64): end of the blob area, start of the trailer
 *   Byte 24-55   trailer checksum: SHA-256 of the trailer bytes
 *   Byte 56-59   reserved, zero
 *   Byte 60-63   footer checksum: CRC-32 (zlib/PNG polynomial) of footer bytes 0-59
 *
 * Invariant: pack size = trailer offset + trailer length + FOOTER_LEN.
 *
 * Pure: no I/O, no logger.
 */
import { crc32 } from 'node:zlib';
import { IslandError, type ErrorCode } from '../errors.js';
import { corrupt, Reader, sha256, SHA256_LEN } from './bytes.js';
import {
  BLOB_HEADER_LEN,
  decodeBlob,
  isAssignedCodec,
  kindCode,
  kindOf,
  MAX_BLOB_FRAME,
  readBlobHeader,
  type BlobKind,
} from './blob.js';
import { PLAIN_FRAMES, type FrameCodec } from './frame-codec.js';
import { MAX_BLOB_PLAIN, type CodecId } from './codec.js';
import { hex, ID_LEN, PACK_ID_LEN, type BlobLocation } from './location.js';

/** "ISLP" */
export const PACK_MAGIC = 0x49534c50;
export const PACK_VERSION = 1;

// Footer field offsets (version 1).
export const PF_MAGIC_OFF = 0;
export const PF_VERSION_OFF = 4;
export const PF_KIND_OFF = 5;
export const PF_FLAGS_OFF = 6;
export const PF_COUNT_OFF = 8;
export const PF_TRAILER_LEN_OFF = 12;
export const PF_TRAILER_OFF_OFF = 16;
export const PF_TRAILER_HASH_OFF = 24;
export const PF_RESERVED_OFF = 56;
export const PF_RESERVED_LEN = 4;
export const PF_CRC_OFF = 60;
export const FOOTER_LEN = 64;

/** No footer flags are defined in version 1. */
export const PACK_FLAGS_KNOWN = 0;

// Trailer entry field offsets (version 1).
export const TE_ID_OFF = 0;
export const TE_OFFSET_OFF = 32;
export const TE_FRAME_LEN_OFF = 40;
export const TE_PLAIN_LEN_OFF = 44;
export const TE_CODEC_OFF = 48;
export const TE_RESERVED_OFF = 49;
export const TE_RESERVED_LEN = 3;
export const TRAILER_ENTRY_LEN = 52;

/**
 * Default size at which a writer cuts a pack: 16 MiB. One object per 64 KiB cluster would
 * be 16 M objects per TiB; at 16 MiB it is 64 Ki. A PUT of 16 MiB at 60-100 MB/s takes
 * ~0.2 s, so the ~10 ms per-request cost is a few percent; a failed upload redoes at most
 * 16 MiB, and only wholly dead packs are deleted, so smaller packs die sooner.
 */
export const PACK_TARGET_SIZE = 16 * 1024 * 1024;

/**
 * Largest pack a reader accepts: 256 MiB. Whole-pack operations (check, copy, trailer
 * recovery) hold one pack in memory; 16 times the default target leaves room for a
 * larger configured target without letting a hostile footer ask for more.
 */
export const MAX_PACK_SIZE = 256 * 1024 * 1024;

/** Most blobs a pack can hold: each needs at least a frame header and a trailer entry. */
export const MAX_PACK_BLOBS = Math.floor((MAX_PACK_SIZE - FOOTER_LEN) / (BLOB_HEADER_LEN + TRAILER_ENTRY_LEN));

export type PackKind = BlobKind;

export interface PackEntry {
  readonly id: Buffer;
  /** Offset of the frame in the pack. */
  readonly offset: number;
  /** Length of the frame (header + payload). */
  readonly frameLength: number;
  readonly plainLength: number;
  readonly codec: CodecId;
}

export interface PackFooter {
  readonly version: number;
  readonly kind: PackKind;
  readonly flags: number;
  readonly count: number;
  readonly trailerOffset: number;
  readonly trailerLength: number;
  readonly trailerHash: Buffer;
  /** trailerOffset + trailerLength + FOOTER_LEN: the size the pack object must have. */
  readonly packSize: number;
}

export interface Pack {
  readonly footer: PackFooter;
  readonly entries: PackEntry[];
}

/** The direct location of a pack entry, as tree pointers carry it. */
export function locationOf(pack: Buffer, e: PackEntry): BlobLocation {
  if (pack.length !== PACK_ID_LEN) throw new IslandError('INVALID_ARGUMENT', `pack id of ${pack.length} bytes`);
  return { pack, offset: e.offset, length: e.frameLength, id: e.id };
}

// ---- trailer ---------------------------------------------------------------------------

const isU32 = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= 0xffffffff;

/** Encode trailer entries (no validation of the tiling: PackBuilder produces them). */
export function encodePackTrailer(entries: readonly PackEntry[]): Buffer {
  const buf = Buffer.alloc(entries.length * TRAILER_ENTRY_LEN);
  entries.forEach((e, i) => {
    const off = i * TRAILER_ENTRY_LEN;
    if (e.id.length !== ID_LEN || !Number.isSafeInteger(e.offset) || e.offset < 0 || !isU32(e.frameLength) || !isU32(e.plainLength) || !isAssignedCodec(e.codec)) {
      throw new IslandError('INVALID_ARGUMENT', `trailer entry ${i} is not encodable`);
    }
    buf.set(e.id, off + TE_ID_OFF);
    buf.writeBigUInt64BE(BigInt(e.offset), off + TE_OFFSET_OFF);
    buf.writeUInt32BE(e.frameLength, off + TE_FRAME_LEN_OFF);
    buf.writeUInt32BE(e.plainLength, off + TE_PLAIN_LEN_OFF);
    buf.writeUInt8(e.codec, off + TE_CODEC_OFF);
    // reserved bytes stay zero (Buffer.alloc)
  });
  return buf;
}

/**
 * Decode and check the trailer that `footer` describes. `buf` holds the trailer somewhere
 * inside it: the whole pack (bufOffset 0), exactly the trailer (bufOffset = trailer
 * offset) or a tail of the pack (bufOffset = pack size - buf.length). Verifies the
 * trailer checksum and that the entries tile the blob area [0, trailer offset) exactly.
 */
export function parsePackTrailer(buf: Buffer, footer: PackFooter, bufOffset = 0): PackEntry[] {
  const start = footer.trailerOffset - bufOffset;
  if (!Number.isSafeInteger(start) || start < 0 || start + footer.trailerLength > buf.length) {
    throw new IslandError(
      'INVALID_ARGUMENT',
      `trailer [${footer.trailerOffset}, +${footer.trailerLength}) is not inside the ${buf.length} bytes given at ${bufOffset}`,
    );
  }
  const trailer = buf.subarray(start, start + footer.trailerLength);
  const hash = sha256(trailer);
  if (!hash.equals(footer.trailerHash)) throw corrupt('pack trailer checksum mismatch', footer.trailerOffset);

  const r = new Reader(trailer, 0, trailer.length, footer.trailerOffset);
  const entries: PackEntry[] = [];
  let expectedOffset = 0;
  for (let i = 0; i < footer.count; i++) {
    const at = r.offset;
    const id = r.bytes(ID_LEN, 'trailer entry id');
    const offset = r.u64n('trailer entry offset');
    const frameLength = r.u32('trailer entry frame length');
    const plainLength = r.u32('trailer entry plain length');
    const codec = r.u8('trailer entry codec');
    const reserved = r.bytes(TE_RESERVED_LEN, 'trailer entry reserved');
    if (reserved.some((b) => b !== 0)) throw corrupt(`trailer entry ${i}: reserved bytes are not zero`, at);
    if (!isAssignedCodec(codec)) {
      throw new IslandError('FORMAT_UNSUPPORTED', `trailer entry ${i}: codec ${codec} is not supported by this build (at byte ${at})`, {
        details: { codec, offset: at },
      });
    }
    if (frameLength < BLOB_HEADER_LEN || frameLength > MAX_BLOB_FRAME) throw corrupt(`trailer entry ${i}: frame length ${frameLength}`, at);
    if (plainLength > MAX_BLOB_PLAIN) throw corrupt(`trailer entry ${i}: plain length ${plainLength} exceeds ${MAX_BLOB_PLAIN}`, at);
    if (offset !== expectedOffset) {
      throw corrupt(`trailer entry ${i}: frame at ${offset}, expected ${expectedOffset} (frames must be contiguous, in order)`, at);
    }
    expectedOffset = offset + frameLength;
    if (expectedOffset > footer.trailerOffset) {
      throw corrupt(`trailer entry ${i}: frame [${offset}, ${expectedOffset}) runs past the blob area end ${footer.trailerOffset}`, at);
    }
    // Copy the id: an entry must not keep a whole pack buffer alive.
    entries.push({ id: Buffer.from(id), offset, frameLength, plainLength, codec });
  }
  r.done('pack trailer');
  if (expectedOffset !== footer.trailerOffset) {
    throw corrupt(`pack frames end at ${expectedOffset}, the trailer starts at ${footer.trailerOffset}`, footer.trailerOffset);
  }
  return entries;
}

// ---- footer ----------------------------------------------------------------------------

export interface PackFooterFields {
  readonly kind: PackKind;
  readonly count: number;
  readonly trailerOffset: number;
  readonly trailerHash: Uint8Array;
}

export function encodePackFooter(f: PackFooterFields, buf: Buffer = Buffer.alloc(FOOTER_LEN), off = 0): Buffer {
  if (!Number.isInteger(off) || off < 0 || off + FOOTER_LEN > buf.length) {
    throw new IslandError('INVALID_ARGUMENT', `pack footer does not fit at ${off} in ${buf.length} bytes`);
  }
  if (f.trailerHash.length !== SHA256_LEN) throw new IslandError('INVALID_ARGUMENT', `trailer hash of ${f.trailerHash.length} bytes`);
  if (!Number.isInteger(f.count) || f.count < 0 || f.count > MAX_PACK_BLOBS) throw new IslandError('INVALID_ARGUMENT', `pack blob count ${f.count}`);
  if (!Number.isSafeInteger(f.trailerOffset) || f.trailerOffset < 0) throw new IslandError('INVALID_ARGUMENT', `trailer offset ${f.trailerOffset}`);
  buf.writeUInt32BE(PACK_MAGIC, off + PF_MAGIC_OFF);
  buf.writeUInt8(PACK_VERSION, off + PF_VERSION_OFF);
  buf.writeUInt8(kindCode(f.kind), off + PF_KIND_OFF);
  buf.writeUInt16BE(0, off + PF_FLAGS_OFF);
  buf.writeUInt32BE(f.count, off + PF_COUNT_OFF);
  buf.writeUInt32BE(f.count * TRAILER_ENTRY_LEN, off + PF_TRAILER_LEN_OFF);
  buf.writeBigUInt64BE(BigInt(f.trailerOffset), off + PF_TRAILER_OFF_OFF);
  buf.set(f.trailerHash, off + PF_TRAILER_HASH_OFF);
  buf.fill(0, off + PF_RESERVED_OFF, off + PF_RESERVED_OFF + PF_RESERVED_LEN);
  buf.writeUInt32BE(crc32(buf.subarray(off, off + PF_CRC_OFF)) >>> 0, off + PF_CRC_OFF);
  return buf;
}

/**
 * Parse the footer from the last FOOTER_LEN bytes of `tail` (a ranged read of the pack's
 * end may return more). When `packSize` is known (object size), the footer must describe
 * a pack of exactly that size.
 */
export function parsePackFooter(tail: Buffer, packSize?: number): PackFooter {
  const base = packSize !== undefined ? packSize - FOOTER_LEN : 0;
  if (tail.length < FOOTER_LEN) throw corrupt(`pack of ${tail.length} bytes is shorter than its ${FOOTER_LEN}-byte footer`, 0);
  const off = tail.length - FOOTER_LEN;
  const r = new Reader(tail, off, tail.length, base - off);
  const magic = r.u32('pack magic');
  if (magic !== PACK_MAGIC) throw corrupt(`not a pack footer: magic 0x${magic.toString(16).padStart(8, '0')}`, base);
  const version = r.u8('pack version');
  if (version !== PACK_VERSION) {
    throw new IslandError('FORMAT_UNSUPPORTED', `pack version ${version} is not supported (at byte ${base})`, { details: { version, offset: base } });
  }
  const storedCrc = tail.readUInt32BE(off + PF_CRC_OFF);
  const crc = crc32(tail.subarray(off, off + PF_CRC_OFF)) >>> 0;
  if (crc !== storedCrc) throw corrupt(`pack footer checksum mismatch (stored ${storedCrc}, computed ${crc})`, base);

  const kindByte = r.u8('pack kind');
  const flags = r.u16('pack flags');
  const count = r.u32('pack blob count');
  const trailerLength = r.u32('pack trailer length');
  const trailerOffset = r.u64n('pack trailer offset');
  const trailerHash = r.bytes(SHA256_LEN, 'pack trailer checksum');
  const reserved = r.bytes(PF_RESERVED_LEN, 'pack footer reserved');

  const kind = kindOf(kindByte);
  if (kind === null) {
    throw new IslandError('FORMAT_UNSUPPORTED', `pack kind ${kindByte} is not supported (at byte ${base})`, { details: { kind: kindByte, offset: base } });
  }
  if ((flags & ~PACK_FLAGS_KNOWN) !== 0) {
    throw new IslandError('FORMAT_UNSUPPORTED', `pack flags 0x${flags.toString(16)} are not supported (at byte ${base})`, { details: { flags, offset: base } });
  }
  if (reserved.some((b) => b !== 0)) throw corrupt('pack footer reserved bytes are not zero', base);
  if (count > MAX_PACK_BLOBS) throw corrupt(`pack blob count ${count} exceeds ${MAX_PACK_BLOBS}`, base);
  if (trailerLength !== count * TRAILER_ENTRY_LEN) throw corrupt(`pack trailer length ${trailerLength} is not ${count} entries`, base);
  if (trailerOffset > MAX_PACK_SIZE) throw corrupt(`pack trailer offset ${trailerOffset} exceeds ${MAX_PACK_SIZE}`, base);
  const size = trailerOffset + trailerLength + FOOTER_LEN;
  if (size > MAX_PACK_SIZE) throw corrupt(`pack size ${size} exceeds ${MAX_PACK_SIZE}`, base);
  // Every blob is at least a frame header, and a non-empty blob area needs a blob.
  if (count * BLOB_HEADER_LEN > trailerOffset) throw corrupt(`${count} blobs cannot fit in a ${trailerOffset}-byte blob area`, base);
  if (count === 0 && trailerOffset !== 0) throw corrupt(`pack with no blobs has a ${trailerOffset}-byte blob area`, base);
  if (packSize !== undefined && size !== packSize) throw corrupt(`pack footer describes ${size} bytes, the object has ${packSize}`, base);
  return { version, kind, flags, count, trailerOffset, trailerLength, trailerHash: Buffer.from(trailerHash), packSize: size };
}

// ---- whole pack ------------------------------------------------------------------------

/**
 * Parse and check a whole pack: footer, trailer, and every frame header against its
 * trailer entry (payloads are not decoded: decodeBlob does that per blob). With
 * `expectedId`, the pack bytes must hash to it (HASH_MISMATCH otherwise).
 */
export function parsePack(bytes: Buffer, expectedId?: Uint8Array): Pack {
  if (bytes.length > MAX_PACK_SIZE) throw corrupt(`pack of ${bytes.length} bytes exceeds ${MAX_PACK_SIZE}`, 0);
  if (expectedId !== undefined) {
    const id = sha256(bytes);
    if (!id.equals(expectedId)) {
      throw new IslandError('HASH_MISMATCH', `pack ${hex(expectedId)}: its bytes hash to ${hex(id)}`, {
        details: { id: hex(expectedId), actual: hex(id) },
      });
    }
  }
  const footer = parsePackFooter(bytes, bytes.length);
  const entries = parsePackTrailer(bytes, footer, 0);
  entries.forEach((e, i) => {
    const h = readBlobHeader(bytes, e.offset);
    const mismatch =
      h.frameLength !== e.frameLength ? 'frame length'
      : !h.id.equals(e.id) ? 'id'
      : h.plainLength !== e.plainLength ? 'plain length'
      : h.codec !== e.codec ? 'codec'
      : h.kind !== footer.kind ? 'kind'
      : null;
    if (mismatch !== null) throw corrupt(`blob ${i} (${hex(e.id)}): frame header and trailer disagree on ${mismatch}`, e.offset);
  });
  return { footer, entries };
}

export interface DamagedBlob {
  readonly entry: PackEntry;
  readonly code: ErrorCode;
  readonly message: string;
}

export interface RecoveredTrailer {
  /** Kind of the frames found (null when none was found). */
  readonly kind: PackKind | null;
  /** One entry per frame with a valid header, in order: they tile [0, blobAreaEnd). */
  readonly entries: PackEntry[];
  /** Where the scan stopped: the end of the last frame with a valid header. */
  readonly blobAreaEnd: number;
  /** Why the scan stopped before the end of the bytes (normally: it reached the trailer). */
  readonly stop: { readonly offset: number; readonly code: ErrorCode; readonly message: string } | null;
  /** Frames whose header is valid but whose payload does not decode or hash to its id. */
  readonly damaged: DamagedBlob[];
}

export interface RecoverOptions {
  /** Decode every payload and check its hash (default true). */
  readonly verify?: boolean;
}

/**
 * Rebuild the trailer of a pack by scanning its frames from offset 0, for repair when the
 * trailer or footer is lost or damaged. The scan stops at the first bytes that are not a
 * valid frame header of the same kind (normally the old trailer) or at the end of the
 * bytes. Never trusts the footer. `encodePackTrailer(result.entries)` gives the trailer.
 */
export function recoverPackTrailer(bytes: Buffer, opts: RecoverOptions = {}): RecoveredTrailer {
  const verify = opts.verify ?? true;
  if (bytes.length > MAX_PACK_SIZE) throw corrupt(`pack of ${bytes.length} bytes exceeds ${MAX_PACK_SIZE}`, 0);
  const entries: PackEntry[] = [];
  const damaged: DamagedBlob[] = [];
  let kind: PackKind | null = null;
  let off = 0;
  let stop: RecoveredTrailer['stop'] = null;
  // Each step advances by at least BLOB_HEADER_LEN bytes, so the loop is bounded by the size.
  while (off < bytes.length) {
    let h;
    try {
      h = readBlobHeader(bytes, off);
    } catch (err) {
      if (!(err instanceof IslandError)) throw err;
      stop = { offset: off, code: err.code, message: err.message };
      break;
    }
    if (off + h.frameLength > bytes.length) {
      stop = { offset: off, code: 'FORMAT_CORRUPT', message: `frame of ${h.frameLength} bytes at ${off} runs past the end (${bytes.length})` };
      break;
    }
    if (kind !== null && h.kind !== kind) {
      stop = { offset: off, code: 'FORMAT_CORRUPT', message: `a ${h.kind} blob at ${off} in a ${kind} pack` };
      break;
    }
    kind = h.kind;
    const entry: PackEntry = { id: Buffer.from(h.id), offset: off, frameLength: h.frameLength, plainLength: h.plainLength, codec: h.codec };
    entries.push(entry);
    if (verify) {
      try {
        decodeBlob(bytes.subarray(off, off + h.frameLength), undefined, { base: off });
      } catch (err) {
        if (!(err instanceof IslandError)) throw err;
        damaged.push({ entry, code: err.code, message: err.message });
      }
    }
    off += h.frameLength;
  }
  return { kind, entries, blobAreaEnd: off, stop, damaged };
}

/** What checkPackFrames found in the bytes of one pack. */
export interface FrameReport {
  /** The trailer's entries by offset; when the trailer does not read, the frames a scan finds. */
  readonly entries: PackEntry[];
  /** Why the footer or trailer does not read, or null when it does. */
  readonly trailerError: IslandError | null;
  /** Frames that run past the bytes, do not decode, or do not hash to their id, by offset. */
  readonly bad: Map<number, IslandError>;
}

/**
 * Judge every frame of a pack without stopping at the first bad one (fsck's deep tier and
 * its repairs): the trailer is trusted when it reads; otherwise the frames are found by
 * scanning from offset 0, as a trailer rebuild would.
 */
export function checkPackFrames(bytes: Buffer, kind: PackKind, decode: FrameCodec['decode'] = PLAIN_FRAMES.decode): FrameReport {
  let entries: PackEntry[];
  let trailerError: IslandError | null = null;
  try {
    const footer = parsePackFooter(bytes.subarray(Math.max(0, bytes.length - FOOTER_LEN)), bytes.length);
    entries = parsePackTrailer(bytes, footer, 0).sort((a, b) => a.offset - b.offset);
  } catch (err) {
    if (!(err instanceof IslandError)) throw err;
    trailerError = err;
    entries = recoverPackTrailer(bytes, { verify: false }).entries;
  }
  const bad = new Map<number, IslandError>();
  for (const e of entries) {
    const end = e.offset + e.frameLength;
    if (end > bytes.length) {
      bad.set(e.offset, corrupt(`the blob at ${e.offset} runs past the end of the pack (${bytes.length} bytes)`, e.offset));
      continue;
    }
    try {
      decode(bytes.subarray(e.offset, end), e.id, { base: e.offset, kind });
    } catch (err) {
      if (!(err instanceof IslandError)) throw err;
      bad.set(e.offset, err);
    }
  }
  return { entries, trailerError, bad };
}

// ---- writer ----------------------------------------------------------------------------

export interface BuiltPack {
  readonly bytes: Buffer;
  /** SHA-256 of bytes, computed when first read (the repository names packs by random ids). */
  readonly id: Buffer;
  readonly entries: PackEntry[];
  readonly footer: PackFooter;
}

/**
 * Collects frames of one kind into a pack. Callers add frames until `full` (or until
 * `fits(frameLength)` is false) and then `finish()`. Frames are kept by reference until
 * finish: do not modify them after adding.
 */
export class PackBuilder {
  readonly kind: PackKind;
  readonly targetSize: number;
  private readonly frames: Buffer[] = [];
  private readonly entries: PackEntry[] = [];
  private readonly ids = new Set<string>();
  private blobBytes = 0;
  private finished = false;

  constructor(kind: PackKind = 'data', targetSize = PACK_TARGET_SIZE) {
    if (kind !== 'data' && kind !== 'metadata') throw new IslandError('INVALID_ARGUMENT', `pack kind ${String(kind)}`);
    if (!Number.isSafeInteger(targetSize) || targetSize < FOOTER_LEN || targetSize > MAX_PACK_SIZE) {
      throw new IslandError('INVALID_ARGUMENT', `pack target size ${targetSize} outside ${FOOTER_LEN}..${MAX_PACK_SIZE}`);
    }
    this.kind = kind;
    this.targetSize = targetSize;
  }

  /** Number of blobs added. */
  get count(): number {
    return this.entries.length;
  }

  /** Size of the pack finish() would produce now (frames, trailer and footer). */
  get size(): number {
    return this.sizeWith(0, 0);
  }

  /** The pack has reached its target size: cut it. */
  get full(): boolean {
    return this.size >= this.targetSize;
  }

  private sizeWith(extraBlobs: number, extraBytes: number): number {
    return this.blobBytes + extraBytes + (this.entries.length + extraBlobs) * TRAILER_ENTRY_LEN + FOOTER_LEN;
  }

  /** Whether a frame of this length can be added without passing the target (always true when empty). */
  fits(frameLength: number): boolean {
    return this.entries.length === 0 || this.sizeWith(1, frameLength) <= this.targetSize;
  }

  /** Whether a blob with this id is already in the pack. */
  has(id: Uint8Array): boolean {
    return this.ids.has(hex(id));
  }

  /** Append one frame (from encodeBlob) and return its offset in the pack. */
  add(frame: Buffer, id: Uint8Array): number {
    if (this.finished) throw new IslandError('INVALID_ARGUMENT', 'pack already finished');
    const h = readBlobHeader(frame, 0);
    if (frame.length !== h.frameLength) {
      throw new IslandError('INVALID_ARGUMENT', `frame is ${frame.length} bytes, its header says ${h.frameLength}`);
    }
    if (!h.id.equals(id)) throw new IslandError('INVALID_ARGUMENT', `frame holds blob ${hex(h.id)}, not ${hex(id)}`);
    if (h.kind !== this.kind) throw new IslandError('INVALID_ARGUMENT', `a ${h.kind} blob cannot go into a ${this.kind} pack`);
    const key = hex(id);
    if (this.ids.has(key)) throw new IslandError('INVALID_ARGUMENT', `blob ${key} is already in this pack`);
    if (this.entries.length >= MAX_PACK_BLOBS || this.sizeWith(1, frame.length) > MAX_PACK_SIZE) {
      throw new IslandError('TOO_LARGE', `adding blob ${key} would pass the ${MAX_PACK_SIZE}-byte pack limit`);
    }
    const offset = this.blobBytes;
    this.frames.push(frame);
    this.entries.push({ id: Buffer.from(h.id), offset, frameLength: frame.length, plainLength: h.plainLength, codec: h.codec });
    this.ids.add(key);
    this.blobBytes += frame.length;
    return offset;
  }

  /** Assemble the pack. The builder cannot be used afterwards. */
  finish(): BuiltPack {
    if (this.finished) throw new IslandError('INVALID_ARGUMENT', 'pack already finished');
    if (this.entries.length === 0) throw new IslandError('INVALID_ARGUMENT', 'an empty pack is never written');
    this.finished = true;
    const trailer = encodePackTrailer(this.entries);
    const bytes = Buffer.allocUnsafe(this.size);
    let off = 0;
    for (const f of this.frames) {
      f.copy(bytes, off);
      off += f.length;
    }
    trailer.copy(bytes, off);
    const trailerHash = sha256(trailer);
    encodePackFooter({ kind: this.kind, count: this.entries.length, trailerOffset: off, trailerHash }, bytes, off + trailer.length);
    this.frames.length = 0;
    const footer: PackFooter = {
      version: PACK_VERSION,
      kind: this.kind,
      flags: 0,
      count: this.entries.length,
      trailerOffset: off,
      trailerLength: trailer.length,
      trailerHash,
      packSize: bytes.length,
    };
    let id: Buffer | undefined;
    return {
      bytes,
      get id(): Buffer {
        id ??= sha256(bytes);
        return id;
      },
      entries: [...this.entries],
      footer,
    };
  }
}
