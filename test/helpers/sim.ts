/**
 * A deterministic scheduler for protocol simulations. Every store call of every
 * simulated host is queued; the scheduler runs one queued call at a time, chosen by a
 * seeded generator, and advances a virtual clock. A crashed host's queued and future
 * calls never complete, as if its process had died mid-await.
 */
import { ForwardingStore, type ListOptions, type ListPage, type ObjectInfo, type ObjectStore, type OpOptions } from '../../src/store/types.js';
import { Rng } from '../../src/util/random.js';

interface Job {
  host: string;
  queuedAt: number;
  run: () => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

export class Scheduler {
  readonly rng: Rng;
  clock = 1_000_000;
  steps = 0;
  private readonly queue: Job[] = [];
  readonly crashed = new Set<string>();

  /**
   * @param maxStepMs virtual time one step takes at most
   * @param maxDelayMs a queued call runs at the latest this long after it was made: store
   *   requests have deadlines, and the protocols assume G > W + that bound + listing lag.
   */
  constructor(seed: number, readonly maxStepMs = 20, readonly maxDelayMs = 500) {
    this.rng = new Rng(seed);
  }

  now = (): number => this.clock;

  submit<T>(host: string, run: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ host, queuedAt: this.clock, run, resolve: resolve as (v: unknown) => void, reject });
    });
  }

  private timers: { host: string; wake: number; resolve: () => void }[] = [];

  /** Virtual sleep: resolves once the clock reaches now + ms (others keep running meanwhile). */
  sleep(host: string, ms: number): Promise<void> {
    return new Promise((resolve) => this.timers.push({ host, wake: this.clock + ms, resolve }));
  }

  private fireTimers(): void {
    const due = this.timers.filter((t) => t.wake <= this.clock);
    if (due.length === 0) return;
    this.timers = this.timers.filter((t) => t.wake > this.clock);
    for (const t of due) if (!this.crashed.has(t.host)) t.resolve();
  }

  crash(host: string): void {
    this.crashed.add(host);
  }

  /** Run until every actor settles (crashed hosts' actors are abandoned). */
  async run(actors: Map<string, Promise<unknown>>, onStep?: () => void): Promise<Map<string, unknown>> {
    const done = new Map<string, unknown>();
    for (const [name, p] of actors) {
      p.then(
        () => done.set(name, 'ok'),
        (e: unknown) => done.set(name, e),
      );
    }
    for (;;) {
      this.fireTimers();
      await new Promise((r) => setImmediate(r));
      if (this.queue.length === 0 && this.timers.length > 0) {
        this.clock = Math.max(this.clock, Math.min(...this.timers.map((t) => t.wake)));
        continue;
      }
      const live = [...actors.keys()].filter((n) => !done.has(n) && !this.crashed.has(n.split(':')[0] as string));
      if (this.queue.length === 0) {
        if (live.length === 0) return done;
        await new Promise((r) => setTimeout(r, 1));
        if (this.queue.length === 0 && [...actors.keys()].filter((n) => !done.has(n) && !this.crashed.has(n.split(':')[0] as string)).length > 0) {
          throw new Error(`simulation stalled: ${live.join(', ')} wait on something that is not a store call`);
        }
        continue;
      }
      // The queue is in arrival order: its head is the oldest call. Time never moves past
      // the oldest call's deadline, so no call waits longer than maxDelayMs.
      const oldest = this.queue[0] as Job;
      const overdue = this.clock - oldest.queuedAt >= this.maxDelayMs;
      const job = this.queue.splice(overdue ? 0 : this.rng.int(this.queue.length), 1)[0] as Job;
      this.steps++;
      this.clock = Math.min(this.clock + this.rng.int(this.maxStepMs + 1), Math.max(this.clock, oldest.queuedAt + this.maxDelayMs));
      onStep?.();
      if (this.crashed.has(job.host)) continue; // never settles
      try {
        job.resolve(await job.run());
      } catch (e) {
        job.reject(e);
      }
    }
  }
}

/** The store as one simulated host sees it: every call goes through the scheduler. */
export class HostStore extends ForwardingStore {
  constructor(inner: ObjectStore, private readonly sched: Scheduler, private readonly host: string) {
    super(inner);
  }
  private q<T>(fn: () => Promise<T>): Promise<T> {
    return this.sched.submit(this.host, fn);
  }
  override put(key: string, body: Buffer, opts?: OpOptions): Promise<void> {
    return this.q(() => {
      if (process.env.SIM_TRACE) console.log(this.sched.clock, this.host, 'put', key);
      return this.inner.put(key, body, opts);
    });
  }
  override putIfAbsent(key: string, body: Buffer, opts?: OpOptions): Promise<boolean> {
    return this.q(() => {
      if (process.env.SIM_TRACE) console.log(this.sched.clock, this.host, 'put-if-absent', key);
      return this.inner.putIfAbsent(key, body, opts);
    });
  }
  override conditionalPut(opts?: OpOptions): Promise<boolean> {
    return this.q(() => this.inner.conditionalPut(opts));
  }
  override get(key: string, opts?: OpOptions): Promise<Buffer> {
    return this.q(() => this.inner.get(key, opts));
  }
  override getRange(key: string, offset: number, length: number, opts?: OpOptions): Promise<Buffer> {
    return this.q(() => this.inner.getRange(key, offset, length, opts));
  }
  override head(key: string, opts?: OpOptions): Promise<ObjectInfo | undefined> {
    return this.q(() => this.inner.head(key, opts));
  }
  override list(prefix: string, opts?: ListOptions): Promise<ListPage> {
    return this.q(() => this.inner.list(prefix, opts));
  }
  override delete(key: string, opts?: OpOptions): Promise<void> {
    return this.q(() => {
      if (process.env.SIM_TRACE) console.log(this.sched.clock, this.host, 'delete', key);
      return this.inner.delete(key, opts);
    });
  }
  override deleteMany(keys: readonly string[], opts?: OpOptions): Promise<void> {
    return this.q(() => {
      if (process.env.SIM_TRACE) console.log(this.sched.clock, this.host, 'delete', keys.join(' '));
      return this.inner.deleteMany(keys, opts);
    });
  }
}
