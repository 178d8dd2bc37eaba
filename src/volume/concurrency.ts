/**
 * Small concurrency tools of the volume engine.
 *
 * Gate: writes pass through it concurrently; an exclusive section (seal, truncate, the switch
 * to a new intent epoch) closes it, waits for the writes inside to finish, runs alone, and
 * opens it again. Entering an open gate allocates nothing.
 *
 * Coalescer: a group commit. request() returns a promise that settles after one run of the
 * task that started after the request; requests made while a run is in progress share the
 * next run.
 *
 * Mutex: runs tasks one at a time, in order.
 */

export class Gate {
  private active = 0;
  private closed = false;
  private waitingToEnter: Array<() => void> = [];
  private idle: (() => void) | null = null;
  private chain: Promise<void> = Promise.resolve();

  /** Enter without waiting when the gate is open; false when it is closed (call enter()). */
  tryEnter(): boolean {
    if (this.closed) return false;
    this.active++;
    return true;
  }

  async enter(): Promise<void> {
    while (this.closed) await new Promise<void>((resolve) => this.waitingToEnter.push(resolve));
    this.active++;
  }

  leave(): void {
    this.active--;
    if (this.active === 0 && this.idle !== null) {
      const idle = this.idle;
      this.idle = null;
      idle();
    }
  }

  /** Operations currently inside. */
  get inside(): number {
    return this.active;
  }

  /** Run `fn` with the gate closed and nothing inside; exclusive sections run one at a time. */
  exclusive<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.chain.then(async () => {
      this.closed = true;
      try {
        if (this.active > 0) await new Promise<void>((resolve) => (this.idle = resolve));
        return await fn();
      } finally {
        this.closed = false;
        const waiting = this.waitingToEnter;
        this.waitingToEnter = [];
        for (const w of waiting) w();
      }
    });
    this.chain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}

export class Coalescer {
  private running: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(private readonly task: () => Promise<void>) {}

  request(): Promise<void> {
    if (this.next !== null) return this.next;
    if (this.running === null) return this.start();
    const after = this.running.then(
      () => undefined,
      () => undefined,
    );
    this.next = after.then(() => {
      this.next = null;
      return this.start();
    });
    return this.next;
  }

  /** Settles when no run is in progress or queued. */
  async idle(): Promise<void> {
    while (this.running !== null || this.next !== null) {
      await (this.next ?? this.running)?.catch(() => undefined);
    }
  }

  private start(): Promise<void> {
    const run = this.task().finally(() => {
      if (this.running === run) this.running = null;
    });
    this.running = run;
    return run;
  }
}

export class Mutex {
  private chain: Promise<void> = Promise.resolve();

  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const result = this.chain.then(fn);
    this.chain = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}
