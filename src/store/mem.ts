/**
 * In-memory object store for tests and simulations. Follows the contract exactly
 * (including copies on put/get, so callers cannot mutate stored bytes).
 */
import { IslandError } from '../errors.js';
import { compareKeys, listLimit, throwIfAborted, validateKey, validatePrefix, validateRange } from './keys.js';
import type { ListOptions, ListPage, ObjectInfo, ObjectStore, OpOptions } from './types.js';

interface Entry {
  data: Buffer;
  mtime: number;
}

export class MemStore implements ObjectStore {
  readonly description: string;
  private readonly objects = new Map<string, Entry>();
  private readonly now: () => number;

  constructor(opts: { name?: string; now?: () => number } = {}) {
    this.description = `mem:${opts.name ?? 'default'}`;
    this.now = opts.now ?? Date.now;
  }

  async put(key: string, body: Buffer, opts: OpOptions = {}): Promise<void> {
    validateKey(key);
    throwIfAborted(opts.signal);
    this.objects.set(key, { data: Buffer.from(body), mtime: this.now() });
  }

  /** Atomic: the check and the set happen in one turn of the event loop. */
  async putIfAbsent(key: string, body: Buffer, opts: OpOptions = {}): Promise<boolean> {
    validateKey(key);
    throwIfAborted(opts.signal);
    if (this.objects.has(key)) return false;
    this.objects.set(key, { data: Buffer.from(body), mtime: this.now() });
    return true;
  }

  async conditionalPut(): Promise<boolean> {
    return true;
  }

  private entry(key: string): Entry {
    validateKey(key);
    const e = this.objects.get(key);
    if (!e) throw new IslandError('STORE_NOT_FOUND', `no such object: ${key}`, { details: { key } });
    return e;
  }

  async get(key: string, opts: OpOptions = {}): Promise<Buffer> {
    throwIfAborted(opts.signal);
    return Buffer.from(this.entry(key).data);
  }

  async getRange(key: string, offset: number, length: number, opts: OpOptions = {}): Promise<Buffer> {
    validateRange(offset, length);
    throwIfAborted(opts.signal);
    const { data } = this.entry(key);
    if (offset >= data.length) throw new IslandError('STORE_RANGE', `range starts at ${offset}, object ${key} has ${data.length} bytes`, { details: { key, offset } });
    return Buffer.from(data.subarray(offset, Math.min(data.length, offset + length)));
  }

  async head(key: string, opts: OpOptions = {}): Promise<ObjectInfo | undefined> {
    validateKey(key);
    throwIfAborted(opts.signal);
    const e = this.objects.get(key);
    return e ? { key, size: e.data.length, mtime: e.mtime } : undefined;
  }

  async list(prefix: string, opts: ListOptions = {}): Promise<ListPage> {
    validatePrefix(prefix);
    const limit = listLimit(opts.limit);
    throwIfAborted(opts.signal);
    const keys = [...this.objects.keys()]
      .filter((k) => k.startsWith(prefix) && (opts.startAfter === undefined || compareKeys(k, opts.startAfter) > 0))
      .sort(compareKeys);
    const page = keys.slice(0, limit);
    const items = page.map((key) => {
      const e = this.objects.get(key) as Entry;
      return { key, size: e.data.length, mtime: e.mtime };
    });
    return { items, next: keys.length > limit ? page[page.length - 1] : undefined };
  }

  async delete(key: string, opts: OpOptions = {}): Promise<void> {
    validateKey(key);
    throwIfAborted(opts.signal);
    this.objects.delete(key);
  }

  async deleteMany(keys: readonly string[], opts: OpOptions = {}): Promise<void> {
    for (const k of keys) validateKey(k);
    throwIfAborted(opts.signal);
    for (const k of keys) this.objects.delete(k);
  }

  async close(): Promise<void> {}

  /** Test helper: number of objects and bytes held. */
  stats(): { objects: number; bytes: number } {
    let bytes = 0;
    for (const e of this.objects.values()) bytes += e.data.length;
    return { objects: this.objects.size, bytes };
  }
}
