/**
 * The tree walk of fsck: every node reachable from the snapshots being checked is read,
 * verified (hash), decoded and place-checked, and every blob location in a leaf is checked
 * against its pack's trailer (and, after a deep pass, against the frames that failed).
 *
 * Unlike the pointer-tree generators, the walk goes on past a bad node: a finding is
 * recorded and its siblings are still checked. Each distinct subtree is walked once; the
 * findings under it are remembered so that every snapshot sharing it is named as affected.
 */
import { codeOf, isTransient } from '../errors.js';
import type { BlobKind } from '../format/blob.js';
import { hex, type BlobLocation } from '../format/location.js';
import type { Manifest } from '../format/records.js';
import { checkShape, readPlacedNode, slotClusters, type NodeRef, type TreeShape } from '../format/tree.js';
import { manifestTree } from '../repo/commit.js';
import { keys } from '../repo/keys.js';
import { Semaphore } from '../store/limit.js';
import type { Repository } from '../repo/repository.js';
import type { BlobSite, Finding, Findings } from './findings.js';
import { locationMismatch, type BadBlob, type PackIndexes } from './packs.js';

/** Node reads in flight at most (a GET costs ~10 ms whatever its size: overlap them). */
const NODE_READ_CONCURRENCY = 16;

/** A reference into a pack that has a finding, kept for a repair of that pack. */
export interface PackRef {
  readonly loc: BlobLocation;
  readonly site: BlobSite | undefined;
}

export interface WalkStats {
  nodes: number;
  blobRefs: number;
  zeroClusters: number;
}

const CLEAN: readonly Finding[] = Object.freeze([]);

export class TreeChecker {
  readonly stats: WalkStats = { nodes: 0, blobRefs: 0, zeroClusters: 0 };
  /** Packs any checked tree points into (for orphan detection), by key. */
  readonly reached = new Set<string>();
  /** References into packs with findings, by pack key then offset (for repair). */
  readonly refsInDamagedPacks = new Map<string, Map<number, PackRef>>();
  /** Subtrees walked: node location -> the findings under it (CLEAN when none). */
  private readonly memo = new Map<string, Promise<readonly Finding[]>>();
  private readonly reads = new Semaphore(NODE_READ_CONCURRENCY);
  private readonly reader;

  constructor(
    private readonly repo: Repository,
    private readonly findings: Findings,
    private readonly indexes: PackIndexes,
    /** Frames a deep pass found bad: pack key -> offset -> why. */
    private readonly bad: ReadonlyMap<string, ReadonlyMap<number, BadBlob>>,
    private readonly signal?: AbortSignal,
  ) {
    this.reader = repo.nodeReader();
  }

  /** Check one snapshot's tree; the findings under it name the snapshot. */
  async check(m: Manifest): Promise<void> {
    let shape: TreeShape;
    try {
      shape = checkShape(manifestTree(m).shape);
    } catch (err) {
      const f = this.findings.add('undecodable', keys.manifest(m.volume, m.id), `manifest ${m.id}: its tree shape is impossible: ${(err as Error).message}`, 'repair from the copy in its chain link, if that one is sound');
      this.findings.affect(f, m.id);
      return;
    }
    if (m.tree.root === null) return;
    const under = await this.visit(m, shape, { loc: m.tree.root }, shape.depth - 1, 0);
    for (const f of under) this.findings.affect(f, m.id);
  }

  private visit(m: Manifest, shape: TreeShape, ref: NodeRef, level: number, first: number): Promise<readonly Finding[]> {
    const k = `${hex(ref.loc.pack)}:${ref.loc.offset}:${ref.loc.length}`;
    let p = this.memo.get(k);
    if (!p) {
      p = this.walk(m, shape, ref, level, first);
      this.memo.set(k, p);
    }
    return p;
  }

  private async walk(m: Manifest, shape: TreeShape, ref: NodeRef, level: number, first: number): Promise<readonly Finding[]> {
    this.signal?.throwIfAborted();
    const found: Finding[] = [];
    const placeBad = await this.checkLocation('metadata', ref.loc, found, undefined);
    let node;
    try {
      node = await this.reads.run(() => readPlacedNode(this.reader, shape, ref, level, first));
      this.stats.nodes++;
    } catch (err) {
      if (isTransient(err) || codeOf(err) === 'ABORTED') throw err;
      if (!placeBad) {
        // The trailer agrees, yet the node does not read: its bytes or its content are bad.
        const key = `${keys.pack('metadata', ref.loc.pack)}@${ref.loc.offset}`;
        const code = codeOf(err);
        const type = code === 'HASH_MISMATCH' ? 'checksum-mismatch' : code === 'STORE_NOT_FOUND' ? 'missing-object' : 'undecodable';
        const f = this.findings.add(type, key, `tree node ${hex(ref.loc.id)} (level ${level}, clusters from ${first}): ${(err as Error).message}`, 'none possible (tree nodes have no local copy): the snapshots are marked damaged');
        this.recordRef(keys.pack('metadata', ref.loc.pack), ref.loc, undefined);
        found.push(f);
      }
      return dedupe(found);
    }
    if (node.kind === 'leaf') {
      // The trailers of the packs this leaf points into, read side by side.
      const packs = new Map<string, Buffer>();
      for (const e of node.entries) if (e.kind === 'blob') packs.set(hex(e.loc.pack), e.loc.pack);
      await Promise.all([...packs.values()].map((p) => this.reads.run(() => this.indexes.get('data', p))));
      for (let i = 0; i < node.entries.length; i++) {
        const e = node.entries[i]!;
        if (e.kind === 'zero') this.stats.zeroClusters++;
        if (e.kind !== 'blob') continue;
        this.stats.blobRefs++;
        await this.checkLocation('data', e.loc, found, { volume: m.volume, cluster: first + i, clusterSize: m.clusterSize });
      }
      return dedupe(found);
    }
    const span = slotClusters(shape.fanout, level);
    const children: Promise<readonly Finding[]>[] = [];
    node.children.forEach((c, i) => {
      if (c !== null) children.push(this.visit(m, shape, c, level - 1, first + i * span));
    });
    for (const under of await Promise.all(children)) found.push(...under);
    return dedupe(found);
  }

  /**
   * Check a location against its pack: the pack exists, its trailer reads, and it has a
   * frame of this length and id at this offset (and, after a deep pass, one that decodes).
   * Returns true when a finding was recorded.
   */
  private async checkLocation(kind: BlobKind, loc: BlobLocation, found: Finding[], site: BlobSite | undefined): Promise<boolean> {
    const packKey = keys.pack(kind, loc.pack);
    this.reached.add(packKey);
    const idx = await this.indexes.get(kind, loc.pack);
    const what = kind === 'data' ? 'data' : 'tree nodes';
    let f: Finding | undefined;
    if (!idx.ok) {
      f = idx.missing
        ? this.findings.add('missing-object', packKey, `pack ${packKey} (${what}) does not exist`, 'rebuild it from local copies of its blobs, if every referenced blob has one; otherwise mark the snapshots damaged')
        : this.findings.add('undecodable', packKey, `pack ${packKey}: ${idx.message}`, 'rebuild its trailer from its frames (and missing frames from local copies)');
    } else {
      const mismatch = locationMismatch(idx.entries, loc);
      const bad = this.bad.get(packKey)?.get(loc.offset);
      if (mismatch !== null) {
        f = this.findings.add('dangling-reference', `${packKey}@${loc.offset}`, `a reference to ${hex(loc.id)} in ${packKey}: ${mismatch}`, 'none possible: the snapshots are marked damaged');
      } else if (bad) {
        f = this.findings.add(bad.code === 'HASH_MISMATCH' ? 'checksum-mismatch' : 'undecodable', `${packKey}@${loc.offset}`, bad.message, kind === 'data' ? 'rewrite the blob from a local copy that hashes to its id' : 'none possible: the snapshots are marked damaged');
      } else if (!this.bad.has(packKey)) {
        return false;
      }
    }
    this.recordRef(packKey, loc, site);
    if (!f) return false;
    this.findings.affect(f, undefined, site);
    found.push(f);
    return true;
  }

  /** Keep every reference into a pack with any finding: a rebuild must place them all. */
  private recordRef(packKey: string, loc: BlobLocation, site: BlobSite | undefined): void {
    let refs = this.refsInDamagedPacks.get(packKey);
    if (!refs) this.refsInDamagedPacks.set(packKey, (refs = new Map()));
    if (!refs.has(loc.offset)) refs.set(loc.offset, { loc, site });
  }
}

function dedupe(found: Finding[]): readonly Finding[] {
  if (found.length === 0) return CLEAN;
  return [...new Set(found)];
}
