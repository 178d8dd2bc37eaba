/**
 * The commit protocol of a snapshot (docs/protocols.md, "Commit" and "Reuse").
 *
 *  1. If the snapshot has a parent whose blobs it reuses: write an upload pin on the
 *     parent, then check the parent has no tombstone (a tombstone written before the pin
 *     was seen: abort with SNAPSHOT_DELETED; the caller uploads in full instead). This
 *     guard runs beside step 2 (nothing names the parent's blobs before the manifest); a
 *     failed guard stops the upload and is the snapshot's error.
 *  2. Pack the changed clusters' blobs (data packs) and the changed tree nodes
 *     (metadata packs); upload every pack. The last data and metadata packs go up together.
 *     An upload that runs longer than W/2 writes a checkpoint (the packs written so far)
 *     every W/2, so GC keeps them; GC keeps any pack younger than G anyway.
 *  3. Before committing, if more than the window W passed since the pin: re-check the
 *     tombstone and renew the pin, or abort. If more than W passed since the packs were
 *     last protected (first pack issued, or last checkpoint), abort: GC may have taken them.
 *  4. Fencing: if a newer generation of the volume exists, abort with FENCED. Its two reads
 *     run beside the upload of the last packs.
 *  5. Write the manifest (the commit point: it references only objects already durable),
 *     once the guard of step 1 has passed.
 *  6. Write the chain link (a copy of the manifest under a name fixed by parent and
 *     generation, so readers find the newest snapshot without listings), and
 *  7. remove the pin, beside it.
 */
import { IslandError } from '../errors.js';
import type { Manifest, Qcow2Facts, SnapshotRef, Consistency, Pin } from '../format/records.js';
import { UNALLOCATED, ZERO, blobEntry, buildTree, treeShape, DEFAULT_FANOUT, lookup, type Tree, type TreeChange, type TreeEntry } from '../format/tree.js';
import { encodeBlob } from '../format/blob.js';
import { hex } from '../format/location.js';
import { keys } from './keys.js';
import type { Repository } from './repository.js';
import { checkHolds } from './fencing.js';
import { crashPoint } from '../util/crash.js';

/** A cluster already hashed and framed (by a worker thread). */
export interface EncodedCluster {
  readonly frame: Buffer;
  readonly id: Buffer;
}

/** One changed cluster: its bytes (plain or already encoded), or a zero / unallocated marker. */
export interface ClusterChange {
  readonly cluster: number;
  readonly data: Buffer | EncodedCluster | 'zero' | 'unallocated';
}

/** Knobs that break the protocol on purpose: only the protocol simulation sets them. */
export interface ProtocolBreakage {
  skipTombstoneCheck?: boolean;
  skipPin?: boolean;
}

export interface CommitRequest {
  volume: string;
  generation: number;
  parent: Manifest | null;
  base?: SnapshotRef | null;
  /**
   * For the first snapshot of a volume created from another volume's snapshot (parent
   * null): that snapshot. Its tree is the starting point (unchanged clusters share its
   * nodes and blobs), it is pinned and checked like a parent, and it becomes `base`.
   */
  from?: Manifest | null;
  imageLength: number;
  clusterSize: number;
  fanout?: number;
  consistency: Consistency;
  qcow2?: Qcow2Facts | null;
  pauseMs?: number | null;
  warnings?: string[];
  /** Sorted by cluster, each cluster at most once. */
  changes: Iterable<ClusterChange> | AsyncIterable<ClusterChange>;
  /** Commit window W in ms (must be below the GC grace period G). */
  windowMs: number;
  signal?: AbortSignal;
  breakage?: ProtocolBreakage;
  /** MD5 of a pack off this thread (PackSinkOptions.packMd5). */
  packMd5?: (bytes: Buffer, signal?: AbortSignal) => Promise<Buffer>;
}

export function manifestTree(m: Manifest): Tree {
  return {
    shape: { nClusters: m.tree.nClusters, fanout: m.tree.fanout, depth: m.tree.depth },
    root: m.tree.root === null ? null : { loc: m.tree.root },
  };
}

export async function commitSnapshot(repo: Repository, req: CommitRequest): Promise<Manifest> {
  const started = repo.now();
  const id = repo.ulid();
  if (req.parent && (req.parent.volume !== req.volume || req.parent.clusterSize !== req.clusterSize)) {
    throw new IslandError('INVALID_ARGUMENT', `parent ${req.parent.volume}/${req.parent.id} does not belong to ${req.volume} with cluster size ${req.clusterSize}`);
  }
  if (req.from && (req.parent || req.from.clusterSize !== req.clusterSize)) {
    throw new IslandError('INVALID_ARGUMENT', `a snapshot of ${req.volume} starts from ${req.from.volume}/${req.from.id} only as its first snapshot, with the same cluster size`);
  }
  // The snapshot whose tree this one starts from and whose blobs it reuses.
  const parent = req.parent ?? req.from ?? null;
  let pin: Pin | undefined;
  const writePin = async (): Promise<void> => {
    if (!parent || req.breakage?.skipPin) return;
    const now = repo.now();
    const next: Pin = { id: repo.ulid(), snapshot: parent.id, volume: parent.volume, holder: 'upload', host: repo.host, created: now, expires: now + req.windowMs };
    await repo.putPin(next, { signal });
    if (pin) await repo.deletePin(pin, { signal });
    pin = next;
  };
  const checkParent = async (): Promise<void> => {
    if (!parent || req.breakage?.skipTombstoneCheck) return;
    // Tombstone first, manifest second: GC removes the manifest before the tombstone, so
    // a parent collected between the two reads is seen as missing by the second.
    const deleted = (await repo.getTombstone(parent.id, { signal })) !== undefined || !(await repo.store.head(keys.manifest(parent.volume, parent.id), { signal }));
    if (deleted) {
      throw new IslandError('SNAPSHOT_DELETED', `${req.from ? 'source' : 'parent'} snapshot ${parent.id} of ${req.volume} was deleted: its blobs cannot be reused`, { details: { snapshot: parent.id } });
    }
  };
  const releasePin = async (): Promise<void> => {
    if (pin) await repo.deletePin(pin).catch(() => undefined); // a leftover pin expires on its own
    pin = undefined;
  };

  // Failing the guard (the parent was deleted) stops the upload at once.
  const stop = new AbortController();
  const signal = req.signal ? AbortSignal.any([req.signal, stop.signal]) : stop.signal;
  try {
    // 1. pin, then check (in this order: a tombstone written after the check is held off
    //    by the pin, one written before it is seen by the check). Nothing refers to the
    //    parent's blobs before the manifest, so the upload runs meanwhile; the manifest
    //    waits for the guard.
    let pinnedAt = 0;
    const guard = (async (): Promise<void> => {
      await writePin();
      await checkParent();
      pinnedAt = repo.now();
    })();
    guard.catch((err: unknown) => stop.abort(err));
    // The guard's failure is the snapshot's: the upload then fails only because it stopped.
    const guarded = async <T>(p: Promise<T>): Promise<T> => {
      try {
        return await p;
      } catch (err) {
        await guard;
        throw err;
      }
    };

    // 2. data and tree, with checkpoints for long uploads.
    let protectedSince: number | undefined;
    // Protection must be continuous: a refresh later than W after the previous one means GC
    // may already have taken packs that only the old checkpoint (or their age) protected.
    let lapsed = false;
    let checkpoints = 0;
    const durable: Buffer[] = [];
    let checkpointing: Promise<void> = Promise.resolve();
    const onIssue = (): void => {
      protectedSince ??= repo.now();
    };
    const onPack = (packId: Buffer): void => {
      durable.push(packId);
      if (protectedSince !== undefined && repo.now() - protectedSince > req.windowMs / 2) {
        const at = repo.now();
        if (at - protectedSince > req.windowMs) lapsed = true;
        const listed = [...durable];
        checkpointing = checkpointing.then(async () => {
          await repo.putCheckpoint(checkpointRecord(repo, req, id, at, listed), checkpoints++, { signal });
          protectedSince = at;
        });
        checkpointing.catch(() => undefined); // awaited before the commit point
      }
    };
    const data = repo.packSink('data', { signal, onPack, onIssue, packMd5: req.packMd5 });
    const meta = repo.packSink('metadata', { signal, onPack, onIssue, packMd5: req.packMd5 });
    const nClusters = Math.ceil(req.imageLength / req.clusterSize);
    const shape = treeShape(nClusters, parent?.tree.fanout ?? req.fanout ?? DEFAULT_FANOUT);
    const parentTree = parent ? manifestTree(parent) : null;
    const reader = repo.nodeReader();
    const stats = { changedClusters: 0, zeroClusters: 0, uploadedBlobs: 0, uploadedBytes: 0, reusedBlobs: 0 };
    const seen = new Map<string, TreeEntry>();
    async function* entries(): AsyncGenerator<TreeChange> {
      for await (const c of req.changes) {
        if (c.cluster >= nClusters) continue; // the image shrank past it
        stats.changedClusters++;
        if (c.data === 'zero') {
          stats.zeroClusters++;
          yield { cluster: c.cluster, entry: ZERO };
        } else if (c.data === 'unallocated') {
          yield { cluster: c.cluster, entry: UNALLOCATED };
        } else {
          await data.backpressure();
          const encoded = Buffer.isBuffer(c.data) ? repo.frames.encode(c.data, 'data') : c.data;
          const loc = data.addDedup(encoded, seen, parentTree ? async (id) => {
            const prev = await lookup(parentTree, c.cluster, reader);
            return prev.kind === 'blob' && prev.loc.id.equals(id) ? prev : undefined;
          } : undefined);
          const entry = await loc;
          if (entry.reused) stats.reusedBlobs++;
          else {
            stats.uploadedBlobs++;
            stats.uploadedBytes += entry.entry.loc.length;
          }
          yield { cluster: c.cluster, entry: entry.entry };
        }
      }
    }
    const built = await guarded(buildTree(parentTree, shape, entries(), reader, meta, { signal, idOf: (b: Buffer) => repo.frames.idOf(b) }));
    // The last packs, both kinds at once, and 4. fencing beside them: this host must still
    // hold its generation (a forced attach elsewhere takes the next one); the daemon
    // checked it before the first pack too.
    const [dataPacks, metaPacks] = await guarded(Promise.all([data.flush(), meta.flush(), checkHolds(repo, req.volume, req.generation, { signal })]));
    crashPoint('snapshot.packs-uploaded');
    await guarded(checkpointing);
    await guard;

    // 3. window: re-check the parent and renew the pin if W passed since the check.
    if (parent && repo.now() - pinnedAt > req.windowMs) {
      await checkParent();
      await writePin();
    }
    // The last check before the commit point: were the packs protected within W?
    if (protectedSince !== undefined && (lapsed || repo.now() - protectedSince > req.windowMs)) {
      throw new IslandError('WINDOW_EXPIRED', `upload of ${req.volume} outlived its window (${req.windowMs} ms) without a checkpoint: its packs may have been collected`, { details: { volume: req.volume } });
    }
    // 5. manifest, 6. link.
    const manifest: Manifest = {
      volume: req.volume,
      id,
      parent: req.parent?.id ?? null,
      base: req.base ?? (req.from ? { volume: req.from.volume, id: req.from.id } : (req.parent?.base ?? null)),
      generation: req.generation,
      host: repo.host,
      created: repo.now(),
      region: repo.region,
      imageLength: req.imageLength,
      clusterSize: req.clusterSize,
      tree: { root: built.tree.root?.loc ?? null, nClusters: shape.nClusters, fanout: shape.fanout, depth: shape.depth },
      qcow2: req.qcow2 ?? null,
      consistency: req.consistency,
      stats: { ...stats, packs: dataPacks.length + metaPacks.length, pauseMs: req.pauseMs ?? null, durationMs: repo.now() - started },
      warnings: req.warnings ?? [],
      packs: [...dataPacks, ...metaPacks].sort(Buffer.compare),
    };
    await repo.putManifest(manifest, { signal });
    crashPoint('snapshot.manifest-written');
    // 6. the link, and 7. the unpin beside it: the manifest now holds the parent's blobs.
    await Promise.all([repo.putLink(manifest, { signal }), releasePin()]);
    // Checkpoints stay: GC removes them once older than G. Deleting them here would open a
    // window where a GC that listed manifests before this commit and checkpoints after
    // this delete protects the packs by neither.
    return manifest;
  } finally {
    stop.abort(); // uploads still in flight after a failure are of no use
    await releasePin();
  }
}

/** A checkpoint: a manifest with no tree, whose `packs` are what the upload wrote so far. */
function checkpointRecord(repo: Repository, req: CommitRequest, id: string, at: number, packs: Buffer[]): Manifest {
  return {
    volume: req.volume,
    id,
    parent: req.parent?.id ?? null,
    base: null,
    generation: req.generation,
    host: repo.host,
    created: at,
    region: repo.region,
    imageLength: 0,
    clusterSize: req.clusterSize,
    tree: { root: null, nClusters: 0, fanout: req.parent?.tree.fanout ?? req.fanout ?? DEFAULT_FANOUT, depth: 1 },
    qcow2: null,
    consistency: req.consistency,
    stats: { changedClusters: 0, zeroClusters: 0, uploadedBlobs: 0, uploadedBytes: 0, reusedBlobs: 0, packs: packs.length, pauseMs: null, durationMs: 0 },
    warnings: ['checkpoint'],
    packs: [...packs].sort(Buffer.compare),
  };
}

export { hex };
