/**
 * Block compression for blob payloads: which codec ids exist and how a payload is made.
 *
 * A codec id is one byte in the blob frame header (see blob.ts) and in each pack trailer
 * entry (see pack.ts). The payload layouts:
 *
 *   id 0  CODEC_NONE   the plain bytes, unchanged. Stored length = plain length.
 *   id 1  CODEC_LZ4    one raw LZ4 block (the LZ4 "block format": sequences of token,
 *                      literals, little-endian 2-byte match offset), with NO size prefix
 *                      and no LZ4 frame header: the plain length is in the blob header.
 *   id 2  CODEC_ZSTD   reserved for one Zstandard frame; this build does not write or
 *                      read it (FORMAT_UNSUPPORTED).
 *   3-255             unassigned (FORMAT_UNSUPPORTED).
 *
 * LZ4 was chosen by measurement (scripts/bench-codecs.ts, numbers in docs/formats/packs.md):
 * it decompresses about twice as fast as zstd level 1 on 64 KiB clusters, and decompression
 * sits on a guest's read path during lazy restore.
 *
 * Rules the encoder keeps and the decoder checks:
 *   - a compressed payload is used only when it saves at least 1/16 of the plain bytes
 *     (MIN_SAVING_DIVISOR); otherwise the block is stored plain. So for every codec other
 *     than none, stored length < plain length, and an empty block is always stored plain.
 *   - plain length <= MAX_BLOB_PLAIN; the decoder allocates exactly the plain length, so a
 *     hostile header can make it allocate at most MAX_BLOB_PLAIN bytes.
 *
 * Pure: no I/O, no logger.
 */
import { compressSync, uncompressSync } from 'lz4-napi';
import { IslandError } from '../errors.js';
import { corrupt } from './bytes.js';

/** Stored plain. */
export const CODEC_NONE = 0;
/** One raw LZ4 block without a size prefix. */
export const CODEC_LZ4 = 1;
/** Reserved for Zstandard; not written or read by this build. */
export const CODEC_ZSTD = 2;

export type CodecId = number;

/** Codecs this build writes and reads. */
const SUPPORTED_CODECS: ReadonlySet<number> = new Set([CODEC_NONE, CODEC_LZ4]);

export function codecName(codec: CodecId): string {
  switch (codec) {
    case CODEC_NONE:
      return 'none';
    case CODEC_LZ4:
      return 'lz4';
    case CODEC_ZSTD:
      return 'zstd';
    default:
      return `unknown(${codec})`;
  }
}

/** Whether this build can decode payloads of `codec`. */
export function isSupportedCodec(codec: number): boolean {
  return SUPPORTED_CODECS.has(codec);
}

/**
 * Largest plain blob: 4 MiB. A blob is one cluster (qcow2 allows clusters up to 2 MiB,
 * island uses 64 KiB) or one tree node (16-64 KiB), so 4 MiB leaves room, and it bounds
 * the memory one hostile blob header can make a reader allocate.
 */
export const MAX_BLOB_PLAIN = 4 * 1024 * 1024;

/** Compression is kept only if it saves at least plain/16 bytes (else stored plain). */
export const MIN_SAVING_DIVISOR = 16;

/** Bytes of the little-endian size prefix lz4-napi puts before a raw LZ4 block. */
const LZ4_NAPI_PREFIX_LEN = 4;

export interface CompressedBlock {
  readonly codec: CodecId;
  /** The payload: the plain bytes themselves when codec is CODEC_NONE. */
  readonly data: Buffer;
}

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** True when a payload of `stored` bytes is worth keeping for `plain` plain bytes. */
export function compressionPays(stored: number, plain: number): boolean {
  // saving >= plain/16  <=>  16 * stored <= 15 * plain (integers, no rounding)
  return plain > 0 && stored * MIN_SAVING_DIVISOR <= plain * (MIN_SAVING_DIVISOR - 1);
}

/**
 * Compress one block with island's codec, or keep it plain when compression does not
 * save at least 1/16. The returned data may share memory with `plain` (codec none).
 */
export function compressBlock(plain: Uint8Array): CompressedBlock {
  if (plain.length > MAX_BLOB_PLAIN) {
    throw new IslandError('TOO_LARGE', `block of ${plain.length} bytes exceeds the ${MAX_BLOB_PLAIN}-byte blob limit`);
  }
  const input = asBuffer(plain);
  if (input.length > 0) {
    // lz4-napi returns [u32 little-endian plain length][raw LZ4 block]; island stores the block only.
    const packed = compressSync(input);
    const block = packed.subarray(LZ4_NAPI_PREFIX_LEN);
    if (compressionPays(block.length, input.length)) return { codec: CODEC_LZ4, data: block };
  }
  return { codec: CODEC_NONE, data: input };
}

/**
 * Decompress one payload into exactly `plainLength` bytes. Throws FORMAT_UNSUPPORTED for a
 * codec this build does not read, FORMAT_CORRUPT when the payload does not decode to
 * exactly `plainLength` bytes or breaks the rules above. `at` is the payload's offset in
 * its enclosing object, for error messages.
 */
export function decompressBlock(codec: CodecId, data: Uint8Array, plainLength: number, at = 0): Buffer {
  if (!Number.isInteger(plainLength) || plainLength < 0 || plainLength > MAX_BLOB_PLAIN) {
    throw corrupt(`plain length ${plainLength} outside 0..${MAX_BLOB_PLAIN}`, at);
  }
  const input = asBuffer(data);
  switch (codec) {
    case CODEC_NONE:
      if (input.length !== plainLength) throw corrupt(`plain payload is ${input.length} bytes, header says ${plainLength}`, at);
      return input;
    case CODEC_LZ4:
      return decompressLz4(input, plainLength, at);
    default:
      throw new IslandError('FORMAT_UNSUPPORTED', `blob codec ${codecName(codec)} is not supported by this build (at byte ${at})`, {
        details: { codec, offset: at },
      });
  }
}

function decompressLz4(block: Buffer, plainLength: number, at: number): Buffer {
  if (!compressionPays(block.length, plainLength)) {
    throw corrupt(`lz4 payload of ${block.length} bytes for ${plainLength} plain bytes breaks the 1/16 saving rule`, at);
  }
  // Re-attach the size prefix lz4-napi expects; it sizes its output from it, and we set it
  // to the bounded plain length, never to a value read from the payload.
  const prefixed = Buffer.allocUnsafe(LZ4_NAPI_PREFIX_LEN + block.length);
  prefixed.writeUInt32LE(plainLength, 0);
  block.copy(prefixed, LZ4_NAPI_PREFIX_LEN);
  let out: Buffer;
  try {
    out = uncompressSync(prefixed);
  } catch (err) {
    throw new IslandError('FORMAT_CORRUPT', `lz4 payload does not decode: ${(err as Error).message} (at byte ${at})`, {
      cause: err,
      details: { offset: at },
    });
  }
  if (out.length !== plainLength) throw corrupt(`lz4 payload decodes to ${out.length} bytes, header says ${plainLength}`, at);
  return out;
}
