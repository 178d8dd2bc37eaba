/**
 * Concurrency limit: at most `max` requests in flight on the inner store; the rest
 * wait in FIFO order (an aborted waiter leaves the queue). Placed inside the retry
 * wrapper so a retry queues again instead of holding a slot while it sleeps.
 */
import { IslandError } from '../errors.js';
import { ForwardingStore, type PutOptions } from './types.js';
import type { ListOptions, ListPage, ObjectInfo, ObjectStore, OpOptions } from './types.js';

export class Semaphore {
  private active = 0;
  private readonly waiters: Array<() => void> = [];

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new IslandError('INVALID_ARGUMENT', `concurrency must be a positive integer, got ${max}`);
  }

  get inFlight(): number {
    return this.active;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  async acquire(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw new IslandError('ABORTED', 'operation aborted', { cause: signal.reason });
    if (this.active < this.max) {
      this.active++;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const wake = (): void => {
        signal?.removeEventListener('abort', onAbort);
        this.active++;
        resolve();
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(wake);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new IslandError('ABORTED', 'operation aborted', { cause: signal?.reason }));
      };
      this.waiters.push(wake);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  release(): void {
    this.active--;
    const next = this.waiters.shift();
    if (next) next();
  }

  async run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    await this.acquire(signal);
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}

export class LimitStore extends ForwardingStore {
  readonly semaphore: Semaphore;

  constructor(inner: ObjectStore, max: number) {
    super(inner);
    this.semaphore = new Semaphore(max);
  }

  override put(key: string, body: Buffer, opts: PutOptions = {}): Promise<void> {
    return this.semaphore.run(() => this.inner.put(key, body, opts), opts.signal);
  }
  override putIfAbsent(key: string, body: Buffer, opts: OpOptions = {}): Promise<boolean> {
    return this.semaphore.run(() => this.inner.putIfAbsent(key, body, opts), opts.signal);
  }
  override conditionalPut(opts: OpOptions = {}): Promise<boolean> {
    return this.semaphore.run(() => this.inner.conditionalPut(opts), opts.signal);
  }
  override get(key: string, opts: OpOptions = {}): Promise<Buffer> {
    return this.semaphore.run(() => this.inner.get(key, opts), opts.signal);
  }
  override getRange(key: string, offset: number, length: number, opts: OpOptions = {}): Promise<Buffer> {
    return this.semaphore.run(() => this.inner.getRange(key, offset, length, opts), opts.signal);
  }
  override head(key: string, opts: OpOptions = {}): Promise<ObjectInfo | undefined> {
    return this.semaphore.run(() => this.inner.head(key, opts), opts.signal);
  }
  override list(prefix: string, opts: ListOptions = {}): Promise<ListPage> {
    return this.semaphore.run(() => this.inner.list(prefix, opts), opts.signal);
  }
  override delete(key: string, opts: OpOptions = {}): Promise<void> {
    return this.semaphore.run(() => this.inner.delete(key, opts), opts.signal);
  }
  override deleteMany(keys: readonly string[], opts: OpOptions = {}): Promise<void> {
    return this.semaphore.run(() => this.inner.deleteMany(keys, opts), opts.signal);
  }
}
