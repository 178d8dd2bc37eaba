/**
 * Random transient store failures, for torture runs (test switch ISLAND_STORE_FAULT_RATE):
 * each call fails with FAULT_INJECTED (transient) with probability `rate`, either before it
 * reaches the store or, for writes and deletes, after it took effect (the answer is lost:
 * the caller cannot tell whether it happened, as with a dropped connection). Seeded, so a
 * run repeats. The retry wrapper above it retries these like any transient failure.
 */
import { IslandError } from '../errors.js';
import { Rng } from '../util/random.js';
import { ForwardingStore, type PutOptions } from './types.js';
import type { ListOptions, ListPage, ObjectInfo, ObjectStore, OpOptions } from './types.js';

export class ChaosStore extends ForwardingStore {
  private readonly rng: Rng;
  injected = 0;

  constructor(
    inner: ObjectStore,
    readonly rate: number,
    seed: number,
  ) {
    super(inner);
    if (!(rate >= 0 && rate < 1)) throw new IslandError('INVALID_ARGUMENT', `fault rate must be in [0, 1), got ${rate}`);
    this.rng = new Rng(seed);
  }

  private roll(op: string, key: string): void {
    if (this.rng.next() >= this.rate) return;
    this.injected++;
    throw new IslandError('FAULT_INJECTED', `injected transient failure of ${op} ${key}`, { details: { op, key } });
  }

  /** Before or after the call, at random: a failure after it means the effect happened. */
  private async around<T>(op: string, key: string, run: () => Promise<T>): Promise<T> {
    const after = this.rng.next() < 0.5;
    if (!after) this.roll(op, key);
    const v = await run();
    if (after) this.roll(op, key);
    return v;
  }

  override put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    return this.around('put', key, () => this.inner.put(key, body, opts));
  }
  override get(key: string, opts?: OpOptions): Promise<Buffer> {
    this.roll('get', key);
    return this.inner.get(key, opts);
  }
  override getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    this.roll('get', key);
    return this.inner.getRange(key, offset, length, opts);
  }
  override head(key: string, opts?: OpOptions): Promise<ObjectInfo | undefined> {
    this.roll('head', key);
    return this.inner.head(key, opts);
  }
  override list(prefix: string, opts?: ListOptions): Promise<ListPage> {
    this.roll('list', prefix);
    return this.inner.list(prefix, opts);
  }
  override delete(key: string, opts?: OpOptions): Promise<void> {
    return this.around('delete', key, () => this.inner.delete(key, opts));
  }
}
