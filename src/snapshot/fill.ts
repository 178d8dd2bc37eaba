/**
 * Background fill of a volume restored from a snapshot: every cluster the guest has not
 * touched yet is brought local, so the volume stops depending on the store.
 *
 *  1. Scan the base snapshot's tree once (leaf nodes only, through the node cache) and
 *     note each blob cluster that is not present yet: cluster, pack, offset, length.
 *  2. Sort them in pack order (pack, offset) and cut runs of blobs that lie in order in one
 *     pack, by the rule of repo/pack-reads.ts (gaps of at most COALESCE_MAX_GAP_BYTES read
 *     and discarded, at most COALESCE_MAX_BYTES per run): one ranged GET per run, each pack
 *     read front to back, whether or not its blobs are adjacent in the volume (a history of
 *     scattered rewrites leaves each snapshot's blobs together in its pack, apart in the
 *     volume, and the blobs it replaced as gaps in the older packs).
 *  3. Run them with bounded concurrency. A run of clusters adjacent in the volume goes
 *     through Volume.prefetch, the same single-flight path a guest read takes; any other
 *     run is read here, each blob verified against the id the tree gives its cluster, and
 *     handed to Volume.supply. Either way a cluster the guest wrote meanwhile is never
 *     overwritten, and one a guest read is already fetching is waited for, not fetched twice.
 *  4. Zero and unallocated clusters cost no network: they are marked present last.
 *
 * The fill yields to the guest: while guest reads are arriving it runs one fetch at a
 * time with a short pause between them. An optional rate limit caps its bytes per second:
 * a run starts only once the bytes of the runs started before it are due at that rate, and
 * a run holds at most a second of it (a run of a few MiB would otherwise be a burst).
 * A transient store failure makes it wait and retry the same run (it never gives up on
 * its own: it stops when aborted); a permanent one (a corrupt or missing blob) is logged
 * with volume, cluster, pack and offset and counted, and the fill goes on with the rest.
 * Progress survives restarts for free: present bits are durable, so a new fill after a
 * restart starts with what is already local.
 */
import { IslandError, isTransient } from '../errors.js';
import { hex } from '../format/location.js';
import type { Manifest } from '../format/records.js';
import { iterate, lookup } from '../format/tree.js';
import { keys } from '../repo/keys.js';
import { manifestTree } from '../repo/commit.js';
import { blobIn, COALESCE_MAX_BYTES, joins } from '../repo/pack-reads.js';
import type { Repository } from '../repo/repository.js';
import type { Volume } from '../volume/engine.js';
import { sleep } from '../util/sleep.js';

export interface FillProgress {
  /** Clusters of the base snapshot that hold data (what the fill has to bring). */
  totalClusters: number;
  /** Of those, how many are local now. */
  doneClusters: number;
  /** Bytes of stored (compressed) blobs the fill fetched. */
  bytesFetched: number;
  /** Clusters whose blob could not be read (corrupt or missing); the fill skipped them. */
  failedClusters: number;
  /** The store is failing; the fill is waiting to retry. */
  waiting: boolean;
}

export interface FillOptions {
  signal: AbortSignal;
  /** Fetches in flight while the guest is idle (default 4). */
  concurrency?: number;
  /** Cap on stored bytes fetched per second (default: none). */
  rateBytesPerSec?: number;
  onProgress?: (p: FillProgress) => void;
  log?: { warn(o: object, msg: string): void; error(o: object, msg: string): void };
}

interface Run {
  first: number;
  count: number;
  /** Bytes of the run's blobs (what the progress counts). */
  bytes: number;
  pack: string;
  /** The run's GET: bytes [offset, end) of the pack, gaps included. */
  offset: number;
  end: number;
  /** The cluster of each blob, in pack order, when they are not first, first + 1, ... */
  scattered: number[] | null;
}

/** Fetches the fill has in flight while the guest is idle, unless FillOptions.concurrency says otherwise. */
export const FILL_CONCURRENCY = 4;
/** The smallest run of a rate-limited fill (runs hold a second of the rate, and at least this). */
const MIN_RATED_RUN_BYTES = 64 * 1024;
const GUEST_PAUSE_MS = 5;
const RETRY_MAX_MS = 30_000;

/** The missing blob clusters of `base`, cut into runs in pack order, each GET at most `maxBytes`. */
async function missingRuns(repo: Repository, base: Manifest, volume: Volume, p: FillProgress, signal: AbortSignal, maxBytes: number): Promise<Run[]> {
  const packs = new Map<string, number>();
  const packNames: string[] = [];
  const cluster: number[] = [];
  const pack: number[] = [];
  const offset: number[] = [];
  const length: number[] = [];
  for await (const run of iterate(manifestTree(base), repo.nodeReader())) {
    if (signal.aborted) throw signal.reason;
    const e = run.entry;
    if (e.kind !== 'blob') continue;
    p.totalClusters++;
    if (volume.isPresent(run.first)) {
      p.doneClusters++;
      continue;
    }
    const name = hex(e.loc.pack);
    let idx = packs.get(name);
    if (idx === undefined) {
      idx = packNames.length;
      packs.set(name, idx);
      packNames.push(name);
    }
    cluster.push(run.first);
    pack.push(idx);
    offset.push(e.loc.offset);
    length.push(e.loc.length);
  }
  const order = Array.from(cluster.keys()).sort((a, b) => (pack[a] as number) - (pack[b] as number) || (offset[a] as number) - (offset[b] as number));
  const runs: Run[] = [];
  let cur: Run | undefined;
  for (const i of order) {
    const c = cluster[i] as number;
    const name = packNames[pack[i] as number] as string;
    const off = offset[i] as number;
    const len = length[i] as number;
    if (cur && cur.pack === name && joins(cur.offset, cur.end, off, len, maxBytes)) {
      if (cur.scattered === null && c !== cur.first + cur.count) cur.scattered = Array.from({ length: cur.count }, (_, k) => cur!.first + k);
      cur.scattered?.push(c);
      cur.count++;
      cur.bytes += len;
      cur.end = Math.max(cur.end, off + len);
    } else {
      cur = { first: c, count: 1, bytes: len, pack: name, offset: off, end: off + len, scattered: null };
      runs.push(cur);
    }
  }
  return runs;
}

/**
 * One ranged GET for blobs that lie together in a pack but apart in the volume: each is
 * verified against the id the tree gives its cluster and handed to Volume.supply. A blob
 * that fails is logged and counted (returned); the others are still stored.
 */
async function fillScattered(repo: Repository, base: Manifest, volume: Volume, run: Run, signal: AbortSignal, log: FillOptions['log']): Promise<number> {
  const key = keys.pack('data', Buffer.from(run.pack, 'hex'));
  const bytes = await repo.store.getRange(key, run.offset, run.end - run.offset, { signal });
  const tree = manifestTree(base);
  const reader = repo.nodeReader();
  let failed = 0;
  for (const c of run.scattered ?? []) {
    const e = await lookup(tree, c, reader);
    try {
      if (e.kind !== 'blob' || hex(e.loc.pack) !== run.pack) throw new IslandError('INTERNAL', `cluster ${c} is not in pack ${run.pack} any more`);
      await volume.supply(c, blobIn(repo, 'data', run.offset, bytes, e.loc));
    } catch (err) {
      if (isTransient(err) || signal.aborted) throw err;
      failed++;
      log?.error({ err, volume: base.volume, cluster: c, pack: run.pack, offset: e.kind === 'blob' ? e.loc.offset : null }, 'background fill: a cluster cannot be restored; reads of it fail with EIO');
    }
  }
  return failed;
}

/** Bring every cluster of the volume's base snapshot local. Resolves with the final progress. */
export async function fillVolume(repo: Repository, base: Manifest, volume: Volume, opts: FillOptions): Promise<FillProgress> {
  const { signal } = opts;
  const p: FillProgress = { totalClusters: 0, doneClusters: 0, bytesFetched: 0, failedClusters: 0, waiting: false };
  const report = (): void => opts.onProgress?.({ ...p });
  const rate = opts.rateBytesPerSec ?? 0;
  const runs = await missingRuns(repo, base, volume, p, signal, rate > 0 ? Math.max(MIN_RATED_RUN_BYTES, Math.min(COALESCE_MAX_BYTES, rate)) : COALESCE_MAX_BYTES);
  report();
  const concurrency = Math.max(1, opts.concurrency ?? FILL_CONCURRENCY);
  const started = performance.now();
  /** Bytes of the runs started so far (fetched or in flight): what the rate limit charges. */
  let charged = 0;
  let guestReads = volume.stats().reads;
  let next = 0;

  const one = async (run: Run): Promise<void> => {
    let delay = 200;
    for (;;) {
      try {
        const failed = run.scattered === null ? (await volume.prefetch(run.first, run.first + run.count - 1), 0) : await fillScattered(repo, base, volume, run, signal, opts.log);
        p.bytesFetched += run.bytes;
        p.doneClusters += run.count - failed;
        p.failedClusters += failed;
        p.waiting = false;
        return;
      } catch (err) {
        if (signal.aborted) throw signal.reason;
        if (!isTransient(err)) {
          p.failedClusters += run.count;
          opts.log?.error({ err, volume: base.volume, cluster: run.first, clusters: run.count, pack: run.pack, offset: run.offset }, 'background fill: clusters cannot be restored; reads of them fail with EIO');
          return;
        }
        p.waiting = true;
        report();
        opts.log?.warn({ err, volume: base.volume, cluster: run.first, retryInMs: delay }, 'background fill: the store is failing; waiting to retry');
        await sleep(delay, signal);
        delay = Math.min(RETRY_MAX_MS, delay * 2);
      }
    }
  };

  const worker = async (id: number): Promise<void> => {
    while (next < runs.length) {
      if (signal.aborted) throw signal.reason;
      // Yield to the guest: while its reads arrive, only worker 0 runs, with a pause.
      const reads = volume.stats().reads;
      const busy = reads !== guestReads;
      guestReads = reads;
      if (busy) {
        if (id !== 0) {
          await sleep(GUEST_PAUSE_MS * 4, signal);
          continue;
        }
        await sleep(GUEST_PAUSE_MS, signal);
      }
      if (rate > 0) {
        const ahead = (charged / rate) * 1000 - (performance.now() - started);
        if (ahead > 0) {
          await sleep(Math.min(ahead, 1000), signal);
          continue;
        }
      }
      const run = runs[next++];
      if (run === undefined) break;
      charged += run.bytes;
      await one(run);
      report();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, i) => worker(i)));

  // Zero and unallocated clusters: no network, just marked present (in bounded chunks).
  const n = volume.baseClusters;
  const CHUNK = 64;
  let c = 0;
  while (c < n) {
    if (signal.aborted) throw signal.reason;
    if (volume.isPresent(c)) {
      c++;
      continue;
    }
    const first = c;
    while (c < n && c - first < CHUNK && !volume.isPresent(c)) c++;
    try {
      await volume.prefetch(first, c - 1);
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      // Only clusters whose blobs failed above can fail here again.
      if (err instanceof IslandError && !isTransient(err)) continue;
      throw err;
    }
  }
  await volume.flushBitmaps();
  report();
  return p;
}
