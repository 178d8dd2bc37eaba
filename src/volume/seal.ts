/**
 * A sealed epoch: the set of clusters changed up to a seal, and the means to read each one as
 * it was at the seal while the guest keeps writing (invariant 7).
 *
 * The engine decides when a seal begins and ends (engine.ts); this module keeps the per-seal
 * bookkeeping, the side log copies, and the handle given to the snapshot uploader:
 *  - `copies`: sealed clusters copied to the side log before their first overwrite;
 *  - `seq`: per sealed cluster, how many writes (or truncations) have started on it since the
 *    seal. readSealed reads the image, then compares the counter: if a write started meanwhile
 *    it reads the side log copy instead (the copy is made before the write touches the image);
 *  - `uploaded`: clusters the uploader is done with; overwriting them copies nothing.
 * Only sealed clusters have entries, so the cost follows the change, not the volume.
 */
import { IslandError } from '../errors.js';
import { PagedBitmap } from './bitmap.js';
import type { SideLog } from './sidelog.js';

export type SealStatus = 'open' | 'completed' | 'abandoned';

export interface SideCopy {
  /** Side log slot, or -1 when the cluster lay past the image end at the seal (nothing to copy). */
  readonly slot: number;
  /** Bytes of the cluster at the seal. */
  readonly len: number;
  /** Settles (never rejects) when the copy is in the side log or has failed. */
  readonly ready: Promise<void>;
}

export class SealState {
  status: SealStatus = 'open';
  reason: string | null = null;
  readonly uploaded = new PagedBitmap();
  readonly seq = new Map<number, number>();
  readonly copies = new Map<number, SideCopy>();
  private count: number | null = null;

  constructor(
    readonly epoch: number,
    /** Never changes after the seal. */
    readonly bits: PagedBitmap,
    /** Image length at the seal. */
    readonly length: number,
  ) {}

  clusterCount(): number {
    this.count ??= this.bits.count();
    return this.count;
  }

  /** True for a sealed cluster whose seal content must still be preserved. */
  protects(c: number): boolean {
    return this.status === 'open' && this.bits.get(c) && !this.uploaded.get(c);
  }

  /** A write (or truncation) is about to change cluster c. */
  bump(c: number): void {
    this.seq.set(c, (this.seq.get(c) ?? 0) + 1);
  }

  sequence(c: number): number {
    return this.seq.get(c) ?? 0;
  }

  /** Throw unless the seal is open. */
  checkOpen(): void {
    if (this.status === 'abandoned') {
      throw new IslandError('ABORTED', `sealed epoch ${this.epoch} was abandoned: ${this.reason ?? 'no reason given'}`, { details: { epoch: this.epoch, reason: this.reason } });
    }
    if (this.status === 'completed') throw new IslandError('INVALID_ARGUMENT', `sealed epoch ${this.epoch} is already completed`, { details: { epoch: this.epoch } });
  }
}

/** What the engine does for a Seal handle. */
export interface SealOps {
  readSealed(s: SealState, cluster: number): Promise<Buffer>;
  markUploaded(s: SealState, cluster: number): void;
  complete(s: SealState, committedSnapshot: string): Promise<void>;
  abandon(s: SealState, reason: string): Promise<void>;
}

/** The handle the snapshot uploader works with. */
export class Seal {
  constructor(
    private readonly s: SealState,
    private readonly ops: SealOps,
    readonly clusterSize: number,
  ) {}

  /** The sealed epoch's number. */
  get epoch(): number {
    return this.s.epoch;
  }

  /** Image length at the seal: the snapshot's image length. */
  get length(): number {
    return this.s.length;
  }

  get status(): SealStatus {
    return this.s.status;
  }

  /** Why the seal was abandoned (the side log budget, an I/O error, close, the caller). */
  get abandonReason(): string | null {
    return this.s.reason;
  }

  /** Number of sealed clusters. */
  get clusterCount(): number {
    return this.s.clusterCount();
  }

  /** The sealed clusters, ascending. Some may lie past `length` (truncated away): they are empty. */
  clusters(): Generator<number> {
    return this.s.bits.bits();
  }

  has(cluster: number): boolean {
    return this.s.bits.get(cluster);
  }

  /**
   * The cluster's content at the seal: min(clusterSize, length - cluster * clusterSize) bytes
   * (empty past the end). ABORTED once the seal was abandoned.
   */
  readSealed(cluster: number): Promise<Buffer> {
    return this.ops.readSealed(this.s, cluster);
  }

  /** The uploader holds the cluster's content: later overwrites need no copy; its side log space is freed. */
  markUploaded(cluster: number): void {
    this.ops.markUploaded(this.s, cluster);
  }

  /**
   * Snapshot `committedSnapshot` (its id) holds the sealed epoch and is committed: its
   * changes leave the dirty set for good, and the volume's committed snapshot becomes that
   * id, in one state record write (a crash leaves both old or both new).
   */
  complete(committedSnapshot: string): Promise<void> {
    return this.ops.complete(this.s, committedSnapshot);
  }

  /** Give up: the sealed clusters become dirty again in the current epoch (nothing is forgotten). */
  abandon(): Promise<void> {
    return this.ops.abandon(this.s, 'abandoned by the caller');
  }
}

/** What the seal keeper needs from the engine. */
export interface SealHost {
  /** Read the image without entering the write gate (the caller is a write inside it). */
  readImageInGate(buf: Buffer, len: number, pos: number): Promise<number>;
  /** Read the image through the write gate. */
  readImage(buf: Buffer, len: number, pos: number): Promise<number>;
  /** Make a cluster local (restored volumes). */
  ensurePresent(cluster: number): Promise<void>;
  /** Give the seal up (side log budget or failure): merge it back, tell the world. */
  abandon(s: SealState, reason: string): void;
  warn(err: unknown, msg: string): void;
}

/** The open seal of one volume, its side log copies and its reads. */
export class SealKeeper {
  sealed: SealState | null = null;
  copies = 0;
  readRetries = 0;
  private sideLogReset: Promise<void> = Promise.resolve();

  constructor(
    private readonly sideLog: SideLog,
    private readonly clusterSize: number,
    private readonly budget: number,
    private readonly host: SealHost,
  ) {}

  get sideLogBytes(): number {
    return this.sideLog.bytesInUse;
  }

  /** Empty the side log before a seal (the caller holds the write gate: no copy is in flight). */
  async prepare(): Promise<void> {
    await this.sideLogReset;
    await this.sideLog.reset();
  }

  /** Start a seal (after prepare(), with the write gate still held). */
  begin(epoch: number, bits: PagedBitmap, length: number): SealState {
    const s = new SealState(epoch, bits, length);
    this.sealed = s;
    return s;
  }

  /** End the open seal `s`; false when it had ended already. */
  end(s: SealState, status: 'completed' | 'abandoned', reason: string | null = null): boolean {
    if (this.sealed !== s || s.status !== 'open') return false;
    s.status = status;
    s.reason = reason;
    this.sealed = null;
    this.sideLogReset = this.sideLogReset.then(() => this.sideLog.reset()).catch((err: unknown) => this.host.warn(err, 'emptying the side log failed'));
    return true;
  }

  close(): Promise<void> {
    return this.sideLog.close();
  }

  /** Settles when the side log is empty again. */
  idle(): Promise<void> {
    return this.sideLogReset;
  }

  /** Copy sealed clusters among [c0, c1] to the side log before a write changes them. */
  async protect(c0: number, c1: number): Promise<void> {
    const s = this.sealed;
    if (s === null) return;
    let waits: Array<Promise<void>> | null = null;
    for (let c = c0; c <= c1; c++) {
      if (!s.protects(c)) continue;
      s.bump(c);
      let copy = s.copies.get(c);
      if (copy === undefined) {
        const started = this.startCopy(s, c);
        if (started === null) return; // over budget: the seal is abandoned, nothing to protect
        copy = started;
        s.copies.set(c, copy);
      }
      (waits ??= []).push(copy.ready);
    }
    if (waits !== null) await Promise.all(waits);
  }

  private startCopy(s: SealState, c: number): SideCopy | null {
    const C = this.clusterSize;
    const len = Math.max(0, Math.min(C, s.length - c * C));
    if (len === 0) return { slot: -1, len: 0, ready: Promise.resolve() };
    const slot = this.sideLog.allocate();
    if (slot === null) {
      this.host.abandon(s, `the side log budget of ${this.budget} bytes is exhausted`);
      return null;
    }
    this.copies++;
    const ready = (async () => {
      try {
        const buf = Buffer.alloc(len);
        await this.host.readImageInGate(buf, len, c * C);
        await this.sideLog.write(slot, buf, len);
      } catch (err) {
        this.host.warn(err, 'copying a sealed cluster to the side log failed');
        this.host.abandon(s, `copying cluster ${c} to the side log failed: ${(err as Error).message}`);
      }
    })();
    return { slot, len, ready };
  }

  async readSealed(s: SealState, c: number): Promise<Buffer> {
    s.checkOpen();
    if (!Number.isSafeInteger(c) || c < 0 || !s.bits.get(c)) throw notSealed(s, c);
    if (s.uploaded.get(c)) throw new IslandError('INVALID_ARGUMENT', `cluster ${c} of sealed epoch ${s.epoch} is already marked uploaded`, { details: { cluster: c } });
    const C = this.clusterSize;
    const len = Math.max(0, Math.min(C, s.length - c * C));
    if (len === 0) return Buffer.alloc(0);
    await this.host.ensurePresent(c);
    for (;;) {
      s.checkOpen();
      const copy = s.copies.get(c);
      if (copy !== undefined) {
        await copy.ready;
        s.checkOpen();
        const buf = await this.sideLog.read(copy.slot, len);
        s.checkOpen(); // abandoned while reading: the slot may have been reused
        return buf;
      }
      const before = s.sequence(c);
      const buf = Buffer.alloc(len);
      await this.host.readImage(buf, len, c * C);
      if (s.sequence(c) === before && !s.copies.has(c)) {
        s.checkOpen();
        return buf;
      }
      // A write started on the cluster while we read it; its copy of the old content is the truth.
      this.readRetries++;
    }
  }

  markUploaded(s: SealState, c: number): void {
    if (s.status !== 'open') return;
    if (!Number.isSafeInteger(c) || c < 0 || !s.bits.get(c)) throw notSealed(s, c);
    s.uploaded.set(c);
    s.seq.delete(c);
    const copy = s.copies.get(c);
    if (copy === undefined) return;
    s.copies.delete(c);
    if (copy.slot >= 0) {
      void copy.ready.then(() => {
        if (s.status === 'open') this.sideLog.release(copy.slot);
      });
    }
  }
}

function notSealed(s: SealState, c: number): IslandError {
  return new IslandError('INVALID_ARGUMENT', `cluster ${c} is not in sealed epoch ${s.epoch}`, { details: { cluster: c, epoch: s.epoch } });
}
