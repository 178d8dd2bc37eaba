/**
 * The blob frame: one cluster (data blob) or one tree node (metadata blob) as stored in a
 * pack. A frame is self-describing, so a pack can be checked and its trailer rebuilt from
 * the frames alone (see pack.ts).
 *
 * All integers are big-endian. Version 1, header of BLOB_HEADER_LEN = 80 bytes:
 *
 *   Byte  0-3    magic: "ISLB" (0x49 0x53 0x4c 0x42)
 *   Byte  4      version: 1
 *   Byte  5      kind: 1 = data (a cluster), 2 = metadata (a tree node)
 *   Byte  6      codec of the payload (codec.ts): 0 = none, 1 = lz4, 2 = reserved (zstd)
 *   Byte  7      flags: none defined in version 1; must be 0 (BLOB_FLAGS_KNOWN)
 *   Byte  8-11   key id: 0 = not encrypted. Reserved for encryption; this build reads and
 *                writes 0 only (another value is FORMAT_UNSUPPORTED when decoding)
 *   Byte 12-35   nonce: 24 bytes reserved for encryption (room for XChaCha20's 24-byte
 *                nonce; AES-GCM would use the first 12). All zero when key id is 0
 *   Byte 36-39   plain length: bytes of the blob's content, <= MAX_BLOB_PLAIN (4 MiB)
 *   Byte 40-43   stored length: bytes of the payload that follows the header. Equal to
 *                the plain length for codec none, smaller than it for any other codec
 *   Byte 44-75   blob id: SHA-256 of the plain bytes (a keyed hash once encryption exists)
 *   Byte 76-79   header checksum: CRC-32 (the zlib/PNG polynomial) of bytes 0-75, so a torn
 *                or damaged header is detected before its lengths are trusted
 *   Byte 80-     payload: stored length bytes
 *
 * Frame length = BLOB_HEADER_LEN + stored length. The payload has no checksum of its own:
 * the blob id covers it (decodeBlob hashes the plain bytes and compares).
 *
 * Pure: no I/O, no logger.
 */
import { crc32 } from 'node:zlib';
import { IslandError } from '../errors.js';
import { corrupt, Reader, sha256 } from './bytes.js';
import { CODEC_LZ4, CODEC_NONE, CODEC_ZSTD, codecName, compressBlock, compressionPays, decompressBlock, MAX_BLOB_PLAIN, type CodecId } from './codec.js';
import { hex, ID_LEN } from './location.js';

/** "ISLB" */
export const BLOB_MAGIC = 0x49534c42;
export const BLOB_VERSION = 1;

// Field offsets within the header (version 1).
export const BH_MAGIC_OFF = 0;
export const BH_VERSION_OFF = 4;
export const BH_KIND_OFF = 5;
export const BH_CODEC_OFF = 6;
export const BH_FLAGS_OFF = 7;
export const BH_KEY_ID_OFF = 8;
export const BH_NONCE_OFF = 12;
export const BH_NONCE_LEN = 24;
export const BH_PLAIN_LEN_OFF = 36;
export const BH_STORED_LEN_OFF = 40;
export const BH_ID_OFF = 44;
export const BH_CRC_OFF = 76;
export const BLOB_HEADER_LEN = 80;

/** No flags are defined in version 1. */
export const BLOB_FLAGS_KNOWN = 0;

/** Key id meaning "not encrypted". */
export const KEY_ID_NONE = 0;

/** Largest frame: a header and a plain payload of MAX_BLOB_PLAIN bytes. */
export const MAX_BLOB_FRAME = BLOB_HEADER_LEN + MAX_BLOB_PLAIN;

export type BlobKind = 'data' | 'metadata';

/** On-disk values of a kind (shared with the pack footer). */
export const KIND_DATA = 1;
export const KIND_METADATA = 2;

export function kindCode(kind: BlobKind): number {
  return kind === 'data' ? KIND_DATA : KIND_METADATA;
}

/** The kind a stored byte means, or null for a value this build does not know. */
export function kindOf(code: number): BlobKind | null {
  if (code === KIND_DATA) return 'data';
  if (code === KIND_METADATA) return 'metadata';
  return null;
}

/** Codec ids a version 1 header may carry (assigned or reserved). */
export function isAssignedCodec(codec: number): boolean {
  return codec === CODEC_NONE || codec === CODEC_LZ4 || codec === CODEC_ZSTD;
}

export interface BlobHeader {
  readonly version: number;
  readonly kind: BlobKind;
  readonly codec: CodecId;
  readonly flags: number;
  readonly keyId: number;
  /** A view into the buffer the header was read from. */
  readonly nonce: Buffer;
  readonly plainLength: number;
  readonly storedLength: number;
  /** A view into the buffer the header was read from. */
  readonly id: Buffer;
  /** BLOB_HEADER_LEN + storedLength. */
  readonly frameLength: number;
}

export interface BlobHeaderFields {
  readonly kind: BlobKind;
  readonly codec: CodecId;
  readonly plainLength: number;
  readonly storedLength: number;
  readonly id: Uint8Array;
}

export interface EncodedBlob {
  /** Header and payload, ready to append to a pack. */
  readonly frame: Buffer;
  /** SHA-256 of the plain bytes. */
  readonly id: Buffer;
  readonly codec: CodecId;
  readonly plainLength: number;
  readonly kind: BlobKind;
}

/** The id of plain content (SHA-256). */
export function blobId(plain: Uint8Array): Buffer {
  return sha256(plain);
}

function checkFields(h: BlobHeaderFields): void {
  const bad = (what: string): IslandError => new IslandError('INVALID_ARGUMENT', `blob header: ${what}`);
  if (h.kind !== 'data' && h.kind !== 'metadata') throw bad(`unknown kind ${String(h.kind)}`);
  if (!isAssignedCodec(h.codec)) throw bad(`unknown codec ${h.codec}`);
  if (!Number.isInteger(h.plainLength) || h.plainLength < 0 || h.plainLength > MAX_BLOB_PLAIN) throw bad(`plain length ${h.plainLength}`);
  if (!Number.isInteger(h.storedLength) || h.storedLength < 0 || h.storedLength > MAX_BLOB_PLAIN) throw bad(`stored length ${h.storedLength}`);
  if (h.id.length !== ID_LEN) throw bad(`id of ${h.id.length} bytes`);
}

/**
 * Write a version 1, unencrypted header into `buf` at `off` (a new buffer when omitted)
 * and return the buffer.
 */
export function encodeBlobHeader(h: BlobHeaderFields, buf: Buffer = Buffer.alloc(BLOB_HEADER_LEN), off = 0): Buffer {
  checkFields(h);
  if (!Number.isInteger(off) || off < 0 || off + BLOB_HEADER_LEN > buf.length) {
    throw new IslandError('INVALID_ARGUMENT', `blob header does not fit at ${off} in ${buf.length} bytes`);
  }
  buf.writeUInt32BE(BLOB_MAGIC, off + BH_MAGIC_OFF);
  buf.writeUInt8(BLOB_VERSION, off + BH_VERSION_OFF);
  buf.writeUInt8(kindCode(h.kind), off + BH_KIND_OFF);
  buf.writeUInt8(h.codec, off + BH_CODEC_OFF);
  buf.writeUInt8(0, off + BH_FLAGS_OFF);
  buf.writeUInt32BE(KEY_ID_NONE, off + BH_KEY_ID_OFF);
  buf.fill(0, off + BH_NONCE_OFF, off + BH_NONCE_OFF + BH_NONCE_LEN);
  buf.writeUInt32BE(h.plainLength, off + BH_PLAIN_LEN_OFF);
  buf.writeUInt32BE(h.storedLength, off + BH_STORED_LEN_OFF);
  buf.set(h.id, off + BH_ID_OFF);
  buf.writeUInt32BE(crc32(buf.subarray(off, off + BH_CRC_OFF)) >>> 0, off + BH_CRC_OFF);
  return buf;
}

/** Hash, compress (when it pays) and frame one blob. */
export function encodeBlob(plain: Uint8Array, kind: BlobKind = 'data'): EncodedBlob {
  const id = blobId(plain);
  const { codec, data } = compressBlock(plain);
  const frame = Buffer.allocUnsafe(BLOB_HEADER_LEN + data.length);
  encodeBlobHeader({ kind, codec, plainLength: plain.length, storedLength: data.length, id }, frame, 0);
  frame.set(data, BLOB_HEADER_LEN);
  return { frame, id, codec, plainLength: plain.length, kind };
}

/**
 * Read and check the header of the frame at `off` in `buf` (the payload need not be in
 * `buf`: scanners read headers first). `base` is the offset of buf[0] in the enclosing
 * object, for error messages. Throws FORMAT_CORRUPT (bad magic, checksum, lengths) or
 * FORMAT_UNSUPPORTED (a newer version, kind, codec or flag).
 */
export function readBlobHeader(buf: Buffer, off = 0, base = 0): BlobHeader {
  if (!Number.isSafeInteger(off) || off < 0) throw new IslandError('INVALID_ARGUMENT', `blob header offset ${off}`);
  const at = base + off;
  if (off > buf.length) throw corrupt(`blob header starts past the end (${buf.length} bytes)`, at);
  const r = new Reader(buf, off, Math.min(buf.length, off + BLOB_HEADER_LEN), base);
  const magic = r.u32('blob magic');
  if (magic !== BLOB_MAGIC) throw corrupt(`not a blob frame: magic 0x${magic.toString(16).padStart(8, '0')}`, at);
  const version = r.u8('blob version');
  if (version !== BLOB_VERSION) {
    throw new IslandError('FORMAT_UNSUPPORTED', `blob frame version ${version} is not supported (at byte ${at})`, { details: { version, offset: at } });
  }
  r.need(BLOB_HEADER_LEN - (BH_VERSION_OFF + 1), 'blob header');
  const storedCrc = buf.readUInt32BE(off + BH_CRC_OFF);
  const crc = crc32(buf.subarray(off, off + BH_CRC_OFF)) >>> 0;
  if (crc !== storedCrc) throw corrupt(`blob header checksum mismatch (stored ${storedCrc}, computed ${crc})`, at);

  const kindByte = r.u8('blob kind');
  const codec = r.u8('blob codec');
  const flags = r.u8('blob flags');
  const keyId = r.u32('blob key id');
  const nonce = r.bytes(BH_NONCE_LEN, 'blob nonce');
  const plainLength = r.u32('blob plain length');
  const storedLength = r.u32('blob stored length');
  const id = r.bytes(ID_LEN, 'blob id');

  const unsupported = (what: string, details: Record<string, unknown>): IslandError =>
    new IslandError('FORMAT_UNSUPPORTED', `blob ${what} is not supported by this build (at byte ${at})`, { details: { ...details, offset: at } });
  const kind = kindOf(kindByte);
  if (kind === null) throw unsupported(`kind ${kindByte}`, { kind: kindByte });
  if (!isAssignedCodec(codec)) throw unsupported(`codec ${codec}`, { codec });
  if ((flags & ~BLOB_FLAGS_KNOWN) !== 0) throw unsupported(`flags 0x${flags.toString(16)}`, { flags });
  if (keyId === KEY_ID_NONE && nonce.some((b) => b !== 0)) throw corrupt('unencrypted blob with a non-zero nonce', at);
  if (plainLength > MAX_BLOB_PLAIN) throw corrupt(`blob plain length ${plainLength} exceeds ${MAX_BLOB_PLAIN}`, at);
  if (keyId === KEY_ID_NONE) {
    // Unencrypted: the stored length follows from the codec rules (codec.ts).
    if (codec === CODEC_NONE ? storedLength !== plainLength : !compressionPays(storedLength, plainLength)) {
      throw corrupt(`blob stored length ${storedLength} impossible for ${plainLength} plain bytes with codec ${codecName(codec)}`, at);
    }
  } else if (storedLength > MAX_BLOB_PLAIN) {
    throw corrupt(`blob stored length ${storedLength} exceeds ${MAX_BLOB_PLAIN}`, at);
  }
  return { version, kind, codec, flags, keyId, nonce, plainLength, storedLength, id, frameLength: BLOB_HEADER_LEN + storedLength };
}

export interface DecodeBlobOptions {
  /** Refuse a frame of another kind (FORMAT_CORRUPT). */
  readonly kind?: BlobKind;
  /** Offset of the frame in its enclosing object (a pack), for error messages. */
  readonly base?: number;
}

/**
 * Check and decode one whole frame into its plain bytes. Verifies the header checksum,
 * that `frame` is exactly one frame, that the header names `expectedId` (when given),
 * and that the plain bytes hash to the id: HASH_MISMATCH otherwise, naming the id.
 * For a blob stored plain the result is a view into `frame` (no copy).
 */
export function decodeBlob(frame: Buffer, expectedId?: Uint8Array, opts: DecodeBlobOptions = {}): Buffer {
  const base = opts.base ?? 0;
  const h = readBlobHeader(frame, 0, base);
  if (frame.length !== h.frameLength) {
    throw corrupt(`blob frame is ${frame.length} bytes, header says ${h.frameLength}`, base, { id: hex(h.id) });
  }
  if (opts.kind !== undefined && h.kind !== opts.kind) {
    throw corrupt(`expected a ${opts.kind} blob, found a ${h.kind} blob`, base, { id: hex(h.id) });
  }
  if (expectedId !== undefined && !h.id.equals(expectedId)) {
    throw new IslandError('HASH_MISMATCH', `blob at byte ${base} is ${hex(h.id)}, expected ${hex(expectedId)}`, {
      details: { id: hex(expectedId), found: hex(h.id), offset: base },
    });
  }
  if (h.keyId !== KEY_ID_NONE) {
    throw new IslandError('FORMAT_UNSUPPORTED', `blob ${hex(h.id)} is encrypted (key id ${h.keyId}); this build has no encryption`, {
      details: { id: hex(h.id), keyId: h.keyId, offset: base },
    });
  }
  const payload = frame.subarray(BLOB_HEADER_LEN);
  const plain = decompressBlock(h.codec, payload, h.plainLength, base + BLOB_HEADER_LEN);
  const actual = blobId(plain);
  if (!actual.equals(h.id)) {
    throw new IslandError('HASH_MISMATCH', `blob ${hex(h.id)}: its plain bytes hash to ${hex(actual)} (at byte ${base})`, {
      details: { id: hex(h.id), actual: hex(actual), offset: base },
    });
  }
  return plain;
}
