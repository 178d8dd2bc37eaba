/**
 * Encrypted records: a record (records.ts: manifest, volume catalog, tombstone, pin, lease,
 * damage mark) whose body is sealed. The envelope is unchanged; flag bit 0 of the envelope
 * (RECORD_FLAG_SEALED) says the body is sealed. A build without encryption refuses such a
 * record as FORMAT_UNSUPPORTED (a flag it does not know), never misreads it.
 *
 * All integers are big-endian. A sealed record:
 *
 *   Byte 0-3          magic: the record type's, as in records.ts
 *   Byte 4-5          version of the plain body (u16)
 *   Byte 6-7          flags: RECORD_FLAG_SEALED (bit 0) set, every other bit zero
 *   Byte 8-11         n = sealed body length (u32) = plain body length + SEAL_OVERHEAD
 *   Byte 12-27        record salt: 16 random bytes, fresh for every record written
 *   Byte 28-31        key id (u32, 1 .. 2^32-1) of the encryption key
 *   Byte 32 .. 11+n-16   AES-256-GCM ciphertext of the plain body (canonical JSON)
 *   Byte 12+n-16 .. 11+n GCM tag (16 bytes)
 *   Byte 12+n .. 43+n  SHA-256 of bytes 0 .. 11+n (the envelope checksum, as for any record)
 *
 *   record subkey = HKDF-SHA-256(ikm = encryption key of the key id, salt = record salt,
 *                                info = "island record v1"), 32 bytes
 *   GCM nonce     = 12 zero bytes (each subkey seals exactly one record)
 *   associated data = bytes 0-11 (magic, version, flags, n), then the record's object name
 *                     in the store (UTF-8), so a record copied under another name fails
 *
 * openRecord gives back the plain record (flags 0, plain body, its checksum), byte for byte
 * what records.ts encodes, so every decoder and its canonical-form checks apply unchanged.
 *
 * Pure: no I/O, no logger.
 */
import { createCipheriv, createDecipheriv, hkdfSync } from 'node:crypto';
import { IslandError } from '../errors.js';
import { corrupt, sha256 } from './bytes.js';
import { AEAD_KEY_LEN, GCM_NONCE_LEN, GCM_TAG_LEN, isKeyId, MAX_KEY_ID } from './encrypted-frame.js';
import { RECORD_HEADER_LEN, RECORD_MAX_BYTES, RECORD_OVERHEAD, recordTypeOf } from './records.js';

export const RECORD_FLAG_SEALED = 0x0001;
export const RECORD_SALT_LEN = 16;
const OFF_FLAGS = 6;
const OFF_BODY_LEN = 8;
const OFF_SALT = RECORD_HEADER_LEN;
const OFF_KEY_ID = OFF_SALT + RECORD_SALT_LEN;
const OFF_SEALED = OFF_KEY_ID + 4;
const CHECKSUM_LEN = 32;
/** Sealed body bytes beyond the plain body: salt, key id, tag. */
export const SEAL_OVERHEAD = RECORD_SALT_LEN + 4 + GCM_TAG_LEN;
const RECORD_INFO = Buffer.from('island record v1', 'ascii');
const ZERO_NONCE = Buffer.alloc(GCM_NONCE_LEN);

/** Whether a stored record has its body sealed (flag bit 0); false for anything shorter than a header. */
export function isSealedRecord(buf: Uint8Array): boolean {
  return buf.length >= RECORD_HEADER_LEN && (Buffer.from(buf.buffer, buf.byteOffset, buf.length).readUInt16BE(OFF_FLAGS) & RECORD_FLAG_SEALED) !== 0;
}

function subkey(encKey: Uint8Array, salt: Uint8Array): Buffer {
  if (encKey.length !== AEAD_KEY_LEN) throw new IslandError('INVALID_ARGUMENT', `encryption key must be ${AEAD_KEY_LEN} bytes`);
  return Buffer.from(hkdfSync('sha256', encKey, salt, RECORD_INFO, AEAD_KEY_LEN));
}

function ad(header: Buffer, objectKey: string): Buffer {
  return Buffer.concat([header.subarray(0, RECORD_HEADER_LEN), Buffer.from(objectKey, 'utf8')]);
}

/**
 * Seal a plain record (as records.ts encodes it, flags 0) for the object name `objectKey`,
 * with key `keyId` and a fresh random `salt` of 16 bytes from the caller.
 */
export function sealRecord(plain: Buffer, objectKey: string, keyId: number, encKey: Uint8Array, salt: Uint8Array): Buffer {
  if (!isKeyId(keyId)) throw new IslandError('INVALID_ARGUMENT', `key id must be 1..${MAX_KEY_ID}`);
  if (salt.length !== RECORD_SALT_LEN) throw new IslandError('INVALID_ARGUMENT', `record salt must be ${RECORD_SALT_LEN} bytes`);
  if (recordTypeOf(plain) === null || plain.length < RECORD_OVERHEAD) throw new IslandError('INVALID_ARGUMENT', 'not a record');
  if (plain.readUInt16BE(OFF_FLAGS) !== 0) throw new IslandError('INVALID_ARGUMENT', 'record is already sealed or carries flags');
  const bodyLen = plain.readUInt32BE(OFF_BODY_LEN);
  if (plain.length !== RECORD_OVERHEAD + bodyLen) throw new IslandError('INVALID_ARGUMENT', 'record length disagrees with its body length');
  const body = plain.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + bodyLen);
  const sealedLen = bodyLen + SEAL_OVERHEAD;
  const out = Buffer.alloc(RECORD_OVERHEAD + sealedLen);
  plain.copy(out, 0, 0, OFF_FLAGS);
  out.writeUInt16BE(RECORD_FLAG_SEALED, OFF_FLAGS);
  out.writeUInt32BE(sealedLen, OFF_BODY_LEN);
  out.set(salt, OFF_SALT);
  out.writeUInt32BE(keyId, OFF_KEY_ID);
  const cipher = createCipheriv('aes-256-gcm', subkey(encKey, salt), ZERO_NONCE, { authTagLength: GCM_TAG_LEN });
  cipher.setAAD(ad(out, objectKey));
  let at = OFF_SEALED;
  at += cipher.update(body).copy(out, at);
  at += cipher.final().copy(out, at);
  at += cipher.getAuthTag().copy(out, at);
  sha256(out.subarray(0, at)).copy(out, at);
  return out;
}

/**
 * The plain record inside a sealed one stored under `objectKey`. FORMAT_CORRUPT for a bad
 * envelope (size, length, checksum), KEY_MISSING for a key id `encKeyOf` does not know,
 * AUTH_FAILED when the tag does not verify (damage, tampering, a record moved to another
 * name). Never returns bytes that were not authenticated.
 */
export function openRecord(buf: Buffer, objectKey: string, encKeyOf: (keyId: number) => Uint8Array | undefined): Buffer {
  const type = recordTypeOf(buf);
  if (type === null) throw corrupt('not an island record', 0);
  const max = RECORD_MAX_BYTES[type] + SEAL_OVERHEAD;
  if (buf.length > max) throw corrupt(`sealed ${type} record of ${buf.length} bytes exceeds the limit of ${max}`, 0);
  if (buf.length < RECORD_OVERHEAD + SEAL_OVERHEAD) throw corrupt(`sealed ${type} record of ${buf.length} bytes is truncated`, 0);
  const flags = buf.readUInt16BE(OFF_FLAGS);
  if (flags !== RECORD_FLAG_SEALED) {
    if ((flags & RECORD_FLAG_SEALED) === 0) throw new IslandError('FORMAT_UNSUPPORTED', `${type} record ${objectKey} is not encrypted; an encrypted repository holds sealed records only`, { details: { key: objectKey, reason: 'unencrypted' } });
    throw new IslandError('FORMAT_UNSUPPORTED', `${type} record flags 0x${flags.toString(16)} are not supported`, { details: { key: objectKey, flags, offset: OFF_FLAGS } });
  }
  const sealedLen = buf.readUInt32BE(OFF_BODY_LEN);
  if (buf.length !== RECORD_OVERHEAD + sealedLen) throw corrupt(`sealed ${type} record is ${buf.length} bytes, its header says ${RECORD_OVERHEAD + sealedLen}`, OFF_BODY_LEN);
  const sumAt = RECORD_HEADER_LEN + sealedLen;
  if (!sha256(buf.subarray(0, sumAt)).equals(buf.subarray(sumAt, sumAt + CHECKSUM_LEN))) throw corrupt(`${type} record checksum mismatch`, sumAt, { key: objectKey });
  const keyId = buf.readUInt32BE(OFF_KEY_ID);
  if (!isKeyId(keyId)) throw corrupt(`sealed ${type} record with key id 0`, OFF_KEY_ID);
  const encKey = encKeyOf(keyId);
  if (encKey === undefined) throw new IslandError('KEY_MISSING', `${type} record ${objectKey} is encrypted with key id ${keyId}, which this key set does not hold`, { details: { key: objectKey, keyId } });
  const salt = buf.subarray(OFF_SALT, OFF_SALT + RECORD_SALT_LEN);
  const tagAt = sumAt - GCM_TAG_LEN;
  const decipher = createDecipheriv('aes-256-gcm', subkey(encKey, salt), ZERO_NONCE, { authTagLength: GCM_TAG_LEN });
  decipher.setAAD(ad(buf, objectKey));
  decipher.setAuthTag(buf.subarray(tagAt, sumAt));
  let body: Buffer;
  try {
    body = Buffer.concat([decipher.update(buf.subarray(OFF_SEALED, tagAt)), decipher.final()]);
  } catch (err) {
    throw new IslandError('AUTH_FAILED', `${type} record ${objectKey} fails authentication: damaged, tampered with, or stored under another name`, { cause: err, details: { key: objectKey } });
  }
  const out = Buffer.alloc(RECORD_OVERHEAD + body.length);
  buf.copy(out, 0, 0, OFF_FLAGS);
  out.writeUInt16BE(0, OFF_FLAGS);
  out.writeUInt32BE(body.length, OFF_BODY_LEN);
  body.copy(out, RECORD_HEADER_LEN);
  sha256(out.subarray(0, RECORD_HEADER_LEN + body.length)).copy(out, RECORD_HEADER_LEN + body.length);
  return out;
}
