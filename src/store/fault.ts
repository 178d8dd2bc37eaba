/**
 * Fault injector for tests: make chosen calls fail, return corrupted bytes, or hang
 * until their caller aborts. Rules match an operation (or any) and an optional key
 * prefix, and fire on the Nth matching call (1-based) for `times` calls in a row.
 */
import { IslandError, type ErrorCode } from '../errors.js';
import { ForwardingStore, type PutOptions } from './types.js';
import type { ListOptions, ListPage, ObjectInfo, ObjectStore, OpOptions } from './types.js';

/** 'put' also matches putIfAbsent; 'put-if-absent' matches only it. */
export type FaultOp = 'put' | 'put-if-absent' | 'get' | 'head' | 'list' | 'delete' | '*';
export type FaultAction =
  | { kind: 'fail'; code?: ErrorCode }
  /** get/getRange return the bytes with one byte flipped; put stores them flipped. */
  | { kind: 'corrupt'; at?: number }
  /** The call never settles until its AbortSignal fires (then ABORTED). */
  | { kind: 'hang' }
  /** The call runs on the inner store, then fails as if its answer were lost (code default STORE_UNAVAILABLE). */
  | { kind: 'lose-answer'; code?: ErrorCode };

export interface FaultRule {
  op: FaultOp;
  action: FaultAction;
  keyPrefix?: string;
  /** Fire on the nth matching call (default 1: the next one). */
  nth?: number;
  /** How many consecutive matching calls fire once triggered (default 1; Infinity = all). */
  times?: number;
}

interface LiveRule extends FaultRule {
  seen: number;
  fired: number;
}

export class FaultStore extends ForwardingStore {
  private rules: LiveRule[] = [];
  /** Number of faults injected so far. */
  injected = 0;

  constructor(inner: ObjectStore) {
    super(inner);
  }

  add(rule: FaultRule): this {
    this.rules.push({ ...rule, seen: 0, fired: 0 });
    return this;
  }

  failNext(op: FaultOp, times = 1, code: ErrorCode = 'FAULT_INJECTED'): this {
    return this.add({ op, action: { kind: 'fail', code }, times });
  }

  clear(): void {
    this.rules = [];
  }

  private match(op: Exclude<FaultOp, '*'>, key: string): FaultAction | undefined {
    for (const r of this.rules) {
      if (r.op !== '*' && r.op !== op && !(r.op === 'put' && op === 'put-if-absent')) continue;
      if (r.keyPrefix !== undefined && !key.startsWith(r.keyPrefix)) continue;
      r.seen++;
      const nth = r.nth ?? 1;
      const times = r.times ?? 1;
      if (r.seen >= nth && r.fired < times) {
        r.fired++;
        this.injected++;
        return r.action;
      }
    }
    return undefined;
  }

  private apply<T>(op: Exclude<FaultOp, '*'>, key: string, signal: AbortSignal | undefined, run: () => Promise<T>, corrupt?: (v: T, at: number | undefined) => T): Promise<T> {
    return this.exec(this.match(op, key), op, key, signal, run, corrupt);
  }

  private async exec<T>(action: FaultAction | undefined, op: string, key: string, signal: AbortSignal | undefined, run: () => Promise<T>, corrupt?: (v: T, at: number | undefined) => T): Promise<T> {
    if (!action) return run();
    switch (action.kind) {
      case 'fail':
        throw new IslandError(action.code ?? 'FAULT_INJECTED', `injected failure of ${op} ${key}`, { details: { key, op } });
      case 'hang':
        return new Promise<T>((_resolve, reject) => {
          const abort = (): void => reject(new IslandError('ABORTED', `${op} ${key}: aborted while hanging`, { cause: signal?.reason }));
          if (signal?.aborted) return abort();
          signal?.addEventListener('abort', abort, { once: true });
        });
      case 'corrupt': {
        const v = await run();
        return corrupt ? corrupt(v, action.at) : v;
      }
      case 'lose-answer':
        await run();
        throw new IslandError(action.code ?? 'STORE_UNAVAILABLE', `injected loss of the answer to ${op} ${key} (the call ran)`, { details: { key, op } });
    }
  }

  override put(key: string, body: Buffer, opts: PutOptions = {}): Promise<void> {
    const action = this.match('put', key);
    // Corruption the store cannot see (after any digest was taken): the caller's MD5 is dropped.
    if (action?.kind === 'corrupt') return this.inner.put(key, flip(body, action.at), { signal: opts.signal });
    return this.exec(action, 'put', key, opts.signal, () => this.inner.put(key, body, opts));
  }

  override putIfAbsent(key: string, body: Buffer, opts: OpOptions = {}): Promise<boolean> {
    const action = this.match('put-if-absent', key);
    if (action?.kind === 'corrupt') return this.inner.putIfAbsent(key, flip(body, action.at), opts);
    return this.exec(action, 'put-if-absent', key, opts.signal, () => this.inner.putIfAbsent(key, body, opts));
  }

  override get(key: string, opts: OpOptions = {}): Promise<Buffer> {
    return this.apply('get', key, opts.signal, () => this.inner.get(key, opts), flip);
  }
  override getRange(key: string, offset: number, length: number, opts: OpOptions = {}): Promise<Buffer> {
    return this.apply('get', key, opts.signal, () => this.inner.getRange(key, offset, length, opts), flip);
  }
  override head(key: string, opts: OpOptions = {}): Promise<ObjectInfo | undefined> {
    return this.apply('head', key, opts.signal, () => this.inner.head(key, opts));
  }
  override list(prefix: string, opts: ListOptions = {}): Promise<ListPage> {
    return this.apply('list', prefix, opts.signal, () => this.inner.list(prefix, opts));
  }
  override delete(key: string, opts: OpOptions = {}): Promise<void> {
    return this.apply('delete', key, opts.signal, () => this.inner.delete(key, opts));
  }
  override deleteMany(keys: readonly string[], opts: OpOptions = {}): Promise<void> {
    return this.apply('delete', keys[0] ?? '', opts.signal, () => this.inner.deleteMany(keys, opts));
  }
}

/** A copy of `b` with one byte inverted (at `at`, default the middle). Empty stays empty. */
export function flip(b: Buffer, at?: number): Buffer {
  const c = Buffer.from(b);
  if (c.length === 0) return c;
  const i = Math.min(c.length - 1, Math.max(0, at ?? c.length >> 1));
  c[i] = (c[i] as number) ^ 0xff;
  return c;
}
