/**
 * Key files: the repository master key wrapped under a passphrase, kept on local disk with
 * mode 0600 (config keyFile / ISLAND_KEY_FILE). Several key files may wrap one master key;
 * each has an id of its own, listed in the store (repository.ts) so it can be revoked.
 *
 * All integers are big-endian. KEY_FILE_LEN = 144 bytes:
 *
 *   Byte   0-3    magic: "ISKF" (0x49 0x53 0x4b 0x46)
 *   Byte   4-5    version: 1
 *   Byte   6-7    flags: bit 0 (KF_FLAG_NO_PASSPHRASE) = wrapped under the empty passphrase,
 *                 so the file's mode is its only protection; other bits must be 0
 *   Byte   8-23   key file id: 16 random bytes
 *   Byte  24-39   repository id: the repository the master key belongs to
 *   Byte  40      KDF: 1 = scrypt
 *   Byte  41      scrypt log2(N): 14 .. 22
 *   Byte  42      scrypt r: 1 .. 32
 *   Byte  43      scrypt p: 1 .. 16
 *   Byte  44-75   KDF salt: 32 random bytes
 *   Byte  76-79   data key id (u32, >= 1): the key id this file's holder seals new data with
 *   Byte  80-95   reserved: zero
 *   Byte  96-127  wrapped master key: AES-256-GCM ciphertext under the key-encrypting key
 *                 KEK = scrypt(passphrase, salt, N, r, p), nonce 12 zero bytes (one KEK per
 *                 file: a fresh salt each time a file is written)
 *   Byte 128-143  GCM tag; associated data = bytes 0-95, so every field above is authenticated
 *
 * A wrong passphrase and a damaged file look the same (the tag does not verify): KEY_MISMATCH.
 *
 * Why scrypt: it is in node:crypto (no new dependency, kept up to date with OpenSSL), and it
 * is memory-hard, so guessing a passphrase on GPUs or ASICs costs memory as well as time,
 * unlike PBKDF2. Argon2id would do as well but is not in Node 20's crypto.
 */
import { createCipheriv, createDecipheriv, randomBytes, scrypt } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { IslandError } from '../errors.js';
import { isKeyId, MAX_KEY_ID } from '../format/encrypted-frame.js';
import { KEY_FILE_ID_LEN, REPOSITORY_ID_LEN } from '../format/encryption-record.js';
import { MASTER_KEY_LEN, RepositoryKeys } from './keys.js';

export const KEY_FILE_MAGIC = 0x49534b46;
export const KEY_FILE_VERSION = 1;
export const KEY_FILE_LEN = 144;
export const KF_FLAG_NO_PASSPHRASE = 0x0001;
const KF_FLAGS_KNOWN = KF_FLAG_NO_PASSPHRASE;
export const KDF_SCRYPT = 1;
const KF_VERSION_OFF = 4;
const KF_FLAGS_OFF = 6;
const KF_ID_OFF = 8;
const KF_REPO_OFF = 24;
const KF_KDF_OFF = 40;
const KF_LOGN_OFF = 41;
const KF_R_OFF = 42;
const KF_P_OFF = 43;
const KF_SALT_OFF = 44;
const KF_SALT_LEN = 32;
const KF_KEY_ID_OFF = 76;
const KF_RESERVED_OFF = 80;
const KF_RESERVED_LEN = 16;
const KF_AD_LEN = 96;
const KF_WRAPPED_OFF = 96;
const KF_TAG_OFF = KF_WRAPPED_OFF + MASTER_KEY_LEN;
const TAG_LEN = 16;
const ZERO_NONCE = Buffer.alloc(12);

/**
 * scrypt cost bounds. N = 2^15, r = 8 (the default) takes 32 MiB and ~0.1 s: paid once per
 * daemon start or CLI command. The upper bounds keep a hostile key file from asking for
 * gigabytes (2^22 x 128 x 32 = 16 GiB would be refused by maxmem anyway; 2^22 x 8 = 4 GiB).
 */
export const SCRYPT_DEFAULT = { logN: 15, r: 8, p: 1 } as const;
const LOGN_MIN = 14;
const LOGN_MAX = 22;
const R_MAX = 32;
const P_MAX = 16;
/** Refuse a key file whose scrypt parameters would take more memory than this. */
const SCRYPT_MAXMEM = 1024 * 1024 * 1024;

export interface ScryptParams {
  readonly logN: number;
  readonly r: number;
  readonly p: number;
}

export interface KeyFileContents {
  readonly keyFileId: Buffer;
  readonly keys: RepositoryKeys;
  readonly passphraseless: boolean;
}

function scryptMem(s: ScryptParams): number {
  return 128 * s.r * (2 ** s.logN + s.p + 2);
}

function checkScrypt(s: ScryptParams, bad: (what: string) => IslandError): void {
  if (!Number.isInteger(s.logN) || s.logN < LOGN_MIN || s.logN > LOGN_MAX) throw bad(`scrypt log2(N) ${s.logN} outside ${LOGN_MIN}..${LOGN_MAX}`);
  if (!Number.isInteger(s.r) || s.r < 1 || s.r > R_MAX) throw bad(`scrypt r ${s.r} outside 1..${R_MAX}`);
  if (!Number.isInteger(s.p) || s.p < 1 || s.p > P_MAX) throw bad(`scrypt p ${s.p} outside 1..${P_MAX}`);
  if (scryptMem(s) > SCRYPT_MAXMEM) throw bad('scrypt parameters need more than 1 GiB');
}

function kek(passphrase: Buffer, salt: Buffer, s: ScryptParams): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(passphrase, salt, 32, { N: 2 ** s.logN, r: s.r, p: s.p, maxmem: scryptMem(s) + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** The bytes of a new key file wrapping `keys` under `passphrase` (empty: no passphrase). */
export async function encodeKeyFile(keys: RepositoryKeys, passphrase: Buffer, opts: { keyFileId?: Buffer; salt?: Buffer; scrypt?: ScryptParams } = {}): Promise<{ bytes: Buffer; keyFileId: Buffer }> {
  const s = opts.scrypt ?? SCRYPT_DEFAULT;
  checkScrypt(s, (what) => new IslandError('INVALID_ARGUMENT', what));
  const keyFileId = opts.keyFileId ?? randomBytes(KEY_FILE_ID_LEN);
  const salt = opts.salt ?? randomBytes(KF_SALT_LEN);
  if (keyFileId.length !== KEY_FILE_ID_LEN || salt.length !== KF_SALT_LEN) throw new IslandError('INVALID_ARGUMENT', 'key file id or salt of the wrong length');
  const b = Buffer.alloc(KEY_FILE_LEN);
  b.writeUInt32BE(KEY_FILE_MAGIC, 0);
  b.writeUInt16BE(KEY_FILE_VERSION, KF_VERSION_OFF);
  b.writeUInt16BE(passphrase.length === 0 ? KF_FLAG_NO_PASSPHRASE : 0, KF_FLAGS_OFF);
  keyFileId.copy(b, KF_ID_OFF);
  keys.repositoryId.copy(b, KF_REPO_OFF);
  b.writeUInt8(KDF_SCRYPT, KF_KDF_OFF);
  b.writeUInt8(s.logN, KF_LOGN_OFF);
  b.writeUInt8(s.r, KF_R_OFF);
  b.writeUInt8(s.p, KF_P_OFF);
  salt.copy(b, KF_SALT_OFF);
  b.writeUInt32BE(keys.writeKeyId, KF_KEY_ID_OFF);
  const cipher = createCipheriv('aes-256-gcm', await kek(passphrase, salt, s), ZERO_NONCE, { authTagLength: TAG_LEN });
  cipher.setAAD(b.subarray(0, KF_AD_LEN));
  const master = keys.masterForWrapping();
  const wrapped = Buffer.concat([cipher.update(master), cipher.final()]);
  master.fill(0);
  wrapped.copy(b, KF_WRAPPED_OFF);
  cipher.getAuthTag().copy(b, KF_TAG_OFF);
  return { bytes: b, keyFileId };
}

/** Unwrap a key file's bytes. `where` names the file in messages. */
export async function decodeKeyFile(b: Buffer, passphrase: Buffer, where = 'key file'): Promise<KeyFileContents> {
  const bad = (what: string): IslandError => new IslandError('KEY_MISMATCH', `${where}: ${what}`, { details: { file: where } });
  if (b.length < 4 || b.readUInt32BE(0) !== KEY_FILE_MAGIC) throw bad('not an island key file');
  if (b.length !== KEY_FILE_LEN) throw bad(`${b.length} bytes, a key file has ${KEY_FILE_LEN}`);
  const version = b.readUInt16BE(KF_VERSION_OFF);
  const flags = b.readUInt16BE(KF_FLAGS_OFF);
  if (version !== KEY_FILE_VERSION || (flags & ~KF_FLAGS_KNOWN) !== 0 || b.readUInt8(KF_KDF_OFF) !== KDF_SCRYPT) {
    throw new IslandError('FORMAT_UNSUPPORTED', `${where}: key file version ${version}, flags 0x${flags.toString(16)}, KDF ${b.readUInt8(KF_KDF_OFF)} not supported by this build`);
  }
  const s = { logN: b.readUInt8(KF_LOGN_OFF), r: b.readUInt8(KF_R_OFF), p: b.readUInt8(KF_P_OFF) };
  checkScrypt(s, bad);
  const writeKeyId = b.readUInt32BE(KF_KEY_ID_OFF);
  if (!isKeyId(writeKeyId)) throw bad(`data key id ${writeKeyId} outside 1..${MAX_KEY_ID}`);
  if (b.subarray(KF_RESERVED_OFF, KF_RESERVED_OFF + KF_RESERVED_LEN).some((x) => x !== 0)) throw bad('reserved bytes are not zero');
  const passphraseless = (flags & KF_FLAG_NO_PASSPHRASE) !== 0;
  if (passphraseless && passphrase.length > 0) throw bad('this key file has no passphrase, but one is configured (keyPassphraseFile)');
  if (!passphraseless && passphrase.length === 0) throw new IslandError('KEY_MISSING', `${where} is protected by a passphrase: configure keyPassphraseFile (ISLAND_KEY_PASSPHRASE_FILE)`, { details: { file: where } });
  const decipher = createDecipheriv('aes-256-gcm', await kek(passphrase, b.subarray(KF_SALT_OFF, KF_SALT_OFF + KF_SALT_LEN), s), ZERO_NONCE, { authTagLength: TAG_LEN });
  decipher.setAAD(b.subarray(0, KF_AD_LEN));
  decipher.setAuthTag(b.subarray(KF_TAG_OFF, KF_TAG_OFF + TAG_LEN));
  let master: Buffer;
  try {
    master = Buffer.concat([decipher.update(b.subarray(KF_WRAPPED_OFF, KF_TAG_OFF)), decipher.final()]);
  } catch (err) {
    throw new IslandError('KEY_MISMATCH', `${where}: the passphrase does not open it, or the file is damaged`, { cause: err, details: { file: where } });
  }
  const keys = new RepositoryKeys(master, Buffer.from(b.subarray(KF_REPO_OFF, KF_REPO_OFF + REPOSITORY_ID_LEN)), writeKeyId);
  master.fill(0);
  return { keyFileId: Buffer.from(b.subarray(KF_ID_OFF, KF_ID_OFF + KEY_FILE_ID_LEN)), keys, passphraseless };
}

/** Group and other permission bits: any of them set makes a secret file unsafe. */
const UNSAFE_MODE_BITS = 0o077;
/** A key file or passphrase file is tiny; refuse to read anything large into memory. */
const MAX_SECRET_FILE = 64 * 1024;

/**
 * Read a secret file (key file or passphrase file) after checking that only its owner can
 * read or write it (mode 0600 or stricter) and that the owner is this process's user or
 * root: KEY_FILE_UNSAFE otherwise, and the contents are not read.
 */
export async function readSecretFile(path: string, what: string): Promise<Buffer> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new IslandError('KEY_MISSING', `${what} ${path} does not exist`, { details: { file: path } });
    throw new IslandError('LOCAL_IO', `cannot stat ${what} ${path}: ${(err as Error).message}`, { cause: err, details: { file: path } });
  }
  if (!st.isFile()) throw new IslandError('KEY_FILE_UNSAFE', `${what} ${path} is not a regular file`, { details: { file: path } });
  if ((st.mode & UNSAFE_MODE_BITS) !== 0) {
    throw new IslandError('KEY_FILE_UNSAFE', `${what} ${path} has mode 0${(st.mode & 0o777).toString(8)}: others than its owner may read or change it; chmod 600 it`, { details: { file: path, mode: st.mode & 0o777 } });
  }
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid && st.uid !== 0) throw new IslandError('KEY_FILE_UNSAFE', `${what} ${path} belongs to uid ${st.uid}, not to this user (${uid}) or root`, { details: { file: path, uid: st.uid } });
  if (st.size > MAX_SECRET_FILE) throw new IslandError('KEY_FILE_UNSAFE', `${what} ${path} is ${st.size} bytes: not a key or passphrase file`, { details: { file: path } });
  try {
    return await readFile(path);
  } catch (err) {
    throw new IslandError('LOCAL_IO', `cannot read ${what} ${path}: ${(err as Error).message}`, { cause: err, details: { file: path } });
  }
}

/** The passphrase in a passphrase file: its bytes without one trailing newline. Absent file path: none. */
export async function readPassphrase(path: string | undefined): Promise<Buffer> {
  if (path === undefined) return Buffer.alloc(0);
  const b = await readSecretFile(path, 'passphrase file');
  const end = b.length > 0 && b[b.length - 1] === 0x0a ? (b.length > 1 && b[b.length - 2] === 0x0d ? b.length - 2 : b.length - 1) : b.length;
  if (end === 0) throw new IslandError('INVALID_CONFIG', `passphrase file ${path} is empty (leave keyPassphraseFile unset for a key file without passphrase)`);
  return b.subarray(0, end);
}

/** Load and unwrap the key file at `path`. */
export async function loadKeyFile(path: string, passphrase: Buffer): Promise<KeyFileContents> {
  return decodeKeyFile(await readSecretFile(path, 'key file'), passphrase, path);
}

/**
 * Write a new key file at `path`: created exclusively (ALREADY_EXISTS if anything is
 * there, nothing overwritten) with mode 0600, written and fsynced.
 */
export async function writeKeyFile(path: string, bytes: Buffer): Promise<void> {
  let fh;
  try {
    fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new IslandError('ALREADY_EXISTS', `${path} already exists; a key file is never overwritten`, { details: { file: path } });
    throw new IslandError('LOCAL_IO', `cannot create key file ${path}: ${(err as Error).message}`, { cause: err, details: { file: path } });
  }
  try {
    await fh.chmod(0o600);
    await fh.writeFile(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
