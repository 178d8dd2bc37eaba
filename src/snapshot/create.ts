/**
 * Taking a snapshot of an attached volume (docs/protocols.md, "Commit"):
 *
 *  1. Seal the volume: O(1); writes after this instant go to the next epoch, and an
 *     overwrite of a sealed cluster not yet uploaded is first copied aside.
 *  2. Stream the sealed clusters in cluster order (encode-stream.ts): read each at the
 *     seal, hash and compress it on a worker thread in batches, zero clusters become zero
 *     entries. A bounded number of batches is in flight, so memory does not grow with the
 *     delta, and reading, encoding and uploading overlap.
 *  3. commitSnapshot packs and uploads the blobs, writes the changed tree nodes and the
 *     manifest last, following the reuse and window rules.
 *  4. Complete the seal (the changes are in the store), or abandon it on failure: its
 *     changes merge into the current epoch and go into the next snapshot.
 */
import type { Consistency, Manifest, Qcow2Facts } from '../format/records.js';
import { parseQcow2Header } from '../format/qcow2.js';
import { commitSnapshot, manifestTree } from '../repo/commit.js';
import { lookup } from '../format/tree.js';
import { encodedChanges } from './encode-stream.js';
import type { Repository } from '../repo/repository.js';
import type { Seal } from '../volume/engine.js';
import type { EncodePool } from './pool.js';
import { crashPoint } from '../util/crash.js';

/** What snapshotting needs of a volume (the engine's Volume). */
export interface SnapshotSource {
  readonly name: string;
  readonly clusterSize: number;
  seal(): Promise<Seal>;
  read(buf: Buffer, offset: number): Promise<number>;
}

export interface SnapshotOptions {
  volume: SnapshotSource;
  generation: number;
  parent: Manifest | null;
  /** The first snapshot of a volume created from another volume's snapshot starts from it. */
  from?: Manifest | null;
  consistency: Consistency;
  pauseMs?: number | null;
  /** Batches of clusters read and encoded ahead of the packer (encode-stream.ts). */
  window?: number;
  /** Bytes of clusters per worker task (encode-stream.ts). */
  batchBytes?: number;
  windowMs: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** The seal, when the caller sealed already (several volumes in one pause). */
  seal?: Seal;
}

/** qcow2 facts for the manifest, and the warnings that matter for a restore. */
export function qcow2Facts(head: Buffer): { facts: Qcow2Facts | null; warnings: string[] } {
  try {
    const h = parseQcow2Header(head);
    const warnings: string[] = [];
    if (h.lazyRefcounts) warnings.push('the image uses lazy refcounts: a restore is repaired by reading every metadata cluster');
    if (h.dirty) warnings.push('the qcow2 dirty bit is set: QEMU will repair the restored image on open');
    if (h.corrupt) warnings.push('the qcow2 corrupt bit is set');
    if (h.nbSnapshots > 0) warnings.push(`the image holds ${h.nbSnapshots} internal snapshot(s): their saved state is uploaded and kept too`);
    return { facts: { version: h.version, dirty: h.dirty, lazyRefcounts: h.lazyRefcounts, nbSnapshots: h.nbSnapshots, corrupt: h.corrupt }, warnings };
  } catch (err) {
    return { facts: null, warnings: [`the image header could not be parsed: ${(err as Error).message}`] };
  }
}

export async function takeSnapshot(repo: Repository, pool: EncodePool, o: SnapshotOptions): Promise<Manifest> {
  const seal = o.seal ?? (await o.volume.seal());
  try {
    crashPoint('snapshot.sealed');
    // The header as of the seal when cluster 0 changed in this epoch, else as it is now
    // (then it did not change since the previous seal).
    let head: Buffer;
    if (seal.has(0)) head = await seal.readSealed(0);
    else {
      head = Buffer.alloc(o.volume.clusterSize);
      head = head.subarray(0, await o.volume.read(head, 0));
    }
    const { facts, warnings } = qcow2Facts(head);
    // Warm the node cache with the parent's leaves the change falls in, while the clusters
    // are read and encoded: commit compares each cluster with its parent's blob.
    const parent = o.parent ?? o.from ?? null;
    const parentTree = parent ? manifestTree(parent) : null;
    const reader = repo.nodeReader();
    const leafSpan = parentTree ? parentTree.shape.fanout : 1;
    let lastLeaf = -1;
    const warm = (c: number): void => {
      if (!parentTree || Math.floor(c / leafSpan) === lastLeaf) return;
      lastLeaf = Math.floor(c / leafSpan);
      lookup(parentTree, c, reader).catch(() => undefined); // a failure shows where commit reads it
    };
    const changes = encodedChanges(seal, pool, {
      batchBytes: o.batchBytes,
      depth: o.window,
      signal: o.signal,
      idKey: repo.frames.idKey,
      onProgress: o.onProgress,
      onBatch: (first, last) => {
        warm(first);
        warm(last);
      },
    });
    const m = await commitSnapshot(repo, {
      volume: o.volume.name,
      generation: o.generation,
      parent: o.parent,
      from: o.from ?? null,
      imageLength: seal.length,
      clusterSize: o.volume.clusterSize,
      consistency: o.consistency,
      qcow2: facts,
      pauseMs: o.pauseMs ?? null,
      warnings,
      changes,
      windowMs: o.windowMs,
      signal: o.signal,
      packMd5: (bytes, signal) => pool.packMd5(bytes, signal),
    });
    crashPoint('snapshot.committed');
    // One state record write: the sealed epoch is complete and `m` is the committed snapshot.
    await seal.complete(m.id);
    crashPoint('snapshot.completed');
    return m;
  } catch (err) {
    if (seal.status === 'open') await seal.abandon().catch(() => undefined);
    throw err;
  }
}
