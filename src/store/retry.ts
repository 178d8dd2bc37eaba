/**
 * Retry wrapper: the one place island retries store requests.
 *
 * Only transient errors (by code) are retried, with exponential backoff and full
 * jitter, within an overall deadline per call that also bounds each attempt (a hung
 * request is aborted when the deadline passes and fails as STORE_TIMEOUT). The caller's
 * AbortSignal stops waiting and attempts at once. When retries run out, the last error
 * is thrown, its message saying how many attempts were made over how long.
 *
 * A retried putIfAbsent is the one call whose retry can change its answer: if an
 * attempt created the object but its answer was lost (a timeout, a reset connection),
 * the next attempt finds the key taken. So after a failed attempt, a "key exists"
 * answer is checked by reading the object back: it is this call's own write only if
 * it holds exactly this call's bytes (callers make bodies unique, see types.ts).
 */
import { IslandError, isTransient } from '../errors.js';
import { throwIfAborted } from './keys.js';
import { ForwardingStore, type PutOptions } from './types.js';
import type { ListOptions, ListPage, ObjectInfo, ObjectStore, OpOptions } from './types.js';
import { sleep } from '../util/sleep.js';

export interface RetryOptions {
  /** Attempts in all, first one included (default 8). */
  attempts?: number;
  /** First backoff ceiling in ms (default 50); doubles per attempt up to maxDelayMs. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Overall time budget per call, retries included (default 120 s). */
  deadlineMs?: number;
  random?: () => number;
  onRetry?: (info: { op: string; key: string; attempt: number; delayMs: number; error: IslandError }) => void;
}

/** D: the overall deadline of one store call, retries included (docs/protocols.md). */
export const DEFAULT_DEADLINE_MS = 120_000;

export class RetryStore extends ForwardingStore {
  private readonly attempts: number;
  private readonly base: number;
  private readonly max: number;
  private readonly deadline: number;
  private readonly random: () => number;
  private readonly onRetry: RetryOptions['onRetry'];

  constructor(inner: ObjectStore, opts: RetryOptions = {}) {
    super(inner);
    this.attempts = Math.max(1, opts.attempts ?? 8);
    this.base = opts.baseDelayMs ?? 50;
    this.max = opts.maxDelayMs ?? 5_000;
    this.deadline = opts.deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.random = opts.random ?? Math.random;
    this.onRetry = opts.onRetry;
  }

  private async run<T>(op: string, key: string, signal: AbortSignal | undefined, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const started = Date.now();
    // A ref'd timer (AbortSignal.timeout is unref'd: a hung call would let a CLI exit silently).
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), this.deadline);
    const deadlineSignal = deadline.signal;
    const attemptSignal = signal ? AbortSignal.any([signal, deadlineSignal]) : deadlineSignal;
    try {
      return await this.attempts_(op, key, signal, fn, attemptSignal, deadlineSignal, started);
    } finally {
      clearTimeout(timer);
    }
  }

  private async attempts_<T>(op: string, key: string, signal: AbortSignal | undefined, fn: (signal: AbortSignal) => Promise<T>, attemptSignal: AbortSignal, deadlineSignal: AbortSignal, started: number): Promise<T> {
    let last: IslandError | undefined;
    for (let attempt = 1; attempt <= this.attempts; attempt++) {
      throwIfAborted(signal);
      try {
        return await fn(attemptSignal);
      } catch (err) {
        let e = err instanceof IslandError ? err : new IslandError('INTERNAL', String((err as Error)?.message ?? err), { cause: err });
        if (e.code === 'ABORTED' && !signal?.aborted && deadlineSignal.aborted) {
          e = new IslandError('STORE_TIMEOUT', `${op} ${key}: no answer within the ${this.deadline} ms deadline`, { cause: last ?? e, details: { key, op } });
        }
        if (!isTransient(e) || (e.code === 'STORE_TIMEOUT' && deadlineSignal.aborted)) throw this.final(e, attempt, started);
        last = e;
        const delay = Math.floor(this.random() * Math.min(this.max, this.base * 2 ** (attempt - 1)));
        if (attempt === this.attempts || Date.now() - started + delay >= this.deadline) break;
        this.onRetry?.({ op, key, attempt, delayMs: delay, error: e });
        await sleep(delay, attemptSignal);
      }
    }
    throw this.final(last as IslandError, this.attempts, started);
  }

  private final(e: IslandError, attempts: number, started: number): IslandError {
    if (attempts <= 1) return e;
    return new IslandError(e.code, `${e.message} (gave up after ${attempts} attempts in ${Date.now() - started} ms)`, { cause: e.cause ?? e, details: { ...e.details, attempts } });
  }

  override put(key: string, body: Buffer, opts: PutOptions = {}): Promise<void> {
    return this.run('put', key, opts.signal, (signal) => this.inner.put(key, body, { signal, md5: opts.md5 }));
  }
  override putIfAbsent(key: string, body: Buffer, opts: OpOptions = {}): Promise<boolean> {
    let earlierAttemptFailed = false;
    return this.run('put-if-absent', key, opts.signal, async (signal) => {
      try {
        const created = await this.inner.putIfAbsent(key, body, { signal });
        if (created || !earlierAttemptFailed) return created;
        return (await this.inner.get(key, { signal })).equals(body);
      } catch (err) {
        earlierAttemptFailed = true;
        throw err;
      }
    });
  }
  override conditionalPut(opts: OpOptions = {}): Promise<boolean> {
    return this.run('conditional-put-probe', '', opts.signal, (signal) => this.inner.conditionalPut({ signal }));
  }
  override get(key: string, opts: OpOptions = {}): Promise<Buffer> {
    return this.run('get', key, opts.signal, (signal) => this.inner.get(key, { signal }));
  }
  override getRange(key: string, offset: number, length: number, opts: OpOptions = {}): Promise<Buffer> {
    return this.run('get', key, opts.signal, (signal) => this.inner.getRange(key, offset, length, { signal }));
  }
  override head(key: string, opts: OpOptions = {}): Promise<ObjectInfo | undefined> {
    return this.run('head', key, opts.signal, (signal) => this.inner.head(key, { signal }));
  }
  override list(prefix: string, opts: ListOptions = {}): Promise<ListPage> {
    return this.run('list', prefix, opts.signal, (signal) => this.inner.list(prefix, { ...opts, signal }));
  }
  override delete(key: string, opts: OpOptions = {}): Promise<void> {
    return this.run('delete', key, opts.signal, (signal) => this.inner.delete(key, { signal }));
  }
  override deleteMany(keys: readonly string[], opts: OpOptions = {}): Promise<void> {
    return this.run('delete-many', keys[0] ?? '', opts.signal, (signal) => this.inner.deleteMany(keys, { signal }));
  }
}
