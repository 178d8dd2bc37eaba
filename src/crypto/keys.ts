/**
 * The key hierarchy of an encrypted repository (docs/formats/encryption.md):
 *
 *   master key (32 random bytes, only ever stored wrapped in key files)
 *     +- id key        = HKDF-SHA-256(master, salt = repository id, "island id key v1")
 *     |                  blob and tree node ids: HMAC-SHA-256(id key, plain bytes)
 *     +- registry key  = HKDF-SHA-256(master, salt = repository id, "island key registry v1")
 *     |                  MACs of the key file entries in the store
 *     +- data key k    = HKDF-SHA-256(master, salt = repository id, "island data key v1" || u32 k)
 *          |             for k = 1, 2, ...: the key id written in every frame and record
 *          +- pack subkey   = HKDF(data key k, salt = pack salt, "island frame v1" || kind)
 *          +- record subkey = HKDF(data key k, salt = record salt, "island record v1")
 *
 * The id key never changes for a repository, so a cluster has one id whatever data key
 * sealed it: moving writers to a new data key id (rotation for new data) keeps every old
 * frame readable and keeps deduplication. The repository id salts every derivation, so one
 * master key used for two repositories still gives them unrelated keys.
 */
import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { IslandError } from '../errors.js';
import type { BlobKind } from '../format/blob.js';
import { AEAD_KEY_LEN, isKeyId, keyedBlobId, MAX_KEY_ID, packSealKey, packSubkey, PACK_SALT_LEN, type FrameOpenKeys, type PackSealKey } from '../format/encrypted-frame.js';
import { openRecord, RECORD_SALT_LEN, sealRecord } from '../format/encrypted-record.js';
import { REPOSITORY_ID_LEN } from '../format/encryption-record.js';

export const MASTER_KEY_LEN = 32;
const ID_INFO = Buffer.from('island id key v1', 'ascii');
const REGISTRY_INFO = Buffer.from('island key registry v1', 'ascii');
const DATA_INFO = Buffer.from('island data key v1', 'ascii');
const ID_CHECK_INFO = Buffer.from('island id key check v1', 'ascii');
/** Data keys derived and kept per key set: a repository uses a handful of key ids. */
const MAX_CACHED_DATA_KEYS = 64;
/**
 * Pack subkeys kept: a lazy read touches a few packs at a time, and 4096 x ~150 bytes is
 * about 600 KiB. Cleared whole when full (a miss costs one HKDF, ~20 us).
 */
const MAX_CACHED_SUBKEYS = 4096;

function derive(master: Buffer, repositoryId: Buffer, info: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', master, repositoryId, info, AEAD_KEY_LEN));
}

export class RepositoryKeys implements FrameOpenKeys {
  readonly repositoryId: Buffer;
  /** The data key id new frames and records are sealed with. */
  readonly writeKeyId: number;
  readonly idKey: Buffer;
  readonly registryKey: Buffer;
  readonly #master: Buffer;
  readonly #dataKeys = new Map<number, Buffer>();
  readonly #subkeys = new Map<string, Buffer>();

  constructor(master: Buffer, repositoryId: Buffer, writeKeyId: number) {
    if (master.length !== MASTER_KEY_LEN) throw new IslandError('INVALID_ARGUMENT', `master key must be ${MASTER_KEY_LEN} bytes`);
    if (repositoryId.length !== REPOSITORY_ID_LEN) throw new IslandError('INVALID_ARGUMENT', `repository id must be ${REPOSITORY_ID_LEN} bytes`);
    if (!isKeyId(writeKeyId)) throw new IslandError('INVALID_ARGUMENT', `data key id must be 1..${MAX_KEY_ID}`);
    this.#master = Buffer.from(master);
    this.repositoryId = Buffer.from(repositoryId);
    this.writeKeyId = writeKeyId;
    this.idKey = derive(this.#master, this.repositoryId, ID_INFO);
    this.registryKey = derive(this.#master, this.repositoryId, REGISTRY_INFO);
  }

  /** A new master key and repository id. */
  static generate(writeKeyId = 1): RepositoryKeys {
    return new RepositoryKeys(randomBytes(MASTER_KEY_LEN), randomBytes(REPOSITORY_ID_LEN), writeKeyId);
  }

  /** The same master key writing with another data key id. */
  withWriteKeyId(writeKeyId: number): RepositoryKeys {
    return new RepositoryKeys(this.#master, this.repositoryId, writeKeyId);
  }

  /** The master key, for wrapping into a key file (key-file.ts) only. */
  masterForWrapping(): Buffer {
    return Buffer.from(this.#master);
  }

  /** Names the id key without revealing it; the store's encryption record holds it. */
  idKeyCheck(): Buffer {
    return createHmac('sha256', this.idKey).update(ID_CHECK_INFO).update(this.repositoryId).digest();
  }

  /** The data key of `keyId` (every id 1 .. 2^32-1 exists: keys are derived). */
  encKey(keyId: number): Buffer | undefined {
    if (!isKeyId(keyId)) return undefined;
    let k = this.#dataKeys.get(keyId);
    if (k === undefined) {
      const info = Buffer.alloc(DATA_INFO.length + 4);
      DATA_INFO.copy(info);
      info.writeUInt32BE(keyId, DATA_INFO.length);
      k = derive(this.#master, this.repositoryId, info);
      if (this.#dataKeys.size >= MAX_CACHED_DATA_KEYS) this.#dataKeys.clear();
      this.#dataKeys.set(keyId, k);
    }
    return k;
  }

  /** The subkey of a pack (kept in a bounded cache); undefined for an invalid key id. */
  packSubkey(keyId: number, salt: Buffer, kind: BlobKind): Buffer | undefined {
    const name = `${keyId}:${kind}:${salt.toString('hex')}`;
    let k = this.#subkeys.get(name);
    if (k === undefined) {
      const enc = this.encKey(keyId);
      if (enc === undefined) return undefined;
      k = packSubkey(enc, salt, kind);
      if (this.#subkeys.size >= MAX_CACHED_SUBKEYS) this.#subkeys.clear();
      this.#subkeys.set(name, k);
    }
    return k;
  }

  /** The keyed id of plain content. */
  blobId(plain: Uint8Array): Buffer {
    return keyedBlobId(this.idKey, plain);
  }

  /** The sealing key of a new pack of `kind`: the write key id and a fresh random salt. */
  newPackKey(kind: BlobKind, salt: Uint8Array = randomBytes(PACK_SALT_LEN)): PackSealKey {
    return packSealKey(this.writeKeyId, this.encKey(this.writeKeyId) as Buffer, salt, kind);
  }

  /** Seal a plain record for the object name `objectKey` (a fresh salt per call). */
  sealRecord(plain: Buffer, objectKey: string, salt: Uint8Array = randomBytes(RECORD_SALT_LEN)): Buffer {
    return sealRecord(plain, objectKey, this.writeKeyId, this.encKey(this.writeKeyId) as Buffer, salt);
  }

  /** The plain record inside a sealed one (AUTH_FAILED when it does not verify). */
  openRecord(sealed: Buffer, objectKey: string): Buffer {
    return openRecord(sealed, objectKey, (k) => this.encKey(k));
  }

  /** Never print key material. */
  toJSON(): { repositoryId: string; writeKeyId: number } {
    return { repositoryId: this.repositoryId.toString('hex'), writeKeyId: this.writeKeyId };
  }
}
