/**
 * fsck --repair. Nothing a snapshot needs is ever deleted; what cannot be fixed is marked.
 *
 *  1. Stale pins are deleted (their holders are gone; GC may then free what they held).
 *  2. A manifest that does not decode, or is lost while its packs remain, is rewritten
 *     from its copy in the chain link (next/<volume>/<parent>/<generation> holds the same
 *     record), or in the head record (heads/<volume>/<g>) when the link was lost with it,
 *     when that copy is sound. A chain link that is lost, does not decode or names
 *     another place is rewritten from the manifest of that volume, parent and generation.
 *  3. A pack with findings (missing, trailer or footer lost, truncated, bad frames) is
 *     rebuilt at the same key when every location a tree points into it can be filled:
 *     from its own sound frames, or from a local copy of the cluster (an attached or kept
 *     volume on this host) whose bytes hash to the blob's id and re-encode to a frame of
 *     exactly the referenced length. Offsets never move, so no tree node changes. The
 *     object is rewritten, not a new one: the only readers of the old bytes were failing.
 *  4. Every snapshot some error still affects gets a damage mark (damage/<id>): it is
 *     listed as damaged and refused as a restore source with a clear message.
 *  5. Orphan packs are deleted only with --prune-orphans (and only past the grace period,
 *     which the check already applied).
 */
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { codeOf } from '../errors.js';
import { blobId, encodeBlob, readBlobHeader, type BlobKind } from '../format/blob.js';
import { hex } from '../format/location.js';
import { encodeManifest, MAX_DAMAGE_FINDINGS, MAX_TEXT_BYTES } from '../format/records.js';
import { MAX_PACK_SIZE, PackBuilder, checkPackFrames } from '../format/pack.js';
import { keys, parseLinkKey, parseManifestKey, parsePackKey } from '../repo/keys.js';
import type { Repository } from '../repo/repository.js';
import type { OpOptions } from '../store/types.js';
import { IMAGE_FILE } from '../volume/setup.js';
import type { BlobSite, Finding, Findings } from './findings.js';
import type { RecordSet } from './records.js';
import type { PackRef, TreeChecker } from './trees.js';

export interface RepairOptions {
  /** Directories holding local volume copies, one subdirectory per volume (attached, kept). */
  localRoots?: string[];
  /** Also delete orphan packs. */
  pruneOrphans?: boolean;
}

interface Ctx extends RepairOptions, OpOptions {
  graceMs: number;
  now: number;
}

export async function repair(repo: Repository, findings: Findings, checker: TreeChecker, rec: RecordSet, ctx: Ctx): Promise<void> {
  const opts = { signal: ctx.signal };
  const all = findings.all();
  // 1. stale pins
  for (const f of all.filter((x) => x.type === 'stale-pin')) {
    await repo.store.delete(f.key, opts);
    f.repaired = true;
  }
  // 2. manifests from their chain links (damaged ones, and lost ones whose packs remain)
  for (const f of all.filter((x) => (x.type === 'undecodable' || x.type === 'checksum-mismatch' || x.type === 'missing-object') && parseManifestKey(x.key))) {
    const k = parseManifestKey(f.key)!;
    const linked = rec.links.get(k.volume)?.find((m) => m.id === k.id);
    const headKey = [...rec.headAt].find(([, m]) => m.id === k.id)?.[0];
    const copy = linked ?? (headKey === undefined ? undefined : rec.headAt.get(headKey));
    if (!copy) {
      f.repair = 'no sound copy in a chain link or head record: the snapshot is marked damaged';
      f.repaired = false;
      continue;
    }
    await repo.store.put(f.key, encodeManifest(copy), opts);
    const back = await repo.getManifest(k.volume, k.id, opts).catch(() => undefined);
    f.repaired = back !== undefined;
    const from = linked ? keys.link(k.volume, copy.parent, copy.generation) : (headKey as string);
    f.repair = f.repaired ? `rewritten from ${from} (run fsck again to check its tree${linked ? '' : ' and rewrite its chain link'})` : 'the rewrite did not read back: the snapshot is marked damaged';
  }
  // 2b. chain links from their manifests (lost, damaged, or holding another place in the chain)
  for (const f of all.filter((x) => (x.type === 'undecodable' || x.type === 'checksum-mismatch' || x.type === 'missing-object') && parseLinkKey(x.key))) {
    const k = parseLinkKey(f.key)!;
    // Two manifests at one place are a retried commit of one generation: its link names the later.
    const candidates = [...rec.manifests.values()].filter((m) => m.volume === k.volume && m.parent === k.parent && m.generation === k.generation).sort((a, b) => (a.id < b.id ? 1 : -1));
    const m = candidates[0];
    if (!m) {
      f.repair = 'no manifest of that volume, parent and generation to rebuild it from';
      f.repaired = false;
      continue;
    }
    await repo.putLink(m, opts);
    const back = await repo.getLink(k.volume, k.parent, k.generation, opts).catch(() => undefined);
    f.repaired = back?.id === m.id;
    f.repair = f.repaired ? `rewritten from ${keys.manifest(m.volume, m.id)}` : 'the rewrite did not read back';
  }
  // 3. packs
  const byPack = new Map<string, Finding[]>();
  for (const f of all) {
    if (f.type !== 'missing-object' && f.type !== 'undecodable' && f.type !== 'checksum-mismatch') continue;
    const packKey = f.key.split('@')[0]!;
    if (!parsePackKey(packKey)) continue;
    byPack.set(packKey, [...(byPack.get(packKey) ?? []), f]);
  }
  for (const [packKey, fs] of byPack) {
    const p = parsePackKey(packKey)!;
    const refs = checker.refsInDamagedPacks.get(packKey) ?? new Map<number, PackRef>();
    const outcome = await rebuildPack(repo, p.kind, Buffer.from(p.id, 'hex'), refs, ctx.localRoots ?? [], opts);
    for (const f of fs) {
      f.repaired = outcome.ok;
      f.repair = outcome.ok ? `pack rebuilt at the same key (${outcome.detail})` : `${outcome.detail}: the snapshots are marked damaged`;
    }
  }
  // 4. damage marks
  const marks = new Map<string, { volume: string; lines: string[] }>();
  for (const f of findings.all()) {
    // A corrupt qcow2 image is what QEMU wrote, restorable and repairable by qemu-img check -r
    // on the copy: it is reported, never marked (a mark would refuse the restore).
    // A lost or damaged chain link leaves its snapshot's data whole: never a reason to refuse it.
    if (f.severity !== 'error' || f.repaired === true || f.type === 'damaged-snapshot' || f.type === 'qcow2-corruption' || parseLinkKey(f.key)) continue;
    for (const s of f.snapshots) {
      const volume = rec.manifests.get(s)?.volume ?? rec.badManifests.get(s);
      if (volume === undefined || rec.damage.has(s)) continue;
      const m = marks.get(s) ?? { volume, lines: [] };
      if (m.lines.length < MAX_DAMAGE_FINDINGS) m.lines.push(`${f.type} ${f.key}`.slice(0, MAX_TEXT_BYTES));
      marks.set(s, m);
    }
    if (f.repaired === undefined) f.repaired = false;
  }
  for (const [snapshot, m] of marks) await repo.putDamage({ snapshot, volume: m.volume, findings: m.lines, created: ctx.now }, opts);
  // 5. orphans
  if (ctx.pruneOrphans) {
    const orphans = all.filter((f) => f.type === 'orphan');
    if (orphans.length) await repo.store.deleteMany(orphans.map((f) => f.key), opts);
    for (const f of orphans) f.repaired = true;
  }
}

/** The plain bytes of a cluster in a local copy, if they hash to `id`. */
async function localCopy(roots: readonly string[], site: BlobSite, id: Buffer): Promise<Buffer | undefined> {
  for (const root of roots) {
    let fh;
    try {
      fh = await open(join(root, site.volume, IMAGE_FILE), 'r');
    } catch {
      continue;
    }
    try {
      const buf = Buffer.alloc(site.clusterSize);
      const { bytesRead } = await fh.read(buf, 0, buf.length, site.cluster * site.clusterSize);
      const plain = buf.subarray(0, bytesRead);
      if (bytesRead > 0 && blobId(plain).equals(id)) return plain;
    } finally {
      await fh.close();
    }
  }
  return undefined;
}

/** The frames of a pack that still decode, by offset, and those whose headers still read. */
function survivingFrames(kind: BlobKind, bytes: Buffer): { good: Map<number, Buffer>; anyHeader: Map<number, Buffer> } {
  const r = checkPackFrames(bytes, kind);
  const good = new Map<number, Buffer>();
  const anyHeader = new Map<number, Buffer>();
  for (const e of r.entries) {
    if (e.offset + e.frameLength > bytes.length) continue;
    const frame = bytes.subarray(e.offset, e.offset + e.frameLength);
    anyHeader.set(e.offset, frame);
    if (!r.bad.has(e.offset)) good.set(e.offset, frame);
  }
  return { good, anyHeader };
}

async function rebuildPack(repo: Repository, kind: BlobKind, id: Buffer, refs: ReadonlyMap<number, PackRef>, roots: readonly string[], opts: OpOptions): Promise<{ ok: boolean; detail: string }> {
  const key = keys.pack(kind, id);
  let bytes: Buffer | undefined;
  try {
    bytes = await repo.store.get(key, opts);
  } catch (err) {
    if (codeOf(err) !== 'STORE_NOT_FOUND') throw err;
  }
  const { good, anyHeader } = bytes ? survivingFrames(kind, bytes) : { good: new Map<number, Buffer>(), anyHeader: new Map<number, Buffer>() };
  const frames = new Map<number, Buffer>();
  let fromLocal = 0;
  const lost: string[] = [];
  for (const [offset, ref] of refs) {
    const have = good.get(offset);
    // A sound frame is one that decodes and hashes to the id the reference expects.
    if (have && have.length === ref.loc.length && blobIdOfFrame(have).equals(ref.loc.id)) {
      frames.set(offset, have);
      continue;
    }
    const plain = ref.site && kind === 'data' ? await localCopy(roots, ref.site, ref.loc.id) : undefined;
    const frame = plain ? encodeBlob(plain, kind).frame : undefined;
    if (frame && frame.length === ref.loc.length) {
      frames.set(offset, frame);
      fromLocal++;
      continue;
    }
    lost.push(`${hex(ref.loc.id).slice(0, 16)}@${offset}`);
  }
  if (lost.length > 0) return { ok: false, detail: `${lost.length} referenced blob(s) have neither a sound frame nor a local copy (${lost.slice(0, 4).join(', ')})` };
  // Frames nothing references fill the gaps between referenced ones, sound or not.
  for (const [offset, frame] of good) if (!frames.has(offset)) frames.set(offset, frame);
  for (const [offset, frame] of anyHeader) if (!frames.has(offset)) frames.set(offset, frame);
  const builder = new PackBuilder(kind, MAX_PACK_SIZE);
  let at = 0;
  for (const offset of [...frames.keys()].sort((a, b) => a - b)) {
    if (offset !== at) return { ok: false, detail: `bytes ${at}..${offset} of the pack are lost and nothing can stand in for them` };
    const frame = frames.get(offset)!;
    builder.add(frame, blobIdOfFrame(frame));
    at += frame.length;
  }
  if (builder.count === 0) return { ok: false, detail: 'nothing of the pack survives and nothing references it' };
  const built = builder.finish();
  await repo.store.put(key, built.bytes, opts);
  const back = await repo.readPackIndex(kind, id, opts);
  for (const [offset, ref] of refs) {
    const e = back.entries.find((x) => x.offset === offset);
    if (!e || e.frameLength !== ref.loc.length || !e.id.equals(ref.loc.id)) return { ok: false, detail: `the rebuilt pack does not place blob ${hex(ref.loc.id)} at ${offset}` };
  }
  return { ok: true, detail: `${refs.size} referenced blob(s) in place, ${fromLocal} from local copies` };
}

/** The blob id a frame's header names (its header was read once already). */
function blobIdOfFrame(frame: Buffer): Buffer {
  return readBlobHeader(frame, 0).id;
}
