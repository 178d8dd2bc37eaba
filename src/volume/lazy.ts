/**
 * Lazy restore: the clusters of a volume restored from a snapshot that are not local yet are
 * fetched from the base snapshot when a read, a partial write, a sealed read or the
 * background fill needs them (single flight per cluster), with read-ahead for sequential
 * readers. Fetched content is written inside the engine's write gate and only where the
 * cluster is still missing, so a guest write is never overwritten (present.ts has the
 * ordering of present bits).
 */
import { IslandError } from '../errors.js';
import type { Gate } from './concurrency.js';
import type { LocalFile } from './files.js';
import type { PresentMap } from './present.js';
import type { PresentFetcher } from './setup.js';

/** Read-ahead of a sequential reader of missing clusters: first window, largest window. */
export const READ_AHEAD_MIN_BYTES = 512 * 1024;
export const READ_AHEAD_MAX_BYTES = 16 * 1024 * 1024;
/**
 * One fetch of the window at most: clusters stored together in a pack come in one ranged GET
 * (the fetcher coalesces up to COALESCE_MAX_BYTES, repo/pack-reads.ts, room for this and the
 * frame headers), and each fetch is installed, and wakes its readers, as soon as it lands.
 */
export const READ_AHEAD_FETCH_BYTES = 4 * 1024 * 1024;
/**
 * Fetches the read-ahead keeps in flight: the window divided into fetches. More than this
 * made the Swift it was measured on slower, not faster (docs/benchmarks/store-path.md).
 */
export const READ_AHEAD_FETCHES = READ_AHEAD_MAX_BYTES / READ_AHEAD_FETCH_BYTES;
/**
 * How far before the stream's end, or past what the read-ahead asked for, a read may start
 * and still count as sequential.
 */
const READ_AHEAD_SLACK_BYTES = 1024 * 1024;

/** What lazy restore needs from the engine. */
export interface LazyHost {
  readonly name: string;
  readonly clusterSize: number;
  readonly gate: Gate;
  readonly image: LocalFile;
  readonly zeroCluster: Buffer;
  readonly counters: { fetches: number; fetchedClusters: number };
  /** The image's logical length now. */
  length(): number;
  /** Throw when the volume is closed. */
  checkOpen(): void;
}

export class LazyRestore {
  /** Fetches in flight, by cluster. */
  readonly fetching = new Map<number, Promise<void>>();
  private readonly ahead: ReadAhead;

  constructor(
    readonly present: PresentMap,
    private readonly fetcher: PresentFetcher | undefined,
    private readonly signal: AbortSignal,
    private readonly h: LazyHost,
  ) {
    this.ahead = new ReadAhead(h.clusterSize, () => this.baseClusters, (c0, c1) => this.ensurePresent(c0, c1));
  }

  /** Clusters below this still come from the base snapshot until present (0: not restored). */
  get baseClusters(): number {
    return Math.ceil(this.present.baseLength / this.h.clusterSize);
  }

  /**
   * Make clusters [c0, c1] local without a guest read (the background fill). Clusters
   * already present or being fetched are skipped or waited for; nothing is overwritten.
   */
  async prefetch(c0: number, c1: number): Promise<void> {
    this.h.checkOpen();
    const last = Math.min(c1, this.baseClusters - 1);
    if (c0 > last) return;
    await this.ensurePresent(c0, last);
  }


  /** See ReadAhead.note. */
  readAhead(start: number, end: number, c1: number): void {
    this.ahead.note(start, end, c1);
  }

  /** Make clusters [c0, c1] local, fetching missing runs (single flight per cluster). */
  async ensurePresent(c0: number, c1: number): Promise<void> {
    const present = this.present;
    const waits: Array<Promise<void>> = [];
    let runStart = -1;
    const endRun = (c: number): void => {
      if (runStart >= 0) waits.push(this.fetchRun(runStart, c - runStart));
      runStart = -1;
    };
    for (let c = c0; c <= c1; c++) {
      const inflight = this.fetching.get(c);
      if (inflight !== undefined) {
        endRun(c);
        waits.push(inflight);
      } else if (present.isPresent(c)) {
        endRun(c);
      } else if (runStart < 0) {
        runStart = c;
      }
    }
    endRun(c1 + 1);
    if (waits.length > 0) await Promise.all(waits);
  }

  /**
   * Store base content the caller read and verified itself: cluster `c` from `data`, only
   * while it is still missing. A cluster being fetched is waited for; one that is present
   * (written by the guest, fetched) is left alone. The background fill uses this for blobs
   * that lie together in a pack but apart in the volume (one ranged GET for all of them).
   */
  async supply(c: number, data: Buffer): Promise<void> {
    this.h.checkOpen();
    if (c >= this.baseClusters) return;
    const inflight = this.fetching.get(c);
    if (inflight !== undefined) return inflight;
    if (this.present.isPresent(c)) return;
    return this.fetchRun(c, 1, data);
  }

  private fetchRun(first: number, count: number, supplied?: Buffer): Promise<void> {
    const C = this.h.clusterSize;
    const run = (async () => {
      const fetcher = this.fetcher;
      if (fetcher === undefined && supplied === undefined) {
        throw new IslandError('LOCAL_IO', `cluster ${first} of volume ${this.h.name} is not local and no fetcher is configured`, { details: { volume: this.h.name, cluster: first } });
      }
      this.h.counters.fetches++;
      const data = supplied ?? (await fetcher!.fetch(first, count, this.signal));
      if (data.length > count * C) throw new IslandError('INTERNAL', `fetcher returned ${data.length} bytes for ${count} clusters`);
      if (!this.h.gate.tryEnter()) await this.h.gate.enter();
      try {
        this.h.checkOpen();
        const present = this.present;
        for (let i = 0; i < count; i++) {
          const c = first + i;
          if (present.isPresent(c)) continue; // written (or truncated away) meanwhile
          const from = c * C;
          const part = data.subarray(Math.min(i * C, data.length), Math.min((i + 1) * C, data.length));
          const n = Math.max(0, Math.min(part.length, this.h.length() - from));
          if (n > 0) {
            const zero = part.compare(this.h.zeroCluster, 0, n, 0, n) === 0;
            if (!zero || !(await this.h.image.punchHole(from, n))) await this.h.image.write(part, 0, n, from);
          }
          present.mark(c);
          present.written(c);
          this.h.counters.fetchedClusters++;
        }
      } finally {
        this.h.gate.leave();
      }
    })();
    const tracked: Promise<void> = run.finally(() => {
      for (let i = 0; i < count; i++) if (this.fetching.get(first + i) === tracked) this.fetching.delete(first + i);
    });
    for (let i = 0; i < count; i++) this.fetching.set(first + i, tracked);
    return tracked;
  }
}

/**
 * Read-ahead of a reader going through missing clusters in order: the clusters after its read
 * are fetched before it asks. The window starts at READ_AHEAD_MIN_BYTES and doubles per
 * sequential read up to READ_AHEAD_MAX_BYTES; it is fetched in pieces of at most
 * READ_AHEAD_FETCH_BYTES, READ_AHEAD_FETCHES at a time, each its own single-flight fetch, so
 * the store always has that many large GETs to answer while the reader is behind, and a reader
 * waits only for the piece it needs. A piece smaller than the largest is asked for only by a
 * read while nothing is in flight. Once the stream is sequential, the read's own missing
 * clusters open the next piece (one GET for them and what follows, not one for the read and
 * one after it).
 *
 * A read counts as sequential when it starts near the end of the stream so far or near the
 * end of what was asked for ahead: a reader served by the native FUSE server shows only its
 * misses, and after a window it already holds, its next miss is at the window's end. Parallel
 * requests of one stream arrive slightly out of order: the slack allows that, and a request
 * that ends before the stream's end (overtaken, or read again) changes nothing. Anything else
 * resets the window. The read never waits for the read-ahead. Shared by the TypeScript engine
 * (LazyRestore) and the native one (native-volume.ts).
 */
export class ReadAhead {
  /** The stream: where its reads end at most, the window, the next cluster to ask for, the last one wanted. */
  private end = -1;
  private window = 0;
  private next = 0;
  private wanted = -1;
  private inflight = 0;

  constructor(
    private readonly clusterSize: number,
    private readonly baseClusters: () => number,
    private readonly fetch: (c0: number, c1: number) => Promise<void>,
  ) {}

  /** A read of bytes [start, end) whose last cluster is c1. */
  note(start: number, end: number, c1: number): void {
    const C = this.clusterSize;
    const near = this.end >= 0 && start >= this.end - READ_AHEAD_SLACK_BYTES;
    // A read again of what the stream read last, or a request of it overtaken by a later one.
    if (near && end <= this.end) return;
    const sequential = near && start <= Math.max(this.end, this.next * C) + READ_AHEAD_SLACK_BYTES;
    if (!sequential) {
      this.end = end;
      this.window = 0;
      this.next = c1 + 1;
      this.wanted = c1;
      return;
    }
    this.end = Math.max(this.end, end);
    this.window = Math.min(READ_AHEAD_MAX_BYTES, Math.max(READ_AHEAD_MIN_BYTES, this.window * 2));
    this.next = Math.max(this.next, Math.floor(start / C));
    this.wanted = Math.max(this.wanted, Math.min(c1 + Math.max(1, Math.floor(this.window / C)), this.baseClusters() - 1));
    this.pump(true);
  }

  /**
   * Ask for the next pieces of the window while fewer than READ_AHEAD_FETCHES are in flight:
   * whole pieces, and at a read with nothing in flight what is left (the reader is waiting).
   * A piece that lands asks only for whole ones: the reader may not need the rest yet, and
   * its next read (a miss, at the latest where the window ends) asks for a whole piece.
   */
  private pump(reading = false): void {
    const piece = Math.max(1, Math.floor(READ_AHEAD_FETCH_BYTES / this.clusterSize));
    while (this.inflight < READ_AHEAD_FETCHES && this.next <= this.wanted && ((reading && this.inflight === 0) || this.wanted - this.next + 1 >= piece)) {
      const from = this.next;
      const to = Math.min(this.wanted, from + piece - 1);
      this.next = to + 1;
      this.inflight++;
      // A failed read-ahead costs nothing: the read that needs the cluster fetches it again.
      this.fetch(from, to)
        .catch(() => undefined)
        .finally(() => {
          this.inflight--;
          this.pump();
        });
    }
  }
}
