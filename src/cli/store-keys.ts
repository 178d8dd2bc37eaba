/**
 * `island store init-key` and `island store key add|list|remove`: the key files of an
 * encrypted repository. They talk to the store directly (no daemon), validate everything
 * first, and write nothing when they refuse.
 */
import { unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { isAbsolute } from 'node:path';
import type { Config } from '../config.js';
import { regionBackend } from '../config.js';
import { encodeKeyFile, loadKeyFile, readPassphrase, writeKeyFile, type ScryptParams } from '../crypto/key-file.js';
import { RepositoryKeys } from '../crypto/keys.js';
import { holdsData, initializeRepository, listKeyFiles, openRepository, parseKeyFileId, readEncryptionRecord, registerKeyFile, removeKeyFile } from '../crypto/repository.js';
import { IslandError } from '../errors.js';
import { isKeyId } from '../format/encrypted-frame.js';
import { checkLabel } from '../format/encryption-record.js';
import { openStore, type BackendConfig } from '../store/open.js';
import type { ObjectStore } from '../store/types.js';

export interface KeyCommandOptions {
  readonly keyFile?: string | undefined;
  readonly passphraseFile?: string | undefined;
  readonly label?: string | undefined;
  readonly dataKeyId?: string | undefined;
  readonly region?: string | undefined;
  /** Tests only: cheaper scrypt parameters. */
  readonly scrypt?: ScryptParams;
}

export interface KeyCommandResult {
  readonly lines: string[];
  readonly data: unknown;
}

function absolute(p: string | undefined, what: string): string {
  if (p === undefined || p === '') throw new IslandError('INVALID_ARGUMENT', `${what} is needed`);
  if (!isAbsolute(p)) throw new IslandError('INVALID_ARGUMENT', `${what} must be an absolute path, got ${JSON.stringify(p.slice(0, 200))}`);
  return p;
}

function backendOf(config: Config, region: string | undefined): BackendConfig {
  if (region === undefined) return config.store;
  const b = regionBackend(config, region);
  if (b === undefined) throw new IslandError('INVALID_ARGUMENT', `no region ${JSON.stringify(region.slice(0, 40))} in the configuration`);
  return b;
}

async function withStore<T>(config: Config, region: string | undefined, fn: (store: ObjectStore) => Promise<T>): Promise<T> {
  const { store } = openStore(backendOf(config, region));
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

function labelOf(v: string | undefined): string {
  const label = v ?? `${hostname()}`;
  checkLabel(label);
  return label;
}

function dataKeyIdOf(v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!/^[0-9]+$/.test(v) || !isKeyId(n)) throw new IslandError('INVALID_ARGUMENT', `--data-key-id must be an integer 1..4294967295, got ${JSON.stringify(v.slice(0, 20))}`);
  return n;
}

async function currentKeyFile(config: Config) {
  const path = absolute(config.keyFile, 'a key file (keyFile / ISLAND_KEY_FILE)');
  return loadKeyFile(path, await readPassphrase(config.keyPassphraseFile));
}

/** `island store init-key [--key-file PATH] [--label TEXT]`: a new master key, its first key file, the store's record. */
export async function initKeyCommand(config: Config, o: KeyCommandOptions): Promise<KeyCommandResult> {
  const path = absolute(o.keyFile ?? config.keyFile, '--key-file (or keyFile / ISLAND_KEY_FILE)');
  const label = labelOf(o.label);
  const passphrase = await readPassphrase(o.passphraseFile ?? config.keyPassphraseFile);
  const keys = RepositoryKeys.generate(dataKeyIdOf(o.dataKeyId, 1));
  const { bytes, keyFileId } = await encodeKeyFile(keys, passphrase, o.scrypt === undefined ? {} : { scrypt: o.scrypt });
  return withStore(config, o.region, async (store) => {
    // Refusals before the key file is written: an encrypted store, a store holding data.
    const existing = await readEncryptionRecord(store);
    if (existing !== undefined) throw new IslandError('ALREADY_EXISTS', `the store ${store.description} is already encrypted (repository ${existing.repositoryId.toString('hex')}); add a key file with island store key add`);
    const found = await holdsData(store);
    if (found !== undefined) throw new IslandError('ENCRYPTION_MIXED', `the store ${store.description} holds unencrypted island data (${found}); an encrypted repository needs an empty store`, { details: { object: found } });
    await writeKeyFile(path, bytes);
    try {
      await initializeRepository(store, { keyFileId, keys, passphraseless: passphrase.length === 0 }, label);
    } catch (err) {
      // The key file opens nothing without the record: remove it, so a refusal leaves nothing behind.
      await unlink(path).catch(() => undefined);
      throw err;
    }
    const id = keyFileId.toString('hex');
    return {
      lines: [
        `encrypted repository ${keys.repositoryId.toString('hex')} created in ${store.description}`,
        `key file ${id} written to ${path} (mode 0600${passphrase.length === 0 ? ', no passphrase: the file mode is its only protection' : ''})`,
        'back the key file (and its passphrase) up now, away from the store: without a key file the data cannot be read by anyone',
      ],
      data: { repository: keys.repositoryId.toString('hex'), keyFile: id, path },
    };
  });
}

/** `island store key add PATH [--passphrase-file F] [--label T] [--data-key-id N]`. */
export async function keyAddCommand(config: Config, target: string | undefined, o: KeyCommandOptions): Promise<KeyCommandResult> {
  const path = absolute(target, 'the new key file (island store key add PATH)');
  const label = labelOf(o.label);
  const current = await currentKeyFile(config);
  const passphrase = await readPassphrase(o.passphraseFile ?? config.keyPassphraseFile);
  const keys = current.keys.withWriteKeyId(dataKeyIdOf(o.dataKeyId, current.keys.writeKeyId));
  return withStore(config, o.region, async (store) => {
    await openRepository(store, current, { initialize: false });
    const { bytes, keyFileId } = await encodeKeyFile(keys, passphrase, o.scrypt === undefined ? {} : { scrypt: o.scrypt });
    await writeKeyFile(path, bytes);
    await registerKeyFile(store, keys, keyFileId, label);
    const id = keyFileId.toString('hex');
    return { lines: [`key file ${id} written to ${path} (data key id ${keys.writeKeyId}); back it up`], data: { keyFile: id, path, dataKeyId: keys.writeKeyId } };
  });
}

/** `island store key list`: the key files registered in the store (checked when a key file is configured). */
export async function keyListCommand(config: Config, o: KeyCommandOptions): Promise<KeyCommandResult> {
  const current = config.keyFile === undefined ? undefined : await currentKeyFile(config);
  return withStore(config, o.region, async (store) => {
    const record = await readEncryptionRecord(store);
    if (record === undefined) return { lines: [`the store ${store.description} is not encrypted`], data: { encrypted: false, keyFiles: [] } };
    if (current !== undefined) await openRepository(store, current, { initialize: false });
    const files = await listKeyFiles(store, current?.keys);
    const inUse = current?.keyFileId.toString('hex');
    const lines = [`encrypted repository ${record.repositoryId.toString('hex')}, ${files.length} key file(s):`];
    for (const f of files) {
      lines.push(`  ${f.id}  ${new Date(f.created).toISOString()}  ${f.label}${f.id === inUse ? '  (in use)' : ''}${f.authentic === false ? '  NOT MADE WITH THIS MASTER KEY' : ''}`);
    }
    return { lines, data: { encrypted: true, repository: record.repositoryId.toString('hex'), keyFiles: files.map((f) => ({ id: f.id, created: new Date(f.created).toISOString(), label: f.label, inUse: f.id === inUse, authentic: f.authentic })) } };
  });
}

/** `island store key remove ID`: revoke a key file (not the one in use). */
export async function keyRemoveCommand(config: Config, idText: string | undefined, o: KeyCommandOptions): Promise<KeyCommandResult> {
  const id = parseKeyFileId(idText ?? '');
  const current = await currentKeyFile(config);
  return withStore(config, o.region, async (store) => {
    await openRepository(store, current, { initialize: false });
    await removeKeyFile(store, current, id);
    return { lines: [`key file ${id.toString('hex')} removed: it no longer opens this repository (delete the file and its copies too)`], data: { removed: id.toString('hex') } };
  });
}
