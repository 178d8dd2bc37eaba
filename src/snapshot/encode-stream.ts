/**
 * The first stages of a snapshot's upload pipeline: read the sealed clusters and encode
 * them (hash, compress where it pays, frame) on the worker threads, in cluster order.
 *
 * Clusters go in batches of about `batchBytes` (one worker task per batch, its reads
 * issued together), and up to `depth` batches are in flight at once, so reading, encoding
 * on every worker thread, and the consumer's packing and uploading (commit.ts) all run at
 * the same time; none waits for another's whole output. Memory is bounded by
 * depth x batchBytes (plus the consumer's own window), whatever the size of the change.
 *
 * A cluster is marked uploaded (the seal stops protecting it) once the consumer has taken
 * it. A failure of any read or task fails the stream at that batch; batches still in flight
 * then finish or fail on their own, and nothing they did is kept.
 */
import type { ClusterChange } from '../repo/commit.js';
import type { Seal } from '../volume/engine.js';
import type { EncodePool } from './pool.js';

export interface EncodeStreamOptions {
  /** Bytes of clusters per worker task (default 1 MiB, at least one cluster). */
  batchBytes?: number;
  /** Batches read or encoded ahead of the consumer (default two per worker thread, plus two). */
  depth?: number;
  /** Called once per batch with its first and last cluster, before its reads start. */
  onBatch?: (first: number, last: number) => void;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
  /** The id key of an encrypted repository (EncodePool.encodeBatch). */
  idKey?: Buffer | undefined;
}

type Batch = { clusters: number[]; encoded: Promise<ClusterChange[]> };

export async function* encodedChanges(seal: Seal, pool: EncodePool, o: EncodeStreamOptions = {}): AsyncGenerator<ClusterChange> {
  const perBatch = Math.max(1, Math.floor((o.batchBytes ?? 1 << 20) / seal.clusterSize));
  const depth = o.depth ?? pool.threads * 2 + 2;
  const total = seal.clusterCount;
  const source = seal.clusters(); // ascending
  let exhausted = false;

  const start = (clusters: number[]): Batch => {
    o.onBatch?.(clusters[0] as number, clusters.at(-1) as number);
    const encoded = (async (): Promise<ClusterChange[]> => {
      const plains = await Promise.all(clusters.map((c) => seal.readSealed(c)));
      const enc = await pool.encodeBatch(plains, o.signal, o.idKey);
      return enc.map((e, i) => ({ cluster: clusters[i] as number, data: e.zero ? 'zero' : { frame: e.frame, id: e.id } }));
    })();
    encoded.catch(() => undefined); // awaited in order below; a batch left behind fails quietly
    return { clusters, encoded };
  };
  const next = (): Batch | undefined => {
    if (exhausted) return undefined;
    const clusters: number[] = [];
    while (clusters.length < perBatch) {
      const r = source.next();
      if (r.done) {
        exhausted = true;
        break;
      }
      clusters.push(r.value);
    }
    return clusters.length ? start(clusters) : undefined;
  };

  const inflight: Batch[] = [];
  while (inflight.length < depth) {
    const b = next();
    if (!b) break;
    inflight.push(b);
  }
  let done = 0;
  while (inflight.length) {
    const batch = inflight.shift() as Batch;
    const changes = await batch.encoded;
    const more = next();
    if (more) inflight.push(more);
    for (const change of changes) {
      yield change;
      seal.markUploaded(change.cluster);
      o.onProgress?.(++done, total);
    }
  }
}
