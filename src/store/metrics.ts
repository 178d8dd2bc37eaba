/**
 * Metrics wrapper: counts every request that reaches the inner store (each retry
 * attempt is a request), with bytes, errors by code and latency, per operation.
 *
 * store/ does not know Prometheus: it fills a plain StoreStats object that benchmarks
 * read directly and the daemon exports (by polling or through `onObserve`).
 */
import { codeOf } from '../errors.js';
import { ForwardingStore, type PutOptions } from './types.js';
import type { ListOptions, ListPage, ObjectInfo, ObjectStore, OpOptions } from './types.js';

export const STORE_OPS = ['put', 'put_if_absent', 'get', 'get_range', 'head', 'list', 'delete', 'delete_many'] as const;
export type StoreOp = (typeof STORE_OPS)[number];

/** Latency bucket upper bounds in ms (the last bucket is +Inf). */
export const LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] as const;

export interface OpStats {
  requests: number;
  errors: Record<string, number>;
  bytesIn: number;
  bytesOut: number;
  totalMs: number;
  /** counts per LATENCY_BUCKETS_MS bucket, plus one for +Inf */
  buckets: number[];
}

export interface Observation {
  op: StoreOp;
  ms: number;
  bytesIn: number;
  bytesOut: number;
  error?: string | undefined;
}

export class StoreStats {
  readonly ops: Record<StoreOp, OpStats>;

  constructor() {
    this.ops = Object.fromEntries(STORE_OPS.map((op) => [op, StoreStats.empty()])) as Record<StoreOp, OpStats>;
  }

  private static empty(): OpStats {
    return { requests: 0, errors: {}, bytesIn: 0, bytesOut: 0, totalMs: 0, buckets: new Array<number>(LATENCY_BUCKETS_MS.length + 1).fill(0) };
  }

  observe(o: Observation): void {
    const s = this.ops[o.op];
    s.requests++;
    s.bytesIn += o.bytesIn;
    s.bytesOut += o.bytesOut;
    s.totalMs += o.ms;
    let i = LATENCY_BUCKETS_MS.findIndex((b) => o.ms <= b);
    if (i < 0) i = LATENCY_BUCKETS_MS.length;
    s.buckets[i] = (s.buckets[i] ?? 0) + 1;
    if (o.error) s.errors[o.error] = (s.errors[o.error] ?? 0) + 1;
  }

  /** A deep copy, e.g. to diff before/after a benchmark phase. */
  snapshot(): Record<StoreOp, OpStats> {
    return structuredClone(this.ops);
  }

  reset(): void {
    for (const op of STORE_OPS) this.ops[op] = StoreStats.empty();
  }

  get requests(): number {
    return STORE_OPS.reduce((n, op) => n + this.ops[op].requests, 0);
  }
}

export class MetricsStore extends ForwardingStore {
  constructor(
    inner: ObjectStore,
    readonly stats: StoreStats = new StoreStats(),
    private readonly onObserve?: (o: Observation) => void,
  ) {
    super(inner);
  }

  private async time<T>(op: StoreOp, bytesOut: number, fn: () => Promise<T>, bytesIn: (v: T) => number): Promise<T> {
    const t0 = performance.now();
    try {
      const v = await fn();
      this.record({ op, ms: performance.now() - t0, bytesIn: bytesIn(v), bytesOut });
      return v;
    } catch (err) {
      this.record({ op, ms: performance.now() - t0, bytesIn: 0, bytesOut, error: codeOf(err) });
      throw err;
    }
  }

  private record(o: Observation): void {
    this.stats.observe(o);
    this.onObserve?.(o);
  }

  override put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    return this.time('put', body.length, () => this.inner.put(key, body, opts), () => 0);
  }
  override putIfAbsent(key: string, body: Buffer, opts?: OpOptions): Promise<boolean> {
    return this.time('put_if_absent', body.length, () => this.inner.putIfAbsent(key, body, opts), () => 0);
  }
  override get(key: string, opts?: OpOptions): Promise<Buffer> {
    return this.time('get', 0, () => this.inner.get(key, opts), (b) => b.length);
  }
  override getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    return this.time('get_range', 0, () => this.inner.getRange(key, offset, length, opts), (b) => b.length);
  }
  override head(key: string, opts?: OpOptions): Promise<ObjectInfo | undefined> {
    return this.time('head', 0, () => this.inner.head(key, opts), () => 0);
  }
  override list(prefix: string, opts?: ListOptions): Promise<ListPage> {
    return this.time('list', 0, () => this.inner.list(prefix, opts), () => 0);
  }
  override delete(key: string, opts?: OpOptions): Promise<void> {
    return this.time('delete', 0, () => this.inner.delete(key, opts), () => 0);
  }
  override deleteMany(keys: readonly string[], opts?: OpOptions): Promise<void> {
    return this.time('delete_many', 0, () => this.inner.deleteMany(keys, opts), () => 0);
  }
}
