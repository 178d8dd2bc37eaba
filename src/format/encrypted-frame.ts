/**
 * Encrypted blob frames: the same 80-byte header as blob.ts (frame version 1), with a key
 * id other than 0 and the nonce field laid out as below; the payload is the compressed
 * bytes sealed with AES-256-GCM under a per-pack subkey.
 *
 * All integers are big-endian. Header fields that differ from an unencrypted frame:
 *
 *   Byte  8-11   key id: the encryption key (1 .. 2^32-1) of the repository's key set
 *   Byte 12-27   pack salt: 16 random bytes chosen when the pack is started; the same in
 *                every frame of one pack (FN_SALT_OFF)
 *   Byte 28-31   frame index: u32, 0 for the pack's first frame, +1 per frame (FN_INDEX_OFF)
 *   Byte 32-35   reserved: zero (FN_RESERVED_OFF)
 *   Byte 40-43   stored length: sealed length = compressed length + 16 (the GCM tag)
 *   Byte 44-75   blob id: HMAC-SHA-256 of the plain bytes under the repository's id key
 *   Byte 80-     payload: AES-256-GCM ciphertext of the codec output, then the 16-byte tag
 *
 * Keys and nonces:
 *   pack subkey = HKDF-SHA-256(ikm = encryption key of the key id, salt = pack salt,
 *                              info = "island frame v1" || kind byte), 32 bytes
 *   GCM nonce   = 8 zero bytes || frame index (u32), 12 bytes
 * A nonce is never random under a long-lived key: each pack has a subkey of its own (a
 * fresh 128-bit salt), and under it each frame index is used once. Two packs share a
 * subkey only if two random 128-bit salts collide.
 *
 * Associated data (authenticated, not encrypted): header bytes 0-75 (magic .. blob id, so
 * key id, salt, index, kind, codec, lengths and the blob id) followed by the frame's offset
 * in its pack as a u64. A frame moved to another offset, relabelled with another id or
 * spliced from another pack (another salt: whole-pack readers also check that every frame
 * carries the pack's salt and its own index) fails authentication.
 *
 * Pure: no I/O, no logger. Keys are passed in; this file never sees a key file.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { IslandError } from '../errors.js';
import { BH_CRC_OFF, BH_KEY_ID_OFF, BH_NONCE_LEN, BH_NONCE_OFF, BLOB_HEADER_LEN, encodeBlobHeader, KEY_ID_NONE, readBlobHeader, type BlobKind, type EncodedBlob, kindCode } from './blob.js';
import { corrupt } from './bytes.js';
import { CODEC_NONE, compressBlock, compressionPays, decompressBlock, type CodecId } from './codec.js';
import { hex } from './location.js';

/** AES-256-GCM: 32-byte keys, 12-byte nonces, 16-byte tags. */
export const AEAD_KEY_LEN = 32;
export const GCM_NONCE_LEN = 12;
export const GCM_TAG_LEN = 16;
export const PACK_SALT_LEN = 16;

// The nonce field of the header (BH_NONCE_OFF, 24 bytes) in an encrypted frame.
export const FN_SALT_OFF = BH_NONCE_OFF;
export const FN_INDEX_OFF = FN_SALT_OFF + PACK_SALT_LEN;
export const FN_RESERVED_OFF = FN_INDEX_OFF + 4;
export const FN_RESERVED_LEN = BH_NONCE_OFF + BH_NONCE_LEN - FN_RESERVED_OFF;
/** Bytes of the header covered by the associated data (all but the CRC). */
export const FRAME_AD_HEADER_LEN = BH_CRC_OFF;
export const FRAME_AD_LEN = FRAME_AD_HEADER_LEN + 8;

/** The largest frame index: a u32 (a pack holds far fewer frames, MAX_PACK_BLOBS). */
export const MAX_FRAME_INDEX = 0xffff_ffff;
/** The largest key id (u32); 0 means "not encrypted". */
export const MAX_KEY_ID = 0xffff_ffff;

const FRAME_INFO = Buffer.from('island frame v1', 'ascii');

export function isKeyId(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_KEY_ID;
}

function checkKey(key: Uint8Array, what: string): void {
  if (key.length !== AEAD_KEY_LEN) throw new IslandError('INVALID_ARGUMENT', `${what} must be ${AEAD_KEY_LEN} bytes, got ${key.length}`);
}

/** The keyed blob id: HMAC-SHA-256 of the plain bytes under the repository's id key. */
export function keyedBlobId(idKey: Uint8Array, plain: Uint8Array): Buffer {
  checkKey(idKey, 'id key');
  return createHmac('sha256', idKey).update(plain).digest();
}

/** What seals the frames of one pack: its key id, salt and derived subkey. */
export interface PackSealKey {
  readonly keyId: number;
  readonly kind: BlobKind;
  readonly salt: Buffer;
  readonly subkey: Buffer;
}

/** The subkey of one pack (HKDF-SHA-256, see the top of this file). */
export function packSubkey(encKey: Uint8Array, salt: Uint8Array, kind: BlobKind): Buffer {
  checkKey(encKey, 'encryption key');
  if (salt.length !== PACK_SALT_LEN) throw new IslandError('INVALID_ARGUMENT', `pack salt must be ${PACK_SALT_LEN} bytes, got ${salt.length}`);
  const info = Buffer.concat([FRAME_INFO, Buffer.from([kindCode(kind)])]);
  return Buffer.from(hkdfSync('sha256', encKey, salt, info, AEAD_KEY_LEN));
}

/** A pack's sealing key for `keyId` with `salt` (16 random bytes from the caller). */
export function packSealKey(keyId: number, encKey: Uint8Array, salt: Uint8Array, kind: BlobKind): PackSealKey {
  if (!isKeyId(keyId)) throw new IslandError('INVALID_ARGUMENT', `key id must be 1..${MAX_KEY_ID}, got ${String(keyId)}`);
  return { keyId, kind, salt: Buffer.from(salt), subkey: packSubkey(encKey, salt, kind) };
}

function gcmNonce(index: number): Buffer {
  const n = Buffer.alloc(GCM_NONCE_LEN);
  n.writeUInt32BE(index, GCM_NONCE_LEN - 4);
  return n;
}

function frameAd(header: Buffer, frameOffset: number): Buffer {
  const ad = Buffer.allocUnsafe(FRAME_AD_LEN);
  header.copy(ad, 0, 0, FRAME_AD_HEADER_LEN);
  ad.writeBigUInt64BE(BigInt(frameOffset), FRAME_AD_HEADER_LEN);
  return ad;
}

function checkPosition(index: number, frameOffset: number): void {
  if (!Number.isInteger(index) || index < 0 || index > MAX_FRAME_INDEX) throw new IslandError('INVALID_ARGUMENT', `frame index ${index} out of range`);
  if (!Number.isSafeInteger(frameOffset) || frameOffset < 0) throw new IslandError('INVALID_ARGUMENT', `frame offset ${frameOffset} out of range`);
}

export interface EncodedEncryptedBlob extends EncodedBlob {
  readonly keyId: number;
  readonly index: number;
}

/**
 * Hash (keyed), compress when it pays, and seal one blob as frame `index` of the pack
 * `key` belongs to, to be written at `frameOffset` in that pack. The caller numbers the
 * frames of a pack 0, 1, 2 ... and never reuses an index under one salt.
 */
export function encodeEncryptedBlob(plain: Uint8Array, key: PackSealKey, idKey: Uint8Array, index: number, frameOffset: number): EncodedEncryptedBlob {
  checkPosition(index, frameOffset);
  const id = keyedBlobId(idKey, plain);
  const { codec, data } = compressBlock(plain);
  const storedLength = data.length + GCM_TAG_LEN;
  const frame = Buffer.allocUnsafe(BLOB_HEADER_LEN + storedLength);
  encodeBlobHeader({ kind: key.kind, codec, plainLength: plain.length, storedLength, id }, frame, 0);
  sealInto(frame, data, key, index, frameOffset);
  return { frame, id, codec, plainLength: plain.length, kind: key.kind, keyId: key.keyId, index };
}

/**
 * An unsealed frame: an unencrypted (key id 0) frame whose id is the keyed hash. It is what
 * a worker thread makes (hash and compress need no position); it is never stored as such:
 * the pack writer seals it with sealFrame once it knows the frame's index and offset.
 */
export function encodeUnsealedBlob(plain: Uint8Array, kind: BlobKind, idKey: Uint8Array): EncodedBlob {
  const id = keyedBlobId(idKey, plain);
  const { codec, data } = compressBlock(plain);
  const frame = Buffer.allocUnsafe(BLOB_HEADER_LEN + data.length);
  encodeBlobHeader({ kind, codec, plainLength: plain.length, storedLength: data.length, id }, frame, 0);
  frame.set(data, BLOB_HEADER_LEN);
  return { frame, id, codec, plainLength: plain.length, kind };
}

/** The length an unsealed frame of `length` bytes has once sealed. */
export function sealedFrameLength(length: number): number {
  return length + GCM_TAG_LEN;
}

/**
 * Seal an unsealed frame (encodeUnsealedBlob) as frame `index` of the pack `key` belongs
 * to, at `frameOffset`. The header's id, kind, codec and lengths are kept (the stored
 * length grows by the tag); the result equals encodeEncryptedBlob of the same plain bytes.
 */
export function sealFrame(unsealed: Buffer, key: PackSealKey, index: number, frameOffset: number): Buffer {
  checkPosition(index, frameOffset);
  const h = readBlobHeader(unsealed, 0);
  if (h.keyId !== KEY_ID_NONE) throw new IslandError('INVALID_ARGUMENT', `blob ${hex(h.id)} is sealed already`);
  if (unsealed.length !== h.frameLength) throw new IslandError('INVALID_ARGUMENT', `frame is ${unsealed.length} bytes, its header says ${h.frameLength}`);
  if (h.kind !== key.kind) throw new IslandError('INVALID_ARGUMENT', `a ${h.kind} blob cannot be sealed for a ${key.kind} pack`);
  const data = unsealed.subarray(BLOB_HEADER_LEN);
  const frame = Buffer.allocUnsafe(BLOB_HEADER_LEN + data.length + GCM_TAG_LEN);
  encodeBlobHeader({ kind: h.kind, codec: h.codec, plainLength: h.plainLength, storedLength: data.length + GCM_TAG_LEN, id: h.id }, frame, 0);
  sealInto(frame, data, key, index, frameOffset);
  return frame;
}

/** Fill in the encryption fields of a header written by encodeBlobHeader, and seal `data` after it. */
function sealInto(frame: Buffer, data: Uint8Array, key: PackSealKey, index: number, frameOffset: number): void {
  frame.writeUInt32BE(key.keyId, BH_KEY_ID_OFF);
  key.salt.copy(frame, FN_SALT_OFF);
  frame.writeUInt32BE(index, FN_INDEX_OFF);
  frame.fill(0, FN_RESERVED_OFF, FN_RESERVED_OFF + FN_RESERVED_LEN);
  frame.writeUInt32BE(crc32(frame.subarray(0, BH_CRC_OFF)) >>> 0, BH_CRC_OFF);
  const cipher = createCipheriv('aes-256-gcm', key.subkey, gcmNonce(index), { authTagLength: GCM_TAG_LEN });
  cipher.setAAD(frameAd(frame, frameOffset));
  const n1 = cipher.update(data).copy(frame, BLOB_HEADER_LEN);
  const n2 = cipher.final().copy(frame, BLOB_HEADER_LEN + n1);
  cipher.getAuthTag().copy(frame, BLOB_HEADER_LEN + n1 + n2);
}

/** The encryption fields of an encrypted frame's header, checked. */
export interface EncryptedFrameInfo {
  readonly keyId: number;
  readonly salt: Buffer;
  readonly index: number;
  readonly kind: BlobKind;
  readonly codec: CodecId;
  readonly plainLength: number;
  readonly sealedLength: number;
  readonly id: Buffer;
  readonly frameLength: number;
}

/**
 * Read the header at `off` in `buf` (blob.ts checks magic, CRC, version, kind, codec) and
 * the encryption rules: key id not 0, reserved nonce bytes zero, a sealed length that is a
 * possible codec output plus the tag. FORMAT_CORRUPT otherwise. `base` as in readBlobHeader.
 */
export function readEncryptedFrameHeader(buf: Buffer, off = 0, base = 0): EncryptedFrameInfo {
  const h = readBlobHeader(buf, off, base);
  const at = base + off;
  if (h.keyId === KEY_ID_NONE) throw new IslandError('FORMAT_UNSUPPORTED', `blob ${hex(h.id)} is not encrypted (at byte ${at}); an encrypted repository holds encrypted frames only`, { details: { id: hex(h.id), offset: at, reason: 'unencrypted' } });
  if (buf.subarray(off + FN_RESERVED_OFF, off + FN_RESERVED_OFF + FN_RESERVED_LEN).some((b) => b !== 0)) throw corrupt('encrypted blob with non-zero reserved nonce bytes', at, { id: hex(h.id) });
  const compressed = h.storedLength - GCM_TAG_LEN;
  if (compressed < 0 || (h.codec === CODEC_NONE ? compressed !== h.plainLength : !compressionPays(compressed, h.plainLength))) {
    throw corrupt(`encrypted blob sealed length ${h.storedLength} impossible for ${h.plainLength} plain bytes with codec ${h.codec}`, at, { id: hex(h.id) });
  }
  return {
    keyId: h.keyId,
    salt: buf.subarray(off + FN_SALT_OFF, off + FN_SALT_OFF + PACK_SALT_LEN),
    index: buf.readUInt32BE(off + FN_INDEX_OFF),
    kind: h.kind,
    codec: h.codec,
    plainLength: h.plainLength,
    sealedLength: h.storedLength,
    id: h.id,
    frameLength: h.frameLength,
  };
}

function subkeyOf(keys: FrameOpenKeys, keyId: number, salt: Buffer, kind: BlobKind): Buffer | undefined {
  const encKey = keys.encKey(keyId);
  return encKey === undefined ? undefined : packSubkey(encKey, salt, kind);
}

/** What a reader needs to open frames: the encryption key of a key id, and the id key. */
export interface FrameOpenKeys {
  readonly idKey: Uint8Array;
  /** The encryption key of `keyId`, or undefined when this key set has none. */
  encKey(keyId: number): Uint8Array | undefined;
  /** Optional: the pack subkey, from a cache (an HKDF costs about as much as sealing 16 KiB). */
  packSubkey?(keyId: number, salt: Buffer, kind: BlobKind): Buffer | undefined;
}

export interface DecodeEncryptedOptions {
  readonly kind?: BlobKind;
  /** The frame's offset in its pack: part of the associated data, and used in messages. */
  readonly frameOffset: number;
  /** The pack's salt, when known (whole-pack reads): a frame with another is FORMAT_CORRUPT. */
  readonly packSalt?: Uint8Array;
  /** The frame's index in its pack, when known (whole-pack reads). */
  readonly index?: number;
  /**
   * Recompute the keyed id of the plain bytes (default true). The tag already covers the
   * id (it is in the associated data) and only a key holder can make a tag, so this guards
   * against a writer that named a blob wrongly, not against the store; a hot read path may
   * skip it, fsck never does.
   */
  readonly verifyId?: boolean;
}

/**
 * Check, authenticate, decrypt and decode one whole encrypted frame. AUTH_FAILED when the
 * tag does not verify (damage, tampering, or a frame moved to another offset); KEY_MISSING
 * when the key set has no key of the frame's key id; HASH_MISMATCH when the frame is not
 * the one expected or its plain bytes do not hash (keyed) to its id. Never returns bytes
 * that were not authenticated.
 */
export function decodeEncryptedBlob(frame: Buffer, keys: FrameOpenKeys, expectedId: Uint8Array | undefined, opts: DecodeEncryptedOptions): Buffer {
  const base = opts.frameOffset;
  if (!Number.isSafeInteger(base) || base < 0) throw new IslandError('INVALID_ARGUMENT', `frame offset ${base} out of range`);
  const h = readEncryptedFrameHeader(frame, 0, base);
  const id = hex(h.id);
  if (frame.length !== h.frameLength) throw corrupt(`blob frame is ${frame.length} bytes, header says ${h.frameLength}`, base, { id });
  if (opts.kind !== undefined && h.kind !== opts.kind) throw corrupt(`expected a ${opts.kind} blob, found a ${h.kind} blob`, base, { id });
  if (expectedId !== undefined && !h.id.equals(expectedId)) {
    throw new IslandError('HASH_MISMATCH', `blob at byte ${base} is ${id}, expected ${hex(expectedId)}`, { details: { id: hex(expectedId), found: id, offset: base } });
  }
  if (opts.packSalt !== undefined && !h.salt.equals(opts.packSalt)) throw corrupt(`encrypted blob ${id} carries another pack's salt`, base, { id });
  if (opts.index !== undefined && h.index !== opts.index) throw corrupt(`encrypted blob ${id} is frame ${h.index}, found at position ${opts.index}`, base, { id });
  const subkey = keys.packSubkey?.(h.keyId, h.salt, h.kind) ?? subkeyOf(keys, h.keyId, h.salt, h.kind);
  if (subkey === undefined) {
    throw new IslandError('KEY_MISSING', `blob ${id} is encrypted with key id ${h.keyId}, which this key set does not hold`, { details: { id, keyId: h.keyId, offset: base } });
  }
  const decipher = createDecipheriv('aes-256-gcm', subkey, gcmNonce(h.index), { authTagLength: GCM_TAG_LEN });
  decipher.setAAD(frameAd(frame, base));
  const sealed = frame.subarray(BLOB_HEADER_LEN, frame.length - GCM_TAG_LEN);
  decipher.setAuthTag(frame.subarray(frame.length - GCM_TAG_LEN));
  let data: Buffer;
  try {
    data = Buffer.concat([decipher.update(sealed), decipher.final()]);
  } catch (err) {
    throw new IslandError('AUTH_FAILED', `blob ${id} at byte ${base} fails authentication: damaged, tampered with, or moved`, { cause: err, details: { id, offset: base } });
  }
  const plain = decompressBlock(h.codec, data, h.plainLength, base + BLOB_HEADER_LEN);
  if (opts.verifyId === false) return plain;
  const actual = keyedBlobId(keys.idKey, plain);
  if (!actual.equals(h.id)) {
    throw new IslandError('HASH_MISMATCH', `blob ${id}: its plain bytes hash (keyed) to ${hex(actual)} (at byte ${base}): another id key wrote it`, { details: { id, actual: hex(actual), offset: base } });
  }
  return plain;
}

