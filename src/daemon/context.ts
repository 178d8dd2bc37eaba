/**
 * What the daemon's parts share: configuration, the home region's repository, the logger,
 * the table of volumes attached here and where their local directories live. Each part
 * (catalog, attachments, fills, snapshot jobs, history, mounted snapshots) owns its own
 * state and reaches the others only through this context and their methods.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { Manifest, VolumeRecord } from '../format/records.js';
import type { Repository } from '../repo/repository.js';
import type { FillProgress } from '../snapshot/fill.js';
import type { LocalDirectories } from '../volume/directories.js';
import type { AnyVolume } from '../volume/write-path.js';
import type { ObservedMap } from '../util/observed-map.js';

/** A clone pin lasts until the clone's first snapshot commits (or the clone is deleted). */
export const CLONE_PIN_MS = 100 * 365 * 24 * 3600 * 1000;
/** An attach pin protects a restore base this long (renewal comes with the background fill). */
export const PIN_TTL_MS = 30 * 24 * 3600 * 1000;

export interface DaemonContext {
  readonly config: Config;
  readonly repo: Repository;
  readonly log: Logger;
  /**
   * Volumes attached (served) on this host, by name. Its onChange tells the mount that its
   * files changed: called by the map on set and delete, and by whoever changes an entry's
   * access (a fence must reach the native server's open handles at once).
   */
  readonly attached: ObservedMap<string, Attached>;
  readonly dirs: LocalDirectories;
  /**
   * Volumes detached without waiting (detach --no-wait): gone from the mount, their final
   * snapshot still uploading; this host holds them until it commits.
   */
  readonly detaching: Map<string, Detaching>;
  /** Volumes with a local directory that could not be opened, and why (shown in status). */
  readonly unopened: Map<string, { code: string; why: string }>;
  /** Open handles on a file of the mount (wired to the FUSE mount by the composition root). */
  openHandles(name: string): number;
}

export interface AttachRequest {
  qmp?: string;
  qga?: string;
  force?: boolean;
  /** Background fill of a restored volume (default on). */
  fill?: boolean;
  /** Cap on the fill's fetched bytes per second (default: none). */
  fillRate?: string | number;
  /** Set this host's local copy aside (kept, not deleted) and restore from the store. */
  discardLocal?: boolean;
  /** Accept an older snapshot when the store cannot prove which is newest (HEAD_UNCERTAIN). */
  allowRollback?: boolean;
  /** The host the caller means to attach on: refused (WRONG_HOST) unless it is this daemon's. */
  host?: string;
  /** The libvirt domain using the volume: snapshots and resizes go through libvirt (virsh). */
  domain?: string;
}

/** A restored volume's background fill. */
export interface FillJob {
  base: string;
  state: 'filling' | 'done' | 'incomplete' | 'stopped' | 'off';
  progress: FillProgress;
  controller: AbortController;
  promise: Promise<void>;
}

export interface FillView {
  base: string;
  state: FillJob['state'];
  totalClusters: number;
  doneClusters: number;
  bytesFetched: number;
  failedClusters: number;
  waiting: boolean;
}

export function fillView(f: FillJob): FillView {
  return { base: f.base, state: f.state, ...f.progress };
}

export interface SnapshotJob {
  volume: string;
  started: number;
  done: number;
  total: number;
  promise: Promise<Manifest>;
}

/**
 * Whether a volume attached here may be written. A volume this daemon attached is
 * read-write; one reopened after a restart is read-only until the store confirms this host
 * still holds its generation (a forced attach elsewhere may have taken it meanwhile), and
 * fenced for good once the store shows another host took it.
 */
export interface Access {
  mode: 'read-write' | 'read-only' | 'fenced';
  /** Why it is not read-write (null when it is). */
  why: string | null;
}

export interface Attached {
  volume: AnyVolume;
  access: Access;
  /** Stops the lease confirmation of a reopened volume (detach, shutdown). */
  confirming?: AbortController;
  generation: number;
  qmp: string | undefined;
  qga: string | undefined;
  /** The libvirt domain given at attach (checked to use the volume's file), if any. */
  domain?: string;
  /** The snapshot the local image's change tracking is relative to (null: none yet). */
  parent: Manifest | null;
  /** A snapshot in progress: at most one per volume. */
  job: SnapshotJob | undefined;
  /** The background fill, for volumes restored from a snapshot. */
  fill?: FillJob;
  /** The parent's id, when its manifest is still to be read (see Attachments.reopen). */
  parentId?: string;
  /** The virtual size of the image (the record's, once attach or resize grew it to that). */
  virtualSize?: number;
}

/** A detach that returned before its final snapshot committed (attachments.ts). */
export interface Detaching {
  attached: Attached;
  started: number;
  /** The last transient failure the upload is waiting out (null: none). */
  waiting: { code: string; message: string } | null;
  /** Settles when the volume is released (or put back, or the daemon stops). */
  promise: Promise<void>;
}

export interface DetachingView {
  name: string;
  seconds: number;
  snapshot: { done: number; total: number } | null;
  waiting: Detaching['waiting'];
}

export function detachingView(name: string, d: Detaching): DetachingView {
  const job = d.attached.job;
  return { name, seconds: (Date.now() - d.started) / 1000, snapshot: job ? { done: job.done, total: job.total } : null, waiting: d.waiting };
}

export interface VolumeView {
  name: string;
  virtualSize: number;
  clusterSize: number;
  region: string;
  created: string;
  status: VolumeRecord['status'];
  host: string | null;
  generation: number;
  source: VolumeRecord['source'];
  /** Present (true) while detaching without waiting: the final snapshot is uploading. */
  detaching?: boolean;
  /** Present when attached on this host. */
  local?: { file: string; length: number; openHandles: number; dirtyClusters: number; recovery: AnyVolume['recovery']; fill: FillView | null; access: Access };
}

export interface SnapshotView {
  id: string;
  volume: string;
  parent: string | null;
  created: string;
  host: string;
  generation: number;
  consistency: Manifest['consistency'];
  imageLength: number;
  changedClusters: number;
  zeroClusters: number;
  uploadedBlobs: number;
  uploadedBytes: number;
  reusedBlobs: number;
  packs: number;
  pauseMs: number | null;
  durationMs: number;
  warnings: readonly string[];
  deleted: boolean;
  /** fsck marked it damaged: refused as a restore source. */
  damaged: boolean;
}

export function snapshotView(m: Manifest, deleted: boolean, damaged = false): SnapshotView {
  return {
    id: m.id,
    volume: m.volume,
    parent: m.parent,
    created: new Date(m.created).toISOString(),
    host: m.host,
    generation: m.generation,
    consistency: m.consistency,
    imageLength: m.imageLength,
    ...m.stats,
    warnings: m.warnings,
    deleted,
    damaged,
  };
}

/** The file a volume (or a mounted snapshot, `<volume>@<id>`) has on the mount. */
export function mountFile(config: Config, name: string): string {
  return join(config.mount, `${name}.qcow2`);
}
