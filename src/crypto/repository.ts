/**
 * Whether a store holds an encrypted repository, and with which key: the write-once
 * encryption record (`crypto/repository`), the key file entries (`crypto/keyfiles/<id>`),
 * and the decision every writer takes before it writes anything:
 *
 *   record   key file   outcome
 *   absent   none       unencrypted repository: works as before
 *   absent   given      ENCRYPTION_MIXED if the store holds island data already; otherwise
 *                       the repository becomes encrypted (record written: first use)
 *   present  none       KEY_MISSING
 *   present  given      KEY_MISMATCH unless the key file's repository id and id key are the
 *                       record's; KEY_REVOKED unless the key file has an entry
 *
 * The record is written with create-if-absent where the store has it; elsewhere after a
 * HEAD that found none (two racing first writers could then both write: the loser's later
 * check sees the winner's record and refuses with KEY_MISMATCH before writing any data).
 */
import { IslandError } from '../errors.js';
import { decodeEncryptionRecord, decodeKeyFileEntry, encodeEncryptionRecord, encodeKeyFileEntry, KEY_FILE_ID_LEN, type EncryptionRecord, type KeyFileEntry } from '../format/encryption-record.js';
import { listAll, type ObjectStore } from '../store/types.js';
import type { KeyFileContents } from './key-file.js';
import type { RepositoryKeys } from './keys.js';

export const ENCRYPTION_RECORD_KEY = 'crypto/repository';
export const KEY_FILES_PREFIX = 'crypto/keyfiles/';
/** Prefixes whose objects make a store "already in use" (data that is not encrypted). */
export const DATA_PREFIXES = ['data/', 'meta/', 'snapshots/', 'volumes/', 'checkpoints/'] as const;

export function keyFileEntryKey(keyFileId: Buffer): string {
  if (keyFileId.length !== KEY_FILE_ID_LEN) throw new IslandError('INVALID_ARGUMENT', 'key file id of the wrong length');
  return `${KEY_FILES_PREFIX}${keyFileId.toString('hex')}`;
}

/** A key file id as the CLI shows it: 32 lowercase hex digits. */
export function parseKeyFileId(text: string): Buffer {
  if (!/^[0-9a-f]{32}$/.test(text)) throw new IslandError('INVALID_ARGUMENT', `a key file id is 32 lowercase hex digits, got ${JSON.stringify(text.slice(0, 80))}`);
  return Buffer.from(text, 'hex');
}

export type RepositoryEncryption = { readonly encrypted: false } | { readonly encrypted: true; readonly keys: RepositoryKeys; readonly keyFileId: Buffer };

async function getOrUndefined(store: ObjectStore, key: string): Promise<Buffer | undefined> {
  try {
    return await store.get(key);
  } catch (err) {
    if ((err as { code?: unknown }).code === 'STORE_NOT_FOUND') return undefined;
    throw err;
  }
}

export async function readEncryptionRecord(store: ObjectStore): Promise<EncryptionRecord | undefined> {
  const b = await getOrUndefined(store, ENCRYPTION_RECORD_KEY);
  return b === undefined ? undefined : decodeEncryptionRecord(b);
}

/** Whether the store already holds island objects (a listing is a hint: one item is proof enough). */
export async function holdsData(store: ObjectStore): Promise<string | undefined> {
  for (const prefix of DATA_PREFIXES) {
    const page = await store.list(prefix, { limit: 1 });
    if (page.items.length > 0) return page.items[0]?.key;
  }
  return undefined;
}

function checkMatches(record: EncryptionRecord, kf: KeyFileContents): void {
  if (!record.repositoryId.equals(kf.keys.repositoryId) || !record.idKeyCheck.equals(kf.keys.idKeyCheck())) {
    throw new IslandError('KEY_MISMATCH', `the key file ${kf.keyFileId.toString('hex')} holds the key of another repository than this store's (record repository ${record.repositoryId.toString('hex')}, key file ${kf.keys.repositoryId.toString('hex')}); nothing was written`, {
      details: { repository: record.repositoryId.toString('hex'), keyFile: kf.keyFileId.toString('hex') },
    });
  }
}

async function checkEntry(store: ObjectStore, kf: KeyFileContents): Promise<void> {
  const b = await getOrUndefined(store, keyFileEntryKey(kf.keyFileId));
  if (b === undefined) throw new IslandError('KEY_REVOKED', `the key file ${kf.keyFileId.toString('hex')} has been removed from this repository; use another key file`, { details: { keyFile: kf.keyFileId.toString('hex') } });
  const e = decodeKeyFileEntry(b, kf.keys.registryKey);
  if (!e.keyFileId.equals(kf.keyFileId)) throw new IslandError('AUTH_FAILED', `key file entry ${keyFileEntryKey(kf.keyFileId)} names another key file`);
}

async function putOnce(store: ObjectStore, key: string, body: Buffer): Promise<boolean> {
  if (await store.conditionalPut()) return store.putIfAbsent(key, body);
  if ((await store.head(key)) !== undefined) return false;
  await store.put(key, body);
  return true;
}

export interface OpenOptions {
  /** With a key file and no record: make the repository encrypted if the store is empty (default true). */
  readonly initialize?: boolean;
  readonly now?: number;
  /** Label of the key file's entry when the repository is initialized here. */
  readonly label?: string;
}

/**
 * Decide, before any write, whether this store is encrypted and whether `keyFile` may
 * write to it (see the table at the top). Refusals throw and write nothing.
 */
export async function openRepository(store: ObjectStore, keyFile: KeyFileContents | undefined, opts: OpenOptions = {}): Promise<RepositoryEncryption> {
  const record = await readEncryptionRecord(store);
  if (record === undefined) {
    if (keyFile === undefined) return { encrypted: false };
    const found = await holdsData(store);
    if (found !== undefined) {
      throw new IslandError('ENCRYPTION_MIXED', `a key file is configured but the store ${store.description} holds unencrypted island data (${found}); encrypted and unencrypted data are never mixed: unset keyFile, or use an empty store`, { details: { object: found } });
    }
    if (opts.initialize === false) throw new IslandError('KEY_MISMATCH', `the store ${store.description} is not encrypted (no ${ENCRYPTION_RECORD_KEY}); run island store init-key`);
    await initializeRepository(store, keyFile, opts.label ?? 'first key file', opts.now ?? Date.now());
    return { encrypted: true, keys: keyFile.keys, keyFileId: keyFile.keyFileId };
  }
  if (keyFile === undefined) {
    throw new IslandError('KEY_MISSING', `the store ${store.description} holds an encrypted repository (${record.repositoryId.toString('hex')}) and no key file is configured (keyFile / ISLAND_KEY_FILE); nothing was written`, { details: { repository: record.repositoryId.toString('hex') } });
  }
  checkMatches(record, keyFile);
  await checkEntry(store, keyFile);
  return { encrypted: true, keys: keyFile.keys, keyFileId: keyFile.keyFileId };
}

/**
 * Write the encryption record and the first key file entry. ALREADY_EXISTS when the store
 * has a record (the same key: nothing to do is not assumed; say so), and ENCRYPTION_MIXED
 * when it holds unencrypted data.
 */
export async function initializeRepository(store: ObjectStore, keyFile: KeyFileContents, label: string, now = Date.now()): Promise<void> {
  const existing = await readEncryptionRecord(store);
  if (existing !== undefined) throw new IslandError('ALREADY_EXISTS', `the store ${store.description} is already encrypted (repository ${existing.repositoryId.toString('hex')}); add a key file with island store key add`);
  const found = await holdsData(store);
  if (found !== undefined) throw new IslandError('ENCRYPTION_MIXED', `the store ${store.description} holds unencrypted island data (${found}); an encrypted repository needs an empty store`, { details: { object: found } });
  const entry = encodeKeyFileEntry({ keyFileId: keyFile.keyFileId, created: now, label }, keyFile.keys.registryKey);
  const record = encodeEncryptionRecord({ repositoryId: keyFile.keys.repositoryId, idKeyCheck: keyFile.keys.idKeyCheck(), created: now });
  // The entry first: a record without any entry would lock everyone out.
  await store.put(keyFileEntryKey(keyFile.keyFileId), entry);
  if (!(await putOnce(store, ENCRYPTION_RECORD_KEY, record))) {
    await store.delete(keyFileEntryKey(keyFile.keyFileId));
    throw new IslandError('ALREADY_EXISTS', `another writer made the store ${store.description} an encrypted repository first`);
  }
}

/** Register a key file (its id and label) with the repository `keys` opens. */
export async function registerKeyFile(store: ObjectStore, keys: RepositoryKeys, keyFileId: Buffer, label: string, now = Date.now()): Promise<void> {
  await store.put(keyFileEntryKey(keyFileId), encodeKeyFileEntry({ keyFileId, created: now, label }, keys.registryKey));
}

export interface ListedKeyFile extends KeyFileEntry {
  readonly id: string;
  /** False when the entry's MAC does not verify under the key given (not made with this master key). */
  readonly authentic: boolean | null;
}

/** The key file entries (a listing: may lag). With `keys`, each entry's MAC is checked. */
export async function listKeyFiles(store: ObjectStore, keys?: RepositoryKeys): Promise<ListedKeyFile[]> {
  const out: ListedKeyFile[] = [];
  for await (const o of listAll(store, KEY_FILES_PREFIX)) {
    const b = await getOrUndefined(store, o.key);
    if (b === undefined) continue;
    const id = o.key.slice(KEY_FILES_PREFIX.length);
    let e: KeyFileEntry;
    let authentic: boolean | null = null;
    try {
      e = decodeKeyFileEntry(b, keys?.registryKey);
      authentic = keys === undefined ? null : true;
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'AUTH_FAILED') throw err;
      e = decodeKeyFileEntry(b);
      authentic = false;
    }
    out.push({ ...e, id, authentic });
  }
  return out;
}

/**
 * Remove (revoke) a key file's entry. Refused for the key file doing the removal (use
 * another one, so nobody locks themselves out by mistake) and for an id with no entry.
 */
export async function removeKeyFile(store: ObjectStore, current: KeyFileContents, keyFileId: Buffer): Promise<void> {
  if (keyFileId.equals(current.keyFileId)) throw new IslandError('INVALID_ARGUMENT', `key file ${keyFileId.toString('hex')} is the one in use; remove it with another key file`);
  const key = keyFileEntryKey(keyFileId);
  if ((await store.head(key)) === undefined) throw new IslandError('NOT_FOUND', `no key file ${keyFileId.toString('hex')} in this repository`);
  await store.delete(key);
}
