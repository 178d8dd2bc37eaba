/**
 * The object store contract every backend (fs, mem, s3) and wrapper honours.
 *
 * island writes every object once (content-addressed or uniquely named) and never
 * relies on a listing being complete or fresh. Only one decision needs more than that:
 * which host wins a generation of a volume (repo/attach.ts), which uses a conditional
 * write where the store has one. The contract is therefore small:
 *
 * - put(key, body): store the whole object. When it resolves, the object is durable
 *   and a get of the key on this store returns these bytes (read-after-write for new
 *   keys). Overwriting an existing key is allowed but island does it only for the
 *   volume catalog; readers of overwritten keys may see either version for a while.
 * - get(key): the whole object. Missing key: STORE_NOT_FOUND.
 * - getRange(key, offset, length): bytes [offset, offset+length) of the object, or
 *   fewer if the object ends first. offset at or past the end (also for an empty
 *   object): STORE_RANGE. length must be > 0.
 * - head(key): size (and modification time) of the object, or undefined when missing.
 * - list(prefix, {startAfter, limit}): one page of keys starting with prefix, in
 *   ascending UTF-8 byte order, strictly after startAfter; `next` is the token for the
 *   following page (undefined on the last). A listing may lag behind writes and
 *   deletes: it is a hint, never proof of existence or absence.
 * - putIfAbsent(key, body): create the object only if no object of that name exists:
 *   true when this call created it, false when the key already existed (nothing was
 *   written). Atomic against every other put and putIfAbsent of the key, across
 *   processes and hosts: of N racing calls for one new key exactly one returns true.
 *   When it resolves true the object is durable, like put. Honoured only where
 *   conditionalPut() resolves true; elsewhere it fails with STORE_BAD_REQUEST and
 *   writes nothing. Callers give each call a body no other caller could write (e.g.
 *   with a random nonce): the retry wrapper compares bodies to tell its own earlier
 *   attempt, whose answer was lost, from another writer.
 * - conditionalPut(): whether putIfAbsent is honoured. Answered once per store (an S3
 *   endpoint is probed: Swift's s3api answers a conditional PUT with 501; AWS S3,
 *   MinIO and Ceph honour it) and cached.
 * - delete(key): remove the object; deleting a missing key succeeds.
 * - deleteMany(keys): delete each key; missing keys succeed; failures are reported
 *   together in one error whose details.failed lists {key, code}.
 *
 * Every method takes an optional AbortSignal. Errors are IslandErrors whose code says
 * whether the failure is permanent (STORE_NOT_FOUND, STORE_ACCESS_DENIED,
 * STORE_BAD_REQUEST, STORE_RANGE, STORE_CONFIG) or transient (STORE_UNAVAILABLE,
 * STORE_TIMEOUT, STORE_INTEGRITY); only the retry wrapper retries.
 *
 * Keys are validated by validateKey (keys.ts) in every backend the same way.
 */

import { IslandError } from '../errors.js';

export interface ObjectInfo {
  readonly key: string;
  readonly size: number;
  /** Modification time in ms since the epoch (whole seconds on S3). */
  readonly mtime: number;
}

export interface ListPage {
  readonly items: ObjectInfo[];
  /** Pass as startAfter to get the next page; undefined when this page is the last. */
  readonly next: string | undefined;
}

export interface OpOptions {
  signal?: AbortSignal | undefined;
}

export interface PutOptions extends OpOptions {
  /**
   * The MD5 of exactly these bytes, when the caller computed it (off the main thread): a
   * store that sends Content-MD5 uses it instead of hashing the body again. A wrong one
   * is refused by the store (STORE_INTEGRITY), never stored.
   */
  md5?: Buffer | undefined;
}

export interface ListOptions extends OpOptions {
  startAfter?: string | undefined;
  /** Page size, 1..1000 (default 1000). */
  limit?: number | undefined;
}

export interface ObjectStore {
  /** Human-readable identity for logs and metrics, e.g. "fs:/var/lib/island/store". */
  readonly description: string;
  put(key: string, body: Buffer, opts?: PutOptions): Promise<void>;
  /** Create-if-absent: true = created by this call, false = the key already existed. */
  putIfAbsent(key: string, body: Buffer, opts?: OpOptions): Promise<boolean>;
  /** Whether putIfAbsent is honoured by this store (probed once, then cached). */
  conditionalPut(opts?: OpOptions): Promise<boolean>;
  get(key: string, opts?: OpOptions): Promise<Buffer>;
  getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer>;
  head(key: string, opts?: OpOptions): Promise<ObjectInfo | undefined>;
  list(prefix: string, opts?: ListOptions): Promise<ListPage>;
  delete(key: string, opts?: OpOptions): Promise<void>;
  deleteMany(keys: readonly string[], opts?: OpOptions): Promise<void>;
  /** Release sockets and timers. May be called more than once. */
  close(): Promise<void>;
}

export const MAX_LIST_LIMIT = 1000;

/** Every key under prefix, page by page (a lagging listing gives a lagging answer). */
export async function* listAll(store: ObjectStore, prefix: string, opts: OpOptions = {}): AsyncGenerator<ObjectInfo> {
  let startAfter: string | undefined;
  for (;;) {
    const page = await store.list(prefix, { startAfter, signal: opts.signal });
    yield* page.items;
    if (page.next === undefined) return;
    startAfter = page.next;
  }
}

/** A store that forwards everything to an inner store; wrappers override what they change. */
export class ForwardingStore implements ObjectStore {
  constructor(protected readonly inner: ObjectStore) {}
  get description(): string {
    return this.inner.description;
  }
  put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    return this.inner.put(key, body, opts);
  }
  putIfAbsent(key: string, body: Buffer, opts?: OpOptions): Promise<boolean> {
    return this.inner.putIfAbsent(key, body, opts);
  }
  conditionalPut(opts?: OpOptions): Promise<boolean> {
    return this.inner.conditionalPut(opts);
  }
  get(key: string, opts?: OpOptions): Promise<Buffer> {
    return this.inner.get(key, opts);
  }
  getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    return this.inner.getRange(key, offset, length, opts);
  }
  head(key: string, opts?: OpOptions): Promise<ObjectInfo | undefined> {
    return this.inner.head(key, opts);
  }
  list(prefix: string, opts?: ListOptions): Promise<ListPage> {
    return this.inner.list(prefix, opts);
  }
  delete(key: string, opts?: OpOptions): Promise<void> {
    return this.inner.delete(key, opts);
  }
  deleteMany(keys: readonly string[], opts?: OpOptions): Promise<void> {
    return this.inner.deleteMany(keys, opts);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The error of a putIfAbsent on a store that does not honour it (nothing was written). */
export function conditionalPutUnsupported(store: string, key: string): Error {
  return new IslandError('STORE_BAD_REQUEST', `${store} does not support create-if-absent (conditional PUT) of ${key}`, { details: { key } });
}
