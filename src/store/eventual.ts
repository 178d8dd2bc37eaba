/**
 * Eventual-consistency simulator, for tests and protocol simulations.
 *
 * A single-node Swift rarely shows it, but a real Swift cluster (and S3 before 2020)
 * does: container listings are updated asynchronously and can lag without bound, and
 * a read of an overwritten or deleted object may return the old bytes for a while.
 * This wrapper reproduces those behaviours deterministically from a seed and a clock:
 *
 * - a new key appears in listings only `listLag` ms after its put (random per key,
 *   up to maxListLagMs); with probability `missProb` a listing omits a recent key
 *   even once visible (still within maxListLagMs);
 * - a deleted key keeps appearing in listings for a random lag;
 * - a get of a key overwritten or deleted less than its stale time ago returns the
 *   previous bytes (up to maxStaleReadMs): overwrites are last-writer-wins, and a
 *   writer that reads its key back may see its own bytes although another's won.
 * Reads of new keys are consistent (read-after-write), as both Swift and S3 give,
 * unless maxNewKeyReadLagMs is set: then a get or head of a key created less than its
 * lag ago may still answer "missing" (a store without read-after-write).
 *
 * putIfAbsent is atomic (as on AWS S3 or the fs store) when `conditionalPut` is true
 * (the default); with false the store behaves like Swift's s3api: conditionalPut()
 * answers false and putIfAbsent is refused.
 */
import { IslandError } from '../errors.js';
import { Rng } from '../util/random.js';
import { compareKeys, listLimit, validatePrefix } from './keys.js';
import { conditionalPutUnsupported, ForwardingStore, listAll } from './types.js';
import type { ListOptions, ListPage, ObjectInfo, ObjectStore, OpOptions } from './types.js';

export interface EventualOptions {
  seed: number;
  now?: () => number;
  maxListLagMs?: number;
  missProb?: number;
  maxStaleReadMs?: number;
  maxNewKeyReadLagMs?: number;
  conditionalPut?: boolean;
}

interface Shadow {
  /** listings show the key from this time on (undefined: not hidden) */
  visibleAt?: number;
  /** a deleted key stays in listings until this time */
  ghostUntil?: number;
  ghostSize?: number;
  /** previous bytes (undefined = previously absent) served until staleUntil */
  old?: Buffer | null;
  staleUntil?: number;
  /** a new key may read as missing until this time */
  readableAt?: number;
}

export class EventualStore extends ForwardingStore {
  private readonly rng: Rng;
  private readonly now: () => number;
  private readonly maxLag: number;
  private readonly missProb: number;
  private readonly maxStale: number;
  private readonly maxNewKeyLag: number;
  private readonly conditional: boolean;
  private readonly shadows = new Map<string, Shadow>();

  constructor(inner: ObjectStore, opts: EventualOptions) {
    super(inner);
    this.rng = new Rng(opts.seed);
    this.now = opts.now ?? Date.now;
    this.maxLag = opts.maxListLagMs ?? 1_000;
    this.missProb = opts.missProb ?? 0.1;
    this.maxStale = opts.maxStaleReadMs ?? 500;
    this.maxNewKeyLag = opts.maxNewKeyReadLagMs ?? 0;
    this.conditional = opts.conditionalPut ?? true;
  }

  private shadow(key: string): Shadow {
    let s = this.shadows.get(key);
    if (!s) this.shadows.set(key, (s = {}));
    return s;
  }

  override async put(key: string, body: Buffer, opts: OpOptions = {}): Promise<void> {
    const before = await this.inner.get(key, opts).catch((e: unknown) => {
      if ((e as IslandError).code === 'STORE_NOT_FOUND') return null;
      throw e;
    });
    await this.inner.put(key, body, opts);
    if (before === null) this.created(key);
    else this.overwritten(key, before);
  }

  override async putIfAbsent(key: string, body: Buffer, opts: OpOptions = {}): Promise<boolean> {
    if (!this.conditional) throw conditionalPutUnsupported(this.description, key);
    const created = await this.inner.putIfAbsent(key, body, opts);
    if (created) this.created(key);
    return created;
  }

  override async conditionalPut(opts: OpOptions = {}): Promise<boolean> {
    return this.conditional && (await this.inner.conditionalPut(opts));
  }

  private created(key: string): void {
    const t = this.now();
    const s = this.shadow(key);
    s.visibleAt = t + this.rng.int(this.maxLag + 1);
    delete s.ghostUntil;
    if (this.maxNewKeyLag > 0) s.readableAt = t + this.rng.int(this.maxNewKeyLag + 1);
  }

  private overwritten(key: string, before: Buffer): void {
    const s = this.shadow(key);
    s.old = before;
    s.staleUntil = this.now() + this.rng.int(this.maxStale + 1);
  }

  override async delete(key: string, opts: OpOptions = {}): Promise<void> {
    await this.forget(key, opts);
    await this.inner.delete(key, opts);
  }

  override async deleteMany(keys: readonly string[], opts: OpOptions = {}): Promise<void> {
    for (const k of keys) await this.forget(k, opts);
    await this.inner.deleteMany(keys, opts);
  }

  private async forget(key: string, opts: OpOptions): Promise<void> {
    const before = await this.inner.get(key, opts).catch(() => null);
    if (before === null) return;
    const t = this.now();
    const s = this.shadow(key);
    s.ghostUntil = t + this.rng.int(this.maxLag + 1);
    s.ghostSize = before.length;
    s.old = before;
    s.staleUntil = t + this.rng.int(this.maxStale + 1);
  }

  private stale(key: string): Buffer | null | undefined {
    const s = this.shadows.get(key);
    if (s?.readableAt !== undefined && this.now() < s.readableAt && this.rng.chance(0.5)) return null;
    if (!s || s.staleUntil === undefined || this.now() >= s.staleUntil) return undefined;
    return s.old;
  }

  override async get(key: string, opts: OpOptions = {}): Promise<Buffer> {
    const old = this.stale(key);
    if (old) return Buffer.from(old);
    if (old === null) throw new IslandError('STORE_NOT_FOUND', `no such object: ${key}`, { details: { key } });
    return this.inner.get(key, opts);
  }

  override async getRange(key: string, offset: number, length: number, opts: OpOptions = {}): Promise<Buffer> {
    const old = this.stale(key);
    if (old === null) throw new IslandError('STORE_NOT_FOUND', `no such object: ${key}`, { details: { key } });
    if (old) {
      if (offset >= old.length) throw new IslandError('STORE_RANGE', `range starts at ${offset}, object ${key} has ${old.length} bytes`);
      return Buffer.from(old.subarray(offset, offset + length));
    }
    return this.inner.getRange(key, offset, length, opts);
  }

  override async head(key: string, opts: OpOptions = {}): Promise<ObjectInfo | undefined> {
    const old = this.stale(key);
    if (old === null) return undefined;
    if (old) return { key, size: old.length, mtime: this.now() };
    return this.inner.head(key, opts);
  }

  override async list(prefix: string, opts: ListOptions = {}): Promise<ListPage> {
    validatePrefix(prefix);
    const limit = listLimit(opts.limit);
    const t = this.now();
    const seen = new Map<string, ObjectInfo>();
    for await (const o of listAll(this.inner, prefix, opts)) {
      const s = this.shadows.get(o.key);
      if (s?.visibleAt !== undefined && t < s.visibleAt) continue;
      if (s?.visibleAt !== undefined && t < s.visibleAt + this.maxLag && this.rng.chance(this.missProb)) continue;
      seen.set(o.key, o);
    }
    for (const [key, s] of this.shadows) {
      if (s.ghostUntil !== undefined && t < s.ghostUntil && key.startsWith(prefix) && !seen.has(key)) {
        seen.set(key, { key, size: s.ghostSize ?? 0, mtime: t });
      }
    }
    const all = [...seen.values()]
      .filter((o) => opts.startAfter === undefined || compareKeys(o.key, opts.startAfter) > 0)
      .sort((a, b) => compareKeys(a.key, b.key));
    const items = all.slice(0, limit);
    return { items, next: all.length > limit ? items[items.length - 1]?.key : undefined };
  }
}
