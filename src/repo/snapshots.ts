/**
 * Deleting snapshots, finding them, and choosing the newest snapshot of a volume
 * without trusting a listing or the catalog (docs/protocols.md, "Delete", "Latest").
 */
import { codeOf, IslandError } from '../errors.js';
import type { Manifest, Pin, Tombstone } from '../format/records.js';
import { listAll, type OpOptions } from '../store/types.js';
import { keys, parseManifestKey } from './keys.js';
import type { Repository } from './repository.js';

/** Find a snapshot by id alone (the listing is a hint; the manifest read is the proof). */
export async function findSnapshot(repo: Repository, id: string, opts: OpOptions = {}): Promise<Manifest | undefined> {
  for await (const o of listAll(repo.store, keys.manifestsPrefix(), opts)) {
    const k = parseManifestKey(o.key);
    if (k?.id === id) return repo.getManifest(k.volume, id, opts);
  }
  return undefined;
}

export interface DeleteOptions extends OpOptions {
  reason?: string;
  /** Delete even when pinned: a restore or copy filling from it may then fail. */
  force?: boolean;
}

/** "attach on host-b": who holds a pin, for messages. */
export function pinHolder(p: Pin): string {
  return `${p.holder} on ${p.host}`;
}

/** Write the tombstone of a snapshot (nothing is removed now: GC does it after G). */
export async function deleteSnapshot(repo: Repository, volume: string, id: string, opts: DeleteOptions = {}): Promise<Tombstone> {
  const m = await repo.getManifest(volume, id, opts);
  if (!m) throw new IslandError('NOT_FOUND', `no snapshot ${id} of volume ${volume}`, { details: { volume, snapshot: id } });
  if (await repo.getTombstone(id, opts)) throw new IslandError('SNAPSHOT_DELETED', `snapshot ${id} is already deleted`, { details: { snapshot: id } });
  const now = repo.now();
  const live = (await repo.listPins(id, opts)).filter((p) => p.expires > now);
  if (live.length > 0 && !opts.force) {
    const holders = live.map(pinHolder);
    throw new IslandError('PINNED', `snapshot ${id} is pinned (${holders.join(', ')}); --force deletes it anyway and what fills from it may fail`, { details: { snapshot: id, pins: live.map((p) => p.id), holders } });
  }
  const t: Tombstone = { snapshot: id, volume, created: now, host: repo.host, reason: opts.reason ?? 'deleted', forced: live.length > 0 };
  await repo.putTombstone(t, opts);
  return t;
}

/** The highest generation of a volume: probe gens/<volume>/<g+1> forward from a hint. */
export async function highestGeneration(repo: Repository, volume: string, hint = 0, opts: OpOptions = {}): Promise<number> {
  let g = Math.max(0, hint);
  // A stale hint may point past generations that exist: step back to one that does.
  while (g > 0 && !(await repo.getGeneration(volume, g, opts))) g--;
  while (await repo.getGeneration(volume, g + 1, opts)) g++;
  return g;
}

export interface Head {
  /** The newest committed snapshot on the winning chain (deleted or not), or null. */
  head: Manifest | null;
  /** The newest snapshot on that chain that is not deleted (the restore base), or null. */
  live: Manifest | null;
  /** Places where two generations both committed a child of one snapshot. */
  forks: { parent: string | null; children: { id: string; generation: number }[] }[];
  /**
   * Evidence of a snapshot newer than `head` that the walk could not reach (a lost or
   * damaged chain link, a lost manifest), one line each. Empty unless allowRollback was
   * given: without it, any evidence is a HEAD_UNCERTAIN refusal.
   */
  uncertain: string[];
}

export interface HeadOptions extends OpOptions {
  /**
   * Take the chain as the links show it even when there is evidence of a newer snapshot:
   * the volume rolls back to `live`. Only an operator's explicit choice sets it.
   */
  allowRollback?: boolean;
}

/** Error codes of a record that exists but is damaged (a newer build's record is not damage). */
const DAMAGED = new Set(['FORMAT_CORRUPT', 'HASH_MISMATCH']);
/** Evidence lines quoted in a refusal (all of them are in its details). */
const QUOTED_EVIDENCE = 3;

/**
 * Walk the chain links from the volume's root: at each snapshot, the child written by the
 * highest generation wins (a newer attachment fenced the older one); other children are
 * reported as forks. Only names computed from (volume, parent, generation) are read, so a
 * lagging listing cannot hide the newest snapshot.
 *
 * Then look for evidence that the walk stopped short (docs/protocols.md, "Attach, detach
 * and latest"): a damaged link that may hold the winner; a snapshot on the chain, newer
 * than the restore base, whose manifest is gone while its link and every pack it wrote
 * remain (GC deletes packs before manifests, so that is no collected snapshot); a listed
 * manifest of the volume, not deleted, that descends from the head, or from a snapshot on
 * the chain through a higher generation than the chain took, or from a snapshot that has
 * neither manifest nor link. Any of these refuses with HEAD_UNCERTAIN unless
 * `allowRollback`. The listing can only add evidence, never remove it: a lagging listing
 * hides a manifest from this check as it would from anyone.
 */
export async function resolveHead(repo: Repository, volume: string, maxGeneration: number, opts: HeadOptions = {}): Promise<Head> {
  const forks: Head['forks'] = [];
  const chain: Manifest[] = [];
  const evidence: string[] = [];
  const damagedLinks = new Set<string>();
  let at: Manifest | null = null;
  for (;;) {
    const children: Manifest[] = [];
    const damaged: { key: string; generation: number; why: string }[] = [];
    for (let g = maxGeneration; g >= Math.max(1, at?.generation ?? 1); g--) {
      try {
        const child = await repo.getLink(volume, at?.id ?? null, g, opts);
        if (child) children.push(child);
      } catch (err) {
        if (!DAMAGED.has(codeOf(err))) throw err;
        damaged.push({ key: keys.link(volume, at?.id ?? null, g), generation: g, why: (err as Error).message });
      }
    }
    // A damaged link of a lower generation than the winner could only hold a losing fork.
    for (const d of damaged) {
      if (d.generation <= (children[0]?.generation ?? 0)) continue;
      damagedLinks.add(d.key);
      evidence.push(`the chain link ${d.key} is damaged (${d.why})`);
    }
    if (children.length === 0) break;
    if (children.length > 1) forks.push({ parent: at?.id ?? null, children: children.map((c) => ({ id: c.id, generation: c.generation })) });
    at = children[0] as Manifest;
    chain.push(at);
  }
  let live: Manifest | null = null;
  for (let i = chain.length - 1; i >= 0; i--) {
    const m = chain[i] as Manifest;
    if (await repo.getTombstone(m.id, opts)) continue;
    if (await repo.getManifest(volume, m.id, opts)) {
      live = m;
      break;
    }
    if (await allPacksExist(repo, m, opts)) {
      evidence.push(`the manifest ${keys.manifest(volume, m.id)} of snapshot ${m.id} (generation ${m.generation}) is lost while its chain link and all ${m.packs.length} packs it wrote remain`);
    }
    // else: collected by GC (its packs went first), or its data is gone anyway.
  }
  evidence.push(...(await listedEvidence(repo, volume, chain, forks, damagedLinks, opts)));
  if (evidence.length > 0 && !opts.allowRollback) {
    const quoted = evidence.slice(0, QUOTED_EVIDENCE).join('; ') + (evidence.length > QUOTED_EVIDENCE ? `; and ${evidence.length - QUOTED_EVIDENCE} more` : '');
    const older = live ? `snapshot ${live.id}` : 'an empty volume';
    throw new IslandError('HEAD_UNCERTAIN', `cannot prove that ${at ? `snapshot ${at.id}` : 'the chain\'s end'} is the newest of volume ${volume}: ${quoted}. Run island fsck --repair, or allow the rollback to ${older} explicitly`, {
      details: { volume, head: at?.id ?? null, live: live?.id ?? null, evidence },
    });
  }
  return { head: at, live, forks, uncertain: evidence };
}

/** Every pack a snapshot wrote still exists (in either kind's place: the manifest does not say which). */
async function allPacksExist(repo: Repository, m: Manifest, opts: OpOptions): Promise<boolean> {
  for (const p of m.packs) {
    if (await repo.store.head(keys.pack('data', p), opts)) continue;
    if (await repo.store.head(keys.pack('metadata', p), opts)) continue;
    return false;
  }
  return true;
}

/** Listed manifests of the volume the walk did not reach that say it stopped short. */
async function listedEvidence(repo: Repository, volume: string, chain: readonly Manifest[], forks: Head['forks'], damagedLinks: ReadonlySet<string>, opts: OpOptions): Promise<string[]> {
  const onChain = new Map(chain.map((m, i) => [m.id, i]));
  const reached = new Set<string>(onChain.keys());
  for (const f of forks) for (const c of f.children) reached.add(c.id);
  const off = new Map<string, Manifest>();
  const out: string[] = [];
  for await (const o of listAll(repo.store, keys.manifestsPrefix(volume), opts)) {
    const k = parseManifestKey(o.key);
    if (!k || k.volume !== volume || reached.has(k.id)) continue;
    let m: Manifest | undefined;
    try {
      m = await repo.getManifest(volume, k.id, opts);
    } catch (err) {
      if (!DAMAGED.has(codeOf(err))) throw err;
      out.push(`the manifest ${o.key} is damaged, so where snapshot ${k.id} belongs is unknown`);
      continue;
    }
    if (m) off.set(m.id, m); // else deleted since the listing
  }
  for (const m of off.values()) {
    // Climb to the first snapshot off the reached set; its parent is reached, the root, or unknown.
    let step = m;
    let unknown: string | null = null;
    for (let hops = 0; step.parent !== null && !reached.has(step.parent); hops++) {
      const up = off.get(step.parent);
      if (!up || hops > off.size) {
        unknown = step.parent;
        break;
      }
      step = up;
    }
    let why: string;
    if (unknown !== null) {
      why = `snapshot ${m.id} descends from ${unknown}, which has neither a manifest nor a chain link`;
    } else {
      // Below a losing fork child: nothing newer than the winner.
      if (step.parent !== null && !onChain.has(step.parent)) continue;
      const taken = chain[step.parent === null ? 0 : (onChain.get(step.parent) as number) + 1];
      // A sibling of the same generation is a retried commit whose link names the other one.
      if (taken !== undefined && step.generation <= taken.generation) continue;
      // Already reported as a damaged link.
      if (damagedLinks.has(keys.link(volume, step.parent, step.generation))) continue;
      why = `snapshot ${m.id} (generation ${m.generation}) ${step === m ? '' : `descends through ${step.id} `}from ${step.parent ?? 'the root'}, but the chain link ${keys.link(volume, step.parent, step.generation)} is lost`;
    }
    if (await repo.getTombstone(m.id, opts)) continue; // deleted: restoring older is no loss
    out.push(why);
  }
  return out;
}
