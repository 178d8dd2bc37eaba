/**
 * Background fills of restored volumes, as the daemon runs them: one per attached volume
 * whose base snapshot is not yet wholly local. A fill waits out an unreachable store with
 * its own backoff, records completion in the volume's local directory, and then releases
 * this host's pins on the base (the volume no longer reads from it).
 */
import { IslandError, codeOf } from '../errors.js';
import type { Manifest } from '../format/records.js';
import { findSnapshot } from '../repo/snapshots.js';
import { fillVolume, type FillProgress } from '../snapshot/fill.js';
import type { AnyVolume } from '../volume/write-path.js';
import { treeFetcher } from '../snapshot/restore.js';
import { untilAvailable } from '../util/backoff.js';
import type { PresentFetcher } from '../volume/engine.js';
import { parseSize } from '../format/names.js';
import { PIN_TTL_MS, type AttachRequest, type Attached, type DaemonContext, type FillJob } from './context.js';
import { crashPoint } from '../util/crash.js';

const NO_PROGRESS: FillProgress = { totalClusters: 0, doneClusters: 0, bytesFetched: 0, failedClusters: 0, waiting: false };

/**
 * A fetcher whose base snapshot is known only after the volume's state is read, and is
 * loaded from the store on first need: a volume that is already filled never needs the
 * store to be served. A failed load is retried by the next fetch.
 */
export class LazyFetcher implements PresentFetcher {
  private inner: Promise<PresentFetcher> | undefined;
  private load: (() => Promise<PresentFetcher>) | undefined;
  resolve(load: () => Promise<PresentFetcher>): void {
    this.load = load;
  }
  fetch(first: number, count: number, signal: AbortSignal): Promise<Buffer> {
    const load = this.load;
    if (!load) return Promise.reject(new IslandError('INTERNAL', 'clusters requested from a volume without a base snapshot'));
    this.inner ??= load().catch((err: unknown) => {
      this.inner = undefined;
      throw err;
    });
    return this.inner.then((f) => f.fetch(first, count, signal));
  }
}

/** Parse a fill rate (bytes per second; 0: unlimited) before anything changes. */
export function parseFillRate(rate: AttachRequest['fillRate']): number {
  return rate === undefined ? 0 : parseSize(rate, { what: 'fillRate', min: 1 });
}

export class Fills {
  constructor(private readonly ctx: DaemonContext) {}

  /** The manifest a restored volume fetches from (it must still exist: it is pinned). */
  async baseOf(name: string, id: string): Promise<Manifest> {
    const repo = this.ctx.repo;
    const m = (await repo.getManifest(name, id)) ?? (await findSnapshot(repo, id));
    if (!m) throw new IslandError('NOT_FOUND', `the base snapshot ${id} of ${name} is gone; its missing clusters cannot be fetched`, { details: { volume: name, snapshot: id } });
    return m;
  }

  /** Point a reopened volume's fetcher at its base, loaded from the store on first need. */
  resolveBase(lazy: LazyFetcher, name: string, baseId: string): void {
    lazy.resolve(async () => treeFetcher(this.ctx.repo, await this.baseOf(name, baseId)));
  }

  /** Resume the fill of a volume restored from `base` unless it already completed. */
  async resume(name: string, a: Attached, baseId: string, req: AttachRequest = {}): Promise<void> {
    if (a.volume.filled) {
      a.fill = { base: baseId, state: 'done', progress: { ...NO_PROGRESS }, controller: new AbortController(), promise: Promise.resolve() };
      return;
    }
    this.start(name, a, baseId, req);
  }

  /**
   * Start (or resume, after a restart) the background fill of a restored volume. When it
   * completes, the volume holds every cluster of its base, and this host's pins on the base
   * are released.
   */
  start(name: string, a: Attached, baseId: string, req: AttachRequest = {}): void {
    const rate = parseFillRate(req.fillRate);
    const controller = new AbortController();
    const job: FillJob = { base: baseId, state: 'filling', progress: { ...NO_PROGRESS }, controller, promise: Promise.resolve() };
    a.fill = job;
    if (req.fill === false) {
      job.state = 'off';
      return;
    }
    const log = this.ctx.log.child({ volume: name, base: baseId });
    job.promise = (async () => {
      const t0 = performance.now();
      // The store may be down (the fill waits for it); anything else ends the fill.
      const p = await untilAvailable(
        async () => fillVolume(this.ctx.repo, await this.baseOf(name, baseId), fillTarget(a.volume), { signal: controller.signal, rateBytesPerSec: rate, log, onProgress: (x) => (job.progress = x) }),
        {
          signal: controller.signal,
          onWait: (err, delay) => {
            job.progress = { ...job.progress, waiting: true };
            log.warn({ err, retryInMs: delay }, 'background fill: the store is unreachable; waiting');
          },
        },
      );
      job.progress = p;
      crashPoint('fill.fetched');
      if (p.failedClusters > 0) {
        job.state = 'incomplete';
        log.error({ failedClusters: p.failedClusters }, 'background fill finished with clusters that cannot be restored (see island fsck); the base stays pinned');
        return;
      }
      // Durable in the volume's state record: a restart does not fill again.
      await a.volume.markFilled();
      job.state = 'done';
      await this.releasePins(baseId);
      log.info({ clusters: p.totalClusters, bytes: p.bytesFetched, seconds: Math.round(performance.now() - t0) / 1000 }, 'background fill done: the volume no longer needs the store to be read');
    })().catch((err: unknown) => {
      if (controller.signal.aborted) {
        job.state = 'stopped';
        return;
      }
      job.state = 'incomplete';
      log.error({ err, code: codeOf(err) }, 'background fill stopped; it resumes at the next attach or restart');
    });
  }

  async stop(a: Attached): Promise<void> {
    if (!a.fill) return;
    a.fill.controller.abort(new IslandError('ABORTED', 'background fill stopped'));
    await a.fill.promise;
  }

  /** Pin a restore base while the volume may still read from it (expires: see PIN_TTL_MS). */
  async pinBase(base: Manifest): Promise<void> {
    const repo = this.ctx.repo;
    const now = repo.now();
    await repo.putPin({ id: repo.ulid(), snapshot: base.id, volume: base.volume, holder: 'attach', host: repo.host, created: now, expires: now + PIN_TTL_MS });
  }

  /** Drop this host's attach pins on a snapshot. */
  async releasePins(snapshot: string): Promise<void> {
    const repo = this.ctx.repo;
    for (const p of await repo.listPins(snapshot)) if (p.host === repo.host && p.holder === 'attach') await repo.deletePin(p);
  }
}

/**
 * The volume a fill writes into. fillVolume is typed with the TypeScript engine but uses only
 * what both write paths offer (isPresent, baseClusters, prefetch, supply, stats, flushBitmaps:
 * the same single-flight fetch and present-only-if-missing install either way).
 */
function fillTarget(volume: AnyVolume): Parameters<typeof fillVolume>[2] {
  return volume as Parameters<typeof fillVolume>[2];
}
