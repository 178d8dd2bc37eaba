/**
 * fsck --local: the local copies on this host (attached volumes, kept ones).
 *
 *  1. Each volume directory's image and the snapshot its change tracking counts from (its
 *     committed snapshot, in the state record) are found. Without one, every cluster counts
 *     as changed and there is nothing to compare.
 *  2. Every cluster that snapshot holds as a blob, and that is present locally, is read
 *     from the local image and hashed; clusters whose hash differs are candidates.
 *  3. Then the state record and every bitmap page are read and checked (both copies). A
 *     candidate that tracking says may have changed since (dirty, or in a region under a
 *     write-intent bit) is fine: it will be in the next snapshot. Any other is a cluster that
 *     changed without being tracked, and the next snapshot would miss it.
 * Reading the image before the bitmaps is what makes this safe next to a serving daemon:
 * a write reaches the image only after its intent bit is durable.
 */
import { open, readdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { codeOf, isTransient } from '../errors.js';
import { blobId } from '../format/blob.js';
import type { Manifest } from '../format/records.js';
import { iterate } from '../format/tree.js';
import { manifestTree } from '../repo/commit.js';
import type { Repository } from '../repo/repository.js';
import { IMAGE_FILE, inspectVolume, type LocalInspection } from '../volume/setup.js';
import type { Findings } from './findings.js';

export interface LocalSummary {
  volumes: number;
  clustersCompared: number;
  clustersChangedSince: number;
}

export async function checkLocal(repo: Repository, roots: readonly string[], manifests: ReadonlyMap<string, Manifest>, findings: Findings, opts: { volume?: string; signal?: AbortSignal } = {}): Promise<LocalSummary> {
  const out: LocalSummary = { volumes: 0, clustersCompared: 0, clustersChangedSince: 0 };
  for (const root of roots) {
    const names = await readdir(root).catch(() => [] as string[]);
    for (const name of names.sort()) {
      if (opts.volume !== undefined && name !== opts.volume) continue;
      const dir = join(root, name);
      const where = `local:${dir}`;
      out.volumes++;
      try {
        await checkOne(repo, dir, where, manifests, findings, out, opts.signal);
      } catch (err) {
        if (isTransient(err) || codeOf(err) === 'ABORTED') throw err;
        findings.add('undecodable', `${where}/state`, `local copy ${dir}: ${(err as Error).message}`, 'none by fsck: the daemon refuses to serve it; restore the volume from its last snapshot');
      }
    }
  }
  return out;
}

async function checkOne(repo: Repository, dir: string, where: string, manifests: ReadonlyMap<string, Manifest>, findings: Findings, out: LocalSummary, signal?: AbortSignal): Promise<void> {
  // 1-2: hash the clusters the reference snapshot holds, before reading any bitmap.
  const first = await inspectVolume(dir);
  const refId = first.committedSnapshot;
  const ref = refId ? manifests.get(refId) : undefined;
  const candidates: { cluster: number; id: string }[] = [];
  if (ref && ref.clusterSize === first.state.clusterSize) {
    const fh = await open(join(dir, IMAGE_FILE), 'r');
    try {
      // A snapshot whose tree does not read is a store finding already: compare nothing.
      await compare(repo, ref, fh, first, candidates, out, signal).catch((err: unknown) => {
        if (isTransient(err) || codeOf(err) === 'ABORTED' || codeOf(err) === 'LOCAL_IO') throw err;
        candidates.length = 0;
      });
    } finally {
      await fh.close();
    }
  }
  // 3: the tracking state as it is now covers every change made before the reads above.
  const now = await inspectVolume(dir);
  if (now.presentUnreadable) findings.add('checksum-mismatch', `${where}/present`, `local copy ${dir}: ${now.presentUnreadable.message}`, 'none by fsck: the daemon refuses to serve it (LOCAL_STATE_DAMAGED); restore the volume from its last snapshot');
  const tracking = now.damaged.filter((f) => f !== 'present');
  if (now.unreadablePages > 0 || tracking.length > 0) findings.add('checksum-mismatch', `${where}/bitmaps`, `local copy ${dir}: change tracking damaged (${[...tracking, `${now.unreadablePages} page(s) unreadable in both copies`].join(', ')}); the clusters they covered count as changed: the next snapshot uploads more, nothing is missed`, 'none needed: the next open rewrites them');
  for (const c of candidates) {
    if (now.mayHaveChanged(c.cluster)) {
      out.clustersChangedSince++;
      continue;
    }
    findings.add('checksum-mismatch', `${where}/${IMAGE_FILE}@${c.cluster}`, `local copy ${dir}: cluster ${c.cluster} differs from snapshot ${refId} (blob ${c.id.slice(0, 16)}) yet change tracking does not mark it: the next snapshot would miss it`, 'none by fsck: snapshot the volume after marking it all dirty, or restore it');
  }
}

async function compare(repo: Repository, ref: Manifest, fh: FileHandle, first: LocalInspection, candidates: { cluster: number; id: string }[], out: LocalSummary, signal?: AbortSignal): Promise<void> {
  const C = ref.clusterSize;
  const buf = Buffer.alloc(C);
  for await (const run of iterate(manifestTree(ref), repo.nodeReader())) {
    signal?.throwIfAborted();
    if (run.entry.kind !== 'blob' || !first.isPresent(run.first)) continue;
    const expect = Math.min(C, ref.imageLength - run.first * C);
    const { bytesRead } = await fh.read(buf, 0, expect, run.first * C);
    out.clustersCompared++;
    if (bytesRead !== expect || !blobId(buf.subarray(0, expect)).equals(run.entry.loc.id)) candidates.push({ cluster: run.first, id: run.entry.loc.id.toString('hex') });
  }
}
