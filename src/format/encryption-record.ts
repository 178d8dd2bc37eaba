/**
 * The two small objects an encrypted repository keeps in the store about its keys. Neither
 * holds key material: the store learns which key a repository uses, never the key.
 *
 * All integers are big-endian.
 *
 * Repository encryption record (`crypto/repository`, write-once), ENC_RECORD_LEN = 104 bytes:
 *
 *   Byte  0-3    magic: "ISRE" (0x49 0x53 0x52 0x45)
 *   Byte  4-5    version: 1
 *   Byte  6-7    flags: none defined; must be 0
 *   Byte  8-23   repository id: 16 random bytes, the HKDF salt of every key derived from
 *                the master key (two repositories with one master key still get apart keys)
 *   Byte 24      AEAD: 1 = AES-256-GCM
 *   Byte 25      blob id function: 1 = HMAC-SHA-256 under the id key
 *   Byte 26      key derivation: 1 = HKDF-SHA-256
 *   Byte 27      reserved: 0
 *   Byte 28-59   id key check: HMAC-SHA-256(id key, "island id key check v1" || repository
 *                id). Names the id key (equal iff the same id key) without revealing it
 *   Byte 60-67   created: ms since the Unix epoch (u64)
 *   Byte 68-71   reserved: 0
 *   Byte 72-103  SHA-256 of bytes 0-71
 *
 * Key file entry (`crypto/keyfiles/<key file id, 32 hex>`), one per key file that may open
 * the repository; removing the entry revokes the key file. ENTRY_FIXED_LEN + label bytes:
 *
 *   Byte  0-3    magic: "ISRK" (0x49 0x53 0x52 0x4b)
 *   Byte  4-5    version: 1
 *   Byte  6-7    flags: none defined; must be 0
 *   Byte  8-23   key file id (16 bytes, as in the key file and the object name)
 *   Byte 24-31   created: ms since the Unix epoch (u64)
 *   Byte 32-33   label length L (u16, at most MAX_LABEL_BYTES)
 *   Byte 34 .. 33+L   label: UTF-8, one line (who holds the key file); visible to the store
 *   Byte 34+L .. 65+L HMAC-SHA-256 of bytes 0 .. 33+L under the registry key (derived from the
 *                master key), so only a holder of the master key can make an entry that counts
 *
 * Pure: no I/O, no logger.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { IslandError } from '../errors.js';
import { corrupt, sha256, toSafeNumber } from './bytes.js';

export const ENC_RECORD_MAGIC = 0x49535245;
export const ENC_RECORD_VERSION = 1;
export const ENC_RECORD_LEN = 104;
export const REPOSITORY_ID_LEN = 16;
export const AEAD_AES_256_GCM = 1;
export const ID_HMAC_SHA256 = 1;
export const KDF_HKDF_SHA256 = 1;
const ER_VERSION_OFF = 4;
const ER_FLAGS_OFF = 6;
const ER_REPO_OFF = 8;
const ER_AEAD_OFF = 24;
const ER_IDFN_OFF = 25;
const ER_KDF_OFF = 26;
const ER_RESERVED1_OFF = 27;
const ER_CHECK_OFF = 28;
const ER_CREATED_OFF = 60;
const ER_RESERVED2_OFF = 68;
const ER_SUM_OFF = 72;
const CHECK_LEN = 32;

export interface EncryptionRecord {
  readonly repositoryId: Buffer;
  readonly idKeyCheck: Buffer;
  readonly created: number;
}

function checkTime(ms: number, what: string): void {
  if (!Number.isSafeInteger(ms) || ms < 0) throw new IslandError('INVALID_ARGUMENT', `${what} must be ms since the epoch, got ${ms}`);
}

export function encodeEncryptionRecord(r: EncryptionRecord): Buffer {
  if (r.repositoryId.length !== REPOSITORY_ID_LEN) throw new IslandError('INVALID_ARGUMENT', `repository id must be ${REPOSITORY_ID_LEN} bytes`);
  if (r.idKeyCheck.length !== CHECK_LEN) throw new IslandError('INVALID_ARGUMENT', `id key check must be ${CHECK_LEN} bytes`);
  checkTime(r.created, 'created');
  const b = Buffer.alloc(ENC_RECORD_LEN);
  b.writeUInt32BE(ENC_RECORD_MAGIC, 0);
  b.writeUInt16BE(ENC_RECORD_VERSION, ER_VERSION_OFF);
  b.writeUInt16BE(0, ER_FLAGS_OFF);
  r.repositoryId.copy(b, ER_REPO_OFF);
  b.writeUInt8(AEAD_AES_256_GCM, ER_AEAD_OFF);
  b.writeUInt8(ID_HMAC_SHA256, ER_IDFN_OFF);
  b.writeUInt8(KDF_HKDF_SHA256, ER_KDF_OFF);
  r.idKeyCheck.copy(b, ER_CHECK_OFF);
  b.writeBigUInt64BE(BigInt(r.created), ER_CREATED_OFF);
  sha256(b.subarray(0, ER_SUM_OFF)).copy(b, ER_SUM_OFF);
  return b;
}

export function decodeEncryptionRecord(b: Buffer): EncryptionRecord {
  if (b.length < 4 || b.readUInt32BE(0) !== ENC_RECORD_MAGIC) throw corrupt('not a repository encryption record', 0);
  if (b.length !== ENC_RECORD_LEN) throw corrupt(`repository encryption record is ${b.length} bytes, expected ${ENC_RECORD_LEN}`, 0);
  if (!sha256(b.subarray(0, ER_SUM_OFF)).equals(b.subarray(ER_SUM_OFF))) throw corrupt('repository encryption record checksum mismatch', ER_SUM_OFF);
  const version = b.readUInt16BE(ER_VERSION_OFF);
  const flags = b.readUInt16BE(ER_FLAGS_OFF);
  const aead = b.readUInt8(ER_AEAD_OFF);
  const idfn = b.readUInt8(ER_IDFN_OFF);
  const kdf = b.readUInt8(ER_KDF_OFF);
  if (version !== ENC_RECORD_VERSION || flags !== 0 || aead !== AEAD_AES_256_GCM || idfn !== ID_HMAC_SHA256 || kdf !== KDF_HKDF_SHA256) {
    throw new IslandError('FORMAT_UNSUPPORTED', `repository encryption record version ${version}, flags ${flags}, AEAD ${aead}, id function ${idfn}, KDF ${kdf}: not supported by this build`, { details: { version, flags, aead, idfn, kdf } });
  }
  if (b.readUInt8(ER_RESERVED1_OFF) !== 0 || b.readUInt32BE(ER_RESERVED2_OFF) !== 0) throw corrupt('repository encryption record reserved bytes are not zero', ER_RESERVED1_OFF);
  return {
    repositoryId: Buffer.from(b.subarray(ER_REPO_OFF, ER_REPO_OFF + REPOSITORY_ID_LEN)),
    idKeyCheck: Buffer.from(b.subarray(ER_CHECK_OFF, ER_CHECK_OFF + CHECK_LEN)),
    created: toSafeNumber(b.readBigUInt64BE(ER_CREATED_OFF), 'created', ER_CREATED_OFF),
  };
}

// ---- key file entries --------------------------------------------------------------------

export const KEY_ENTRY_MAGIC = 0x4953524b;
export const KEY_ENTRY_VERSION = 1;
export const KEY_FILE_ID_LEN = 16;
/** A label names a holder ("ops laptop", a host): 200 bytes is room enough, and bounds an entry. */
export const MAX_LABEL_BYTES = 200;
const KE_VERSION_OFF = 4;
const KE_FLAGS_OFF = 6;
const KE_ID_OFF = 8;
const KE_CREATED_OFF = 24;
const KE_LABEL_LEN_OFF = 32;
const KE_LABEL_OFF = 34;
const MAC_LEN = 32;
export const ENTRY_FIXED_LEN = KE_LABEL_OFF + MAC_LEN;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

export interface KeyFileEntry {
  readonly keyFileId: Buffer;
  readonly created: number;
  readonly label: string;
}

export function checkLabel(label: string): void {
  if (typeof label !== 'string' || CONTROL.test(label) || !label.isWellFormed() || Buffer.byteLength(label, 'utf8') > MAX_LABEL_BYTES) {
    throw new IslandError('INVALID_ARGUMENT', `a key file label is one line of at most ${MAX_LABEL_BYTES} bytes without control characters`);
  }
}

export function encodeKeyFileEntry(e: KeyFileEntry, macKey: Uint8Array): Buffer {
  if (e.keyFileId.length !== KEY_FILE_ID_LEN) throw new IslandError('INVALID_ARGUMENT', `key file id must be ${KEY_FILE_ID_LEN} bytes`);
  checkTime(e.created, 'created');
  checkLabel(e.label);
  const label = Buffer.from(e.label, 'utf8');
  const b = Buffer.alloc(ENTRY_FIXED_LEN + label.length);
  b.writeUInt32BE(KEY_ENTRY_MAGIC, 0);
  b.writeUInt16BE(KEY_ENTRY_VERSION, KE_VERSION_OFF);
  b.writeUInt16BE(0, KE_FLAGS_OFF);
  e.keyFileId.copy(b, KE_ID_OFF);
  b.writeBigUInt64BE(BigInt(e.created), KE_CREATED_OFF);
  b.writeUInt16BE(label.length, KE_LABEL_LEN_OFF);
  label.copy(b, KE_LABEL_OFF);
  const macAt = KE_LABEL_OFF + label.length;
  createHmac('sha256', macKey).update(b.subarray(0, macAt)).digest().copy(b, macAt);
  return b;
}

/**
 * Decode an entry. With `macKey` its MAC must verify (AUTH_FAILED otherwise: an entry not
 * made by a holder of the master key); without, the fields are read unauthenticated (for a
 * listing by someone who has no key).
 */
export function decodeKeyFileEntry(b: Buffer, macKey?: Uint8Array): KeyFileEntry & { readonly authentic: boolean } {
  if (b.length < 4 || b.readUInt32BE(0) !== KEY_ENTRY_MAGIC) throw corrupt('not a key file entry', 0);
  if (b.length < ENTRY_FIXED_LEN) throw corrupt(`key file entry of ${b.length} bytes is truncated`, 0);
  const version = b.readUInt16BE(KE_VERSION_OFF);
  const flags = b.readUInt16BE(KE_FLAGS_OFF);
  if (version !== KEY_ENTRY_VERSION || flags !== 0) throw new IslandError('FORMAT_UNSUPPORTED', `key file entry version ${version} flags ${flags} not supported`, { details: { version, flags } });
  const labelLen = b.readUInt16BE(KE_LABEL_LEN_OFF);
  if (labelLen > MAX_LABEL_BYTES || b.length !== ENTRY_FIXED_LEN + labelLen) throw corrupt(`key file entry label length ${labelLen} disagrees with its size ${b.length}`, KE_LABEL_LEN_OFF);
  const macAt = KE_LABEL_OFF + labelLen;
  let authentic = false;
  if (macKey !== undefined) {
    const mac = createHmac('sha256', macKey).update(b.subarray(0, macAt)).digest();
    if (!timingSafeEqual(mac, b.subarray(macAt))) throw new IslandError('AUTH_FAILED', 'key file entry fails authentication: not made with this repository\'s master key, or damaged');
    authentic = true;
  }
  const labelBytes = b.subarray(KE_LABEL_OFF, macAt);
  const label = labelBytes.toString('utf8');
  if (!Buffer.from(label, 'utf8').equals(labelBytes) || CONTROL.test(label)) throw corrupt('key file entry label is not one line of UTF-8', KE_LABEL_OFF);
  return {
    keyFileId: Buffer.from(b.subarray(KE_ID_OFF, KE_ID_OFF + KEY_FILE_ID_LEN)),
    created: toSafeNumber(b.readBigUInt64BE(KE_CREATED_OFF), 'created', KE_CREATED_OFF),
    label,
    authentic,
  };
}
