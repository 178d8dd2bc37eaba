/**
 * What a daemon or command does once, when it opens a region's store: load the configured
 * key file (if any), decide with the store's encryption record (repository.ts), and hand
 * back the store to use (records sealed when encrypted) and the frame codec for packs.
 * Every refusal happens here, before anything is written.
 */
import { IslandError } from '../errors.js';
import { encryptedFrames, PLAIN_FRAMES, type FrameCodec } from '../format/frame-codec.js';
import { ForwardingStore, type ListOptions, type ListPage, type ObjectInfo, type ObjectStore, type OpOptions, type PutOptions } from '../store/types.js';
import { loadKeyFile, readPassphrase, type KeyFileContents } from './key-file.js';
import { openRepository, readEncryptionRecord, type OpenOptions } from './repository.js';
import { SealedStore } from './sealed-store.js';

export interface KeySettings {
  readonly keyFile: string | undefined;
  readonly keyPassphraseFile: string | undefined;
}

export interface OpenedEncryption {
  /** The store to build a Repository on: a SealedStore when encrypted, `store` itself otherwise. */
  readonly store: ObjectStore;
  readonly frames: FrameCodec;
  readonly encrypted: boolean;
  /** The key file in use (for copies to other regions: they must accept the same one). */
  readonly keyFile: KeyFileContents | undefined;
}

/** Load the configured key file, or undefined when none is configured. */
export async function loadConfiguredKey(settings: KeySettings): Promise<KeyFileContents | undefined> {
  if (settings.keyFile === undefined) return undefined;
  return loadKeyFile(settings.keyFile, await readPassphrase(settings.keyPassphraseFile));
}

/** Open `store` with an already loaded key file (or none). */
export async function openWithKey(store: ObjectStore, keyFile: KeyFileContents | undefined, opts: OpenOptions = {}): Promise<OpenedEncryption> {
  const r = await openRepository(store, keyFile, opts);
  if (!r.encrypted) return { store, frames: PLAIN_FRAMES, encrypted: false, keyFile: undefined };
  return { store: new SealedStore(store, r.keys), frames: encryptedFrames(r.keys), encrypted: true, keyFile };
}

/** Open `store` as the settings say. */
export async function openEncryption(store: ObjectStore, settings: KeySettings, opts: OpenOptions = {}): Promise<OpenedEncryption> {
  return openWithKey(store, await loadConfiguredKey(settings), opts);
}

/**
 * For work that reads trees to decide what to delete (GC, prune): refuse, saying why, when
 * the store is encrypted and this process has no key, so it deletes nothing rather than
 * failing halfway on the first sealed object.
 */
export async function requireReadable(store: ObjectStore, encrypted: boolean, what: string): Promise<void> {
  if (encrypted) return;
  const record = await readEncryptionRecord(store);
  if (record !== undefined) {
    throw new IslandError('KEY_MISSING', `${what} deleted nothing: the store ${store.description} is encrypted (repository ${record.repositoryId.toString('hex')}) and this process has no key to read its trees`, {
      details: { repository: record.repositoryId.toString('hex') },
    });
  }
}

/**
 * A store whose first use decides, once, whether this process may use it with the key it
 * has (openWithKey: the same table), and then forwards every call to the right store (sealed
 * or not). For places that must hand out a store synchronously (the region opener of
 * copies): a refusal surfaces on the first call, before anything is written.
 */
class GatedStore extends ForwardingStore {
  #opened: Promise<ObjectStore> | undefined;

  constructor(
    inner: ObjectStore,
    private readonly keyFile: KeyFileContents | undefined,
  ) {
    super(inner);
  }

  private target(): Promise<ObjectStore> {
    this.#opened ??= openWithKey(this.inner, this.keyFile).then((o) => o.store);
    // A failed check (a store that did not answer) is tried again by the next call.
    this.#opened.catch(() => (this.#opened = undefined));
    return this.#opened;
  }

  override async put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    return (await this.target()).put(key, body, opts);
  }
  override async putIfAbsent(key: string, body: Buffer, opts?: OpOptions): Promise<boolean> {
    return (await this.target()).putIfAbsent(key, body, opts);
  }
  override async get(key: string, opts?: OpOptions): Promise<Buffer> {
    return (await this.target()).get(key, opts);
  }
  override async getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    return (await this.target()).getRange(key, offset, length, opts);
  }
  override async head(key: string, opts?: OpOptions): Promise<ObjectInfo | undefined> {
    return (await this.target()).head(key, opts);
  }
  override async list(prefix: string, opts?: ListOptions): Promise<ListPage> {
    return (await this.target()).list(prefix, opts);
  }
  override async delete(key: string, opts?: OpOptions): Promise<void> {
    return (await this.target()).delete(key, opts);
  }
  override async deleteMany(keys: readonly string[], opts?: OpOptions): Promise<void> {
    return (await this.target()).deleteMany(keys, opts);
  }
}

/**
 * Another region's store for this process's key (or none): the frame codec now, the
 * decision on first use. A region whose record names another key refuses with KEY_MISMATCH;
 * an empty region becomes encrypted with the same repository key (both regions hold the
 * same keys, so packs copy byte for byte).
 */
export function openRegionStore(store: ObjectStore, keyFile: KeyFileContents | undefined): { store: ObjectStore; frames: FrameCodec } {
  return { store: new GatedStore(store, keyFile), frames: keyFile === undefined ? PLAIN_FRAMES : encryptedFrames(keyFile.keys) };
}
