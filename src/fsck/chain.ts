/**
 * The chain tier of fsck: every manifest has its chain link, and every chain link whose
 * snapshot is not deleted has its manifest. Readers find the newest snapshot of a volume
 * by walking the links (docs/protocols.md, "Attach, detach and latest"), step over a lost
 * link only through a listing, and refuse to attach (HEAD_UNCERTAIN) when a lost manifest
 * may hide a newer snapshot; here both are errors that --repair fixes, each from the other
 * copy of the same record.
 *
 *  - A manifest without a link at next/<volume>/<parent>/<generation> (and no other
 *    snapshot's link there: a retried commit of the same generation took the name) has
 *    lost its link.
 *  - A link whose snapshot has no manifest and no tombstone, while every pack it wrote
 *    still exists and no snapshot with a manifest descends from it, has lost its manifest:
 *    GC deletes a released snapshot's packs before its manifest and keeps the link, so a
 *    collected snapshot has lost packs too, unless a later snapshot's tree still reaches
 *    them (then nothing tells the two apart, and that later snapshot is the newer data).
 *    Those packs are the only copy of that snapshot's data, and never orphans.
 */
import type { Manifest } from '../format/records.js';
import { keys } from '../repo/keys.js';
import type { ObjectInfo } from '../store/types.js';
import type { Findings } from './findings.js';
import type { RecordSet } from './records.js';

export interface ChainResult {
  /** Snapshots whose manifest is lost, as their chain links hold them (their trees are checked too). */
  readonly lost: Manifest[];
  /** Packs (hex ids) that some chain link's snapshot wrote: never orphans, whatever else says. */
  readonly linkPacks: Set<string>;
}

export function checkChains(rec: RecordSet, packsListed: ReadonlyMap<string, ObjectInfo>, findings: Findings, wanted: (m: Manifest) => boolean): ChainResult {
  const linkPacks = new Set<string>();
  const parents = new Set<string>();
  for (const l of rec.linkAt.values()) {
    for (const p of l.packs) linkPacks.add(p.toString('hex'));
    if (l.parent !== null) parents.add(`${l.volume}/${l.parent}`);
  }
  for (const m of rec.manifests.values()) {
    if (!wanted(m)) continue;
    const key = keys.link(m.volume, m.parent, m.generation);
    if (rec.linkAt.has(key) || findings.get('undecodable', key) || findings.get('checksum-mismatch', key)) continue;
    const f = findings.add(
      'missing-object',
      key,
      `the chain link ${key} of snapshot ${m.id} (${m.volume}, generation ${m.generation}) is lost: a walk of the links stops at ${m.parent ?? 'the root'}, and only a listing (a hint) still shows attach the snapshot`,
      'rewrite it from the manifest',
    );
    findings.affect(f, m.id);
  }
  // Snapshots some later snapshot with a manifest descends from: that one's tree may be what
  // keeps a collected snapshot's packs, so a missing manifest there proves nothing.
  const parentOf = new Map<string, string | null>();
  for (const l of rec.linkAt.values()) parentOf.set(l.id, l.parent);
  for (const m of rec.manifests.values()) parentOf.set(m.id, m.parent);
  const succeeded = new Set<string>();
  for (const m of rec.manifests.values()) {
    for (let p: string | null | undefined = m.parent; p !== null && p !== undefined && !succeeded.has(p); p = parentOf.get(p)) succeeded.add(p);
  }
  const lost: Manifest[] = [];
  const exists = (id: Buffer): boolean => packsListed.has(keys.pack('data', id)) || packsListed.has(keys.pack('metadata', id));
  // A head record is a copy too: the one left when the final snapshot's link was lost with
  // its manifest (attach refuses with HEAD_UNCERTAIN then, naming the record).
  const copies = new Map(rec.linkAt);
  const linked = new Set([...rec.linkAt.values()].map((l) => l.id));
  for (const [key, h] of rec.headAt) {
    // One that wrote no packs cannot be told from one deleted and collected (as at attach).
    if (linked.has(h.id) || h.packs.length === 0) continue;
    linked.add(h.id);
    copies.set(key, h);
    for (const p of h.packs) linkPacks.add(p.toString('hex'));
  }
  for (const [key, l] of copies) {
    if (!wanted(l) || rec.manifests.has(l.id) || rec.badManifests.has(l.id) || rec.tombstones.has(l.id) || succeeded.has(l.id)) continue;
    if (!l.packs.every(exists)) continue; // collected by GC (its packs went first)
    lost.push(l);
    const newest = parents.has(`${l.volume}/${l.id}`) ? '' : `, the newest of ${l.volume} on its branch`;
    const f = findings.add(
      'missing-object',
      keys.manifest(l.volume, l.id),
      `the manifest of snapshot ${l.id} (${l.volume}, generation ${l.generation}${newest}) is lost, but ${rec.headAt.has(key) ? 'the head record' : 'its chain link'} ${key} holds a copy and all ${l.packs.length} packs it wrote exist: they are the only copy of its data and are never pruned as orphans; attach refuses (HEAD_UNCERTAIN) rather than roll ${l.volume} back`,
      rec.headAt.has(key) ? 'rewrite it from the head record (its chain link follows at the next fsck --repair)' : 'rewrite it from its chain link',
    );
    findings.affect(f, l.id);
  }
  return { lost, linkPacks };
}
