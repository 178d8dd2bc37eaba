/**
 * Copies of snapshots to other regions, as the daemon runs them: the other regions'
 * repositories (opened on first use, closed with the daemon) and the copy jobs, one per
 * (snapshot, target region) at a time, with their progress for `island status`.
 */
import type { Logger } from 'pino';
import { regionBackend, type Config } from '../config.js';
import { IslandError, codeOf } from '../errors.js';
import { parseRegionName, parseSnapshotId } from '../format/names.js';
import { copySnapshot, type CopyProgress, type CopyResult } from '../repo/copy.js';
import type { Repository } from '../repo/repository.js';
import type { BackendConfig } from '../store/open.js';
import { restoreSource } from './sources.js';

/** Builds the repository of another region (the composition root wires the store). */
export type RegionOpener = (name: string, backend: BackendConfig) => Repository;

export interface CopyJob {
  snapshot: string;
  volume: string;
  from: string;
  to: string;
  started: number;
  state: 'copying' | 'done' | 'failed';
  progress: CopyProgress;
  error: { code: string; message: string } | null;
  controller: AbortController;
  promise: Promise<CopyResult>;
}

export type CopyView = Omit<CopyJob, 'promise' | 'started' | 'controller'> & { started: string };

export interface CopyOutcome {
  snapshot: string;
  volume: string;
  from: string;
  to: string;
  alreadyCopied: boolean;
  parent: string | null;
  generation: number;
  packsTotal: number;
  packsCopied: number;
  bytesCopied: number;
}

/** Finished jobs kept for `island status`. */
const KEEP_FINISHED = 32;

export class Copies {
  private readonly repos = new Map<string, Repository>();
  private readonly jobs = new Map<string, CopyJob>();

  constructor(
    private readonly config: Config,
    private readonly home: Repository,
    private readonly open: RegionOpener,
    private readonly windowMs: number,
    private readonly log: Logger,
  ) {}

  /** The repository of a configured region other than this daemon's. */
  region(name: unknown): Repository {
    const region = parseRegionName(name, 'target region');
    if (region === this.home.region) throw new IslandError('INVALID_ARGUMENT', `region ${region} is this daemon's own region: the snapshot is already there`);
    let repo = this.repos.get(region);
    if (!repo) {
      const backend = regionBackend(this.config, region);
      if (!backend) {
        const known = [...new Set([...Object.keys(this.config.regions), 'default'])].filter((r) => r !== this.home.region);
        throw new IslandError('INVALID_ARGUMENT', `unknown region ${region} (configured: ${known.join(', ') || 'none'}; regions are declared in the configuration file)`, { details: { region } });
      }
      repo = this.open(region, backend);
      this.repos.set(region, repo);
    }
    return repo;
  }

  /** Start a copy (or join the one running for the same snapshot and region). */
  async start(id: unknown, to: unknown): Promise<CopyJob> {
    const sid = parseSnapshotId(id);
    const dst = this.region(to);
    const key = `${sid}>${dst.region}`;
    const running = this.jobs.get(key);
    if (running?.state === 'copying') return running;
    // Exists, is not deleted, and holds a qcow2 image (its virtual size is read through the tree).
    const src = await restoreSource(this.home, sid);
    const job: CopyJob = {
      snapshot: sid,
      volume: src.manifest.volume,
      from: this.home.region,
      to: dst.region,
      started: Date.now(),
      state: 'copying',
      progress: { phase: 'scan', packsTotal: 0, packsDone: 0, packsCopied: 0, bytesCopied: 0 },
      error: null,
      controller: new AbortController(),
      promise: Promise.resolve(null as unknown as CopyResult),
    };
    const log = this.log.child({ snapshot: sid, volume: job.volume, to: dst.region });
    job.promise = copySnapshot(this.home, dst, { snapshot: src.manifest, virtualSize: src.virtualSize, windowMs: this.windowMs, signal: job.controller.signal, onProgress: (p) => (job.progress = p) }).then(
      (r) => {
        job.state = 'done';
        log.info({ packsTotal: r.packsTotal, packsCopied: r.packsCopied, bytesCopied: r.bytesCopied, alreadyCopied: r.alreadyCopied, seconds: (Date.now() - job.started) / 1000 }, 'snapshot copied');
        return r;
      },
      (err: unknown) => {
        job.state = 'failed';
        job.error = { code: codeOf(err), message: (err as Error).message };
        log.error({ err, code: codeOf(err) }, 'snapshot copy failed');
        throw err;
      },
    );
    job.promise.catch(() => undefined);
    this.jobs.delete(key);
    this.jobs.set(key, job);
    this.trim();
    return job;
  }

  private trim(): void {
    for (const [k, j] of this.jobs) {
      if (this.jobs.size <= KEEP_FINISHED) return;
      if (j.state !== 'copying') this.jobs.delete(k);
    }
  }

  views(): CopyView[] {
    return [...this.jobs.values()].map(({ promise: _p, controller: _c, started, ...rest }) => ({ ...rest, started: new Date(started).toISOString() }));
  }

  /** Stop running copies (their pins expire; a later copy starts over) and close the stores. */
  async close(): Promise<void> {
    for (const j of this.jobs.values()) j.controller.abort(new IslandError('ABORTED', 'the daemon is stopping'));
    for (const j of this.jobs.values()) await j.promise.catch(() => undefined);
    for (const r of this.repos.values()) await r.store.close();
    this.repos.clear();
  }
}

export function copyOutcome(job: CopyJob, r: CopyResult): CopyOutcome {
  return {
    snapshot: job.snapshot,
    volume: job.volume,
    from: job.from,
    to: job.to,
    alreadyCopied: r.alreadyCopied,
    parent: r.manifest.parent,
    generation: r.manifest.generation,
    packsTotal: r.packsTotal,
    packsCopied: r.packsCopied,
    bytesCopied: r.bytesCopied,
  };
}
