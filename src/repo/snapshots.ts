/**
 * Deleting snapshots, finding them, and choosing the newest snapshot of a volume
 * without trusting a listing or the catalog (docs/protocols.md, "Delete", "Latest").
 */
import { codeOf, IslandError } from '../errors.js';
import type { Manifest, Pin, Tombstone } from '../format/records.js';
import { listAll, type OpOptions } from '../store/types.js';
import { keys, parseLinkKey, parseManifestKey } from './keys.js';
import { readManifests } from './manifests.js';
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
   * Chain links the walk could not read (lost, or damaged) but stepped over, because a
   * committed manifest of that volume, parent and generation extends the chain. The
   * caller should say so (fsck --repair rewrites them).
   */
  unlinked: UnlinkedStep[];
  /**
   * Evidence of a snapshot newer than `head` that could not be followed, one line each.
   * Empty unless allowRollback was given: without it, evidence is a HEAD_UNCERTAIN refusal.
   */
  uncertain: string[];
}

export interface UnlinkedStep {
  /** The chain link's key. */
  key: string;
  /** The snapshot whose manifest stood in for it. */
  snapshot: string;
  why: 'lost' | 'damaged';
}

export interface HeadOptions extends OpOptions {
  /**
   * Take the chain as far as it can be proved even when there is evidence of a newer
   * snapshot: the volume rolls back to `live`. Only an operator's explicit choice sets it.
   */
  allowRollback?: boolean;
}

/** Error codes of a record that exists but is damaged (a newer build's record is not damage). */
const DAMAGED = new Set(['FORMAT_CORRUPT', 'HASH_MISMATCH']);
/** A named head is proved by reading the links of at most this many generations at once. */
const MAX_NAMED_HEAD_LINKS = 64;
/** Evidence lines quoted in a refusal (all of them are in its details). */
const QUOTED_EVIDENCE = 3;

/**
 * The newest snapshot of a volume (docs/protocols.md, "Attach, detach and latest").
 *
 * Walk the chain links from the volume's root: at each snapshot, the child written by the
 * highest generation wins (a newer attachment fenced the older one); other children are
 * reported as forks. Only names computed from (volume, parent, generation) are read, so a
 * lagging listing cannot hide the newest snapshot.
 *
 * The manifest is the commit point and the link only its index, so the listed manifests
 * the walk did not reach are checked too (a listing can only add to what the walk found):
 *  - one that extends the chain where a link is missing or damaged (its parent is the
 *    head, or it was written by a higher generation than the child the walk took) is
 *    followed, and the link reported in `unlinked` (a crash between a commit's manifest
 *    and its link leaves exactly this);
 *  - one that descends from a snapshot with neither manifest nor link, and is newer than
 *    the head (a higher generation, or the same one and a later id), is evidence;
 *  - a damaged link that may hold the winner, with no manifest to stand in for it, is
 *    evidence; so is a snapshot on the chain, newer than the restore base, whose manifest
 *    is lost while its link and every pack it wrote remain and no later snapshot on the
 *    chain has a manifest (GC deletes a released snapshot's packs before its manifest,
 *    unless a later snapshot's tree still reaches them).
 * Evidence refuses with HEAD_UNCERTAIN, naming the objects, unless `allowRollback`.
 */
export async function resolveHead(repo: Repository, volume: string, maxGeneration: number, opts: HeadOptions = {}): Promise<Head> {
  const forks: Head['forks'] = [];
  const chain: Manifest[] = [];
  const reached = new Set<string>();
  const damaged = new Map<string, { parent: string | null; generation: number; why: string }>();
  const unlinked: UnlinkedStep[] = [];
  const evidence: string[] = [];
  const walk = async (): Promise<void> => {
    for (;;) {
      const at = chain.at(-1) ?? null;
      // Every generation's link from here at once (names are computable): one round trip a step.
      const gens: number[] = [];
      for (let g = maxGeneration; g >= Math.max(1, at?.generation ?? 1); g--) gens.push(g);
      const found = await Promise.all(
        gens.map(async (g) => {
          try {
            return await repo.getLink(volume, at?.id ?? null, g, opts);
          } catch (err) {
            if (!DAMAGED.has(codeOf(err))) throw err;
            damaged.set(keys.link(volume, at?.id ?? null, g), { parent: at?.id ?? null, generation: g, why: (err as Error).message });
            return undefined;
          }
        }),
      );
      const children = found.filter((c): c is Manifest => c !== undefined); // highest generation first
      if (children.length === 0) return;
      if (children.length > 1) forks.push({ parent: at?.id ?? null, children: children.map((c) => ({ id: c.id, generation: c.generation })) });
      for (const c of children) reached.add(c.id);
      chain.push(children[0] as Manifest);
    }
  };
  await walk();

  const off = await unreached(repo, volume, reached, evidence, opts);
  for (let guard = 0; guard <= off.size; guard++) {
    const step = extension(chain, off, reached);
    if (!step) break;
    const i = step.parent === null ? 0 : chain.findIndex((m) => m.id === step.parent) + 1;
    const taken = chain[i];
    if (taken) forks.push({ parent: step.parent, children: [step, taken].map((c) => ({ id: c.id, generation: c.generation })) });
    const key = keys.link(volume, step.parent, step.generation);
    unlinked.push({ key, snapshot: step.id, why: damaged.has(key) ? 'damaged' : 'lost' });
    damaged.delete(key);
    chain.length = i;
    chain.push(step);
    reached.add(step.id);
    off.delete(step.id);
    await walk();
  }
  const head = chain.at(-1) ?? null;
  const onChain = new Map(chain.map((m, i) => [m.id, i]));

  // A damaged link that may hold the winner, with nothing to stand in for it.
  for (const [key, d] of damaged) {
    if (d.parent !== null && !onChain.has(d.parent)) continue; // below a losing fork
    const next = chain[d.parent === null ? 0 : (onChain.get(d.parent) as number) + 1];
    if (next === undefined || d.generation > next.generation) evidence.push(`the chain link ${key} is damaged (${d.why})`);
  }
  let live: Manifest | null = null;
  let laterManifest = false;
  for (let i = chain.length - 1; i >= 0; i--) {
    const m = chain[i] as Manifest;
    const [tombstone, manifest] = await Promise.all([repo.getTombstone(m.id, opts), repo.getManifest(volume, m.id, opts)]);
    const deleted = tombstone !== undefined;
    if (manifest && !deleted) {
      live = m;
      break;
    }
    if (manifest) laterManifest = true;
    if (manifest || deleted || laterManifest) continue; // deleted; or its packs may be kept by a later tree
    if (await allPacksExist(repo, m, opts)) {
      evidence.push(`the manifest ${keys.manifest(volume, m.id)} of snapshot ${m.id} (generation ${m.generation}) is lost while its chain link and all ${m.packs.length} packs it wrote remain`);
    }
    // else: collected by GC (its packs went first), or its data is gone anyway.
  }
  evidence.push(...(await unplaced(repo, volume, head, off, reached, opts)));
  if (evidence.length > 0 && !opts.allowRollback) throw headUncertain(volume, head, live, evidence);
  return { head, live, forks, unlinked, uncertain: evidence };
}

/**
 * The head a clean detach named (heads/<volume>/<g>, docs/protocols.md, "Attach" step 4),
 * proved without walking the chain, or undefined when it cannot be (the caller walks).
 * Given that generation g is the highest and detached, and that its detaching host wrote
 * the record just before the detach record, the named snapshot is the chain's end if, read
 * at once:
 *  - its manifest exists and is the one named, and it has no tombstone (it is then also the
 *    restore base);
 *  - no chain link leaves it for any generation from its own to maxGeneration (a child
 *    would be newer; a damaged link might be);
 *  - the listing of the volume's manifests shows none after it (a commit whose link was
 *    lost is found by its manifest, as the walk's step 5 would).
 * Anything else (deleted, a child, a later manifest, a damaged record) sends the caller to
 * the walk, which decides it as before. One round trip, whatever the history's length.
 */
export async function namedHead(repo: Repository, volume: string, named: Manifest, maxGeneration: number, opts: OpOptions = {}): Promise<Head | undefined> {
  return (await proveNamed(repo, volume, named, maxGeneration, opts)).head;
}

/** namedHead's answer, and whether the named snapshot's manifest is missing while no tombstone names it. */
async function proveNamed(repo: Repository, volume: string, named: Manifest, maxGeneration: number, opts: OpOptions): Promise<{ head?: Head; lost: boolean }> {
  const gens: number[] = [];
  for (let g = named.generation; g <= maxGeneration; g++) gens.push(g);
  const orDamaged = <T>(p: Promise<T>): Promise<T | 'damaged'> =>
    p.catch((err: unknown) => {
      if (DAMAGED.has(codeOf(err))) return 'damaged' as const;
      throw err;
    });
  if (gens.length > MAX_NAMED_HEAD_LINKS) {
    // Many generations without a commit: the walk decides (it reads those links anyway).
    const [manifest, tombstone] = await Promise.all([orDamaged(repo.getManifest(volume, named.id, opts)), orDamaged(repo.getTombstone(named.id, opts))]);
    return { lost: manifest === undefined && tombstone === undefined };
  }
  const [manifest, tombstone, later, ...links] = await Promise.all([
    orDamaged(repo.getManifest(volume, named.id, opts)),
    orDamaged(repo.getTombstone(named.id, opts)),
    repo.store.list(keys.manifestsPrefix(volume), { startAfter: keys.manifest(volume, named.id), limit: 1, signal: opts.signal }),
    ...gens.map((g) => orDamaged(repo.getLink(volume, named.id, g, opts))),
  ]);
  if (manifest === undefined || manifest === 'damaged' || tombstone !== undefined) return { lost: manifest === undefined && tombstone === undefined };
  if (manifest.generation !== named.generation || manifest.parent !== named.parent) return { lost: false };
  if (later.items.length > 0 || links.some((l) => l !== undefined)) return { lost: false };
  return { head: { head: manifest, live: manifest, forks: [], unlinked: [], uncertain: [] }, lost: false };
}

/**
 * The head after generation g (the highest) detached with a head record: the named head
 * when namedHead proves it, else the walk's answer. A head record is evidence too: when it
 * names a snapshot whose manifest is gone with no tombstone naming it, newer than the
 * walk's head, and every pack it wrote remains, the newest snapshot was lost, not collected
 * (GC deletes a released snapshot's packs before its manifest, and a snapshot is released
 * only by a tombstone): HEAD_UNCERTAIN, as for the walk's own evidence, unless
 * allowRollback.
 */
export async function resolveHeadNamed(repo: Repository, volume: string, named: Manifest, maxGeneration: number, opts: HeadOptions = {}): Promise<Head> {
  const proved = await proveNamed(repo, volume, named, maxGeneration, opts);
  if (proved.head) return proved.head;
  const walked = await resolveHead(repo, volume, maxGeneration, opts);
  if (!proved.lost || walked.head?.id === named.id || named.packs.length === 0) return walked;
  // Older than the walk's head (a lower generation, or the same and an earlier id): history.
  const tip = walked.head;
  const newer = tip === null || named.generation > tip.generation || (named.generation === tip.generation && named.id > tip.id);
  if (!newer || !(await allPacksExist(repo, named, opts))) return walked;
  const line = `the head record ${keys.head(volume, named.generation)} names snapshot ${named.id} (generation ${named.generation}), whose manifest is lost while all ${named.packs.length} packs it wrote remain`;
  if (opts.allowRollback) return { ...walked, uncertain: [...walked.uncertain, line] };
  throw headUncertain(volume, walked.head, walked.live, [line]);
}

/** The refusal of a head that cannot be proved the newest, naming the evidence and the two ways out. */
function headUncertain(volume: string, head: Manifest | null, live: Manifest | null, evidence: string[]): IslandError {
  const quoted = evidence.slice(0, QUOTED_EVIDENCE).join('; ') + (evidence.length > QUOTED_EVIDENCE ? `; and ${evidence.length - QUOTED_EVIDENCE} more` : '');
  const older = live ? `snapshot ${live.id}` : 'an empty volume';
  return new IslandError('HEAD_UNCERTAIN', `cannot prove that ${head ? `snapshot ${head.id}` : "the chain's end"} is the newest of volume ${volume}: ${quoted}. Run island fsck --repair, or allow the rollback to ${older} explicitly`, {
    details: { volume, head: head?.id ?? null, live: live?.id ?? null, evidence },
  });
}

/** Every pack a snapshot wrote still exists (in either kind's place: the manifest does not say which). */
export async function allPacksExist(repo: Repository, m: Manifest, opts: OpOptions): Promise<boolean> {
  for (const p of m.packs) {
    if (await repo.store.head(keys.pack('data', p), opts)) continue;
    if (await repo.store.head(keys.pack('metadata', p), opts)) continue;
    return false;
  }
  return true;
}

/** Listed manifests of the volume the walk did not reach (a damaged one is evidence). */
async function unreached(repo: Repository, volume: string, reached: ReadonlySet<string>, evidence: string[], opts: OpOptions): Promise<Map<string, Manifest>> {
  const off = new Map<string, Manifest>();
  const read = await readManifests(repo, volume, {
    ...opts,
    skip: (k) => reached.has(k.id),
    onError: (k, err) => {
      if (!DAMAGED.has(codeOf(err))) throw err;
      evidence.push(`the manifest ${keys.manifest(k.volume, k.id)} is damaged, so where snapshot ${k.id} belongs is unknown`);
    },
  });
  for (const m of read) off.set(m.id, m); // one deleted since the listing is not read
  return off;
}

/**
 * The unreached manifest that extends the chain: its parent is on the chain (or it is a
 * root), and it is the head's child or its branch was written by a higher generation
 * than the chain from there on. A branch counts by its highest generation (its own and
 * that of every unreached manifest below it): a same-generation sibling whose link was
 * overwritten (a retake of the generation's first snapshot after its parent was deleted
 * writes the same root link again) still wins where a later generation built on it. A
 * sibling of the same generation with nothing newer below it is a retried commit whose
 * link names the other one. The highest generation wins, then the latest id.
 */
function extension(chain: readonly Manifest[], off: ReadonlyMap<string, Manifest>, reached: ReadonlySet<string>): Manifest | undefined {
  const index = new Map(chain.map((m, i) => [m.id, i]));
  const newest = branchGenerations(off, reached);
  const chainFrom = (i: number): number => chain.slice(i).reduce((g, m) => Math.max(g, m.generation), 0);
  let best: Manifest | undefined;
  let bestGen = 0;
  for (const m of off.values()) {
    if (reached.has(m.id)) continue;
    if (m.parent !== null && !index.has(m.parent)) continue;
    const i = m.parent === null ? 0 : (index.get(m.parent) as number) + 1;
    const g = newest.get(m.id) ?? m.generation;
    if (chain[i] !== undefined && g <= chainFrom(i)) continue;
    if (!best || g > bestGen || (g === bestGen && (m.generation > best.generation || (m.generation === best.generation && m.id > best.id)))) {
      best = m;
      bestGen = g;
    }
  }
  return best;
}

/** The highest generation in each unreached manifest's branch (itself and what descends from it among the unreached). */
function branchGenerations(off: ReadonlyMap<string, Manifest>, reached: ReadonlySet<string>): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of off.values()) {
    if (reached.has(m.id)) continue;
    // Carry m's generation up its unreached ancestors (bounded: a cycle cannot loop).
    let step: Manifest | undefined = m;
    for (let hops = 0; step && hops <= off.size; hops++) {
      out.set(step.id, Math.max(out.get(step.id) ?? step.generation, m.generation));
      step = step.parent === null || reached.has(step.parent) ? undefined : off.get(step.parent);
    }
  }
  return out;
}

/**
 * Unreached manifests newer than the head that cannot be placed: climbing their parents
 * (through manifests, then through links when a manifest is gone) ends at a snapshot that
 * has neither. Below a losing fork, or older than the head, they are history, not evidence.
 */
async function unplaced(repo: Repository, volume: string, head: Manifest | null, off: Map<string, Manifest>, reached: ReadonlySet<string>, opts: OpOptions): Promise<string[]> {
  const newer = (m: Manifest): boolean => head === null || m.generation > head.generation || (m.generation === head.generation && m.id > head.id);
  const candidates = [...off.values()].filter(newer);
  if (candidates.length === 0) return [];
  const climb = (m: Manifest): string | null => {
    let step = m;
    for (let hops = 0; step.parent !== null && !reached.has(step.parent); hops++) {
      const up = off.get(step.parent);
      if (!up || hops > off.size) return step.parent;
      step = up;
    }
    return null;
  };
  let linksRead = false;
  const out: string[] = [];
  for (const m of candidates) {
    let unknown = climb(m);
    if (unknown !== null && !linksRead) {
      // A snapshot whose manifest GC removed is known by its link only.
      linksRead = true;
      for await (const o of listAll(repo.store, keys.volumeLinksPrefix(volume), opts)) {
        const k = parseLinkKey(o.key);
        if (!k || k.volume !== volume) continue;
        const l = await repo.getLink(volume, k.parent, k.generation, opts).catch((err: unknown) => {
          if (DAMAGED.has(codeOf(err))) return undefined; // its child stays unplaced: evidence
          throw err;
        });
        if (l && !reached.has(l.id) && !off.has(l.id)) off.set(l.id, l);
      }
      unknown = climb(m);
    }
    if (unknown === null) continue;
    if (await repo.getTombstone(m.id, opts)) continue; // deleted: restoring older is no loss
    out.push(`snapshot ${m.id} (generation ${m.generation}) descends from ${unknown}, which has neither a manifest nor a chain link`);
  }
  return out;
}
