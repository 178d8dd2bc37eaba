/**
 * Attachment generations: which host holds a volume, and fencing of the others
 * (docs/protocols.md, "Attach", "Detach").
 *
 * Attach: find the highest generation g (probing gens/<volume>/g+1 forward from the
 * catalog's hint), refuse if g is held by another host that did not detach (unless
 * forced: the old host must be fenced first), then win generation g+1, find the head (the
 * one a clean detach named in its head record, proved in one round trip, else by walking
 * the chain links), and update the catalog record (a hint only). Nothing is
 * written for the volume before the attach has won: the daemon serves the volume only
 * once acquireGeneration has returned.
 *
 * Winning g+1 is the one decision that a write-once name cannot make alone, because two
 * hosts can write the same name. Where the store has create-if-absent (the fs store,
 * AWS S3, MinIO, Ceph; store.conditionalPut()), the generation record is created with
 * it and exactly one host wins. Where it has not (Swift's s3api), hosts run claim rounds
 * of write-once claims per host, each reading every registered host's claim before it
 * may win (claimByRounds). Never "write, wait, read back": a read back proves nothing
 * under last-writer-wins overwrites and stale reads.
 *
 * Detach writes detached/<volume>/<g> once the final snapshot is committed, and beside it
 * the head record heads/<volume>/<g> naming that snapshot.
 */
import { codeOf, IslandError } from '../errors.js';
import type { Lease, Manifest, VolumeRecord } from '../format/records.js';
import type { OpOptions } from '../store/types.js';
import { sleep as realSleep } from '../util/sleep.js';
import { MAX_CLAIM_ROUNDS } from './keys.js';
import type { Repository } from './repository.js';
import { lookup } from '../format/tree.js';
import { manifestTree } from './commit.js';
import { highestGeneration, resolveHead, resolveHeadNamed, type Head, type HeadOptions } from './snapshots.js';

/** A generation record never expires by time: it is ended by a detach record. */
const FOREVER_MS = 100 * 365 * 24 * 3600 * 1000;
/** How long a claim round waits for a contender's verdict before answering BUSY (liveness only). */
const DEFAULT_VERDICT_WAIT_MS = 60_000;
/** Poll interval while waiting for a contender's verdict, and the ceiling of the random backoff between rounds. */
const VERDICT_POLL_MS = 200;
const ROUND_BACKOFF_MS = 1_000;

export interface AttachOptions extends HeadOptions {
  force?: boolean;
  /**
   * Claim rounds only (stores without create-if-absent): how long to wait for a
   * contender's verdict before giving up with BUSY. Safety never depends on it.
   */
  verdictWaitMs?: number;
  /** Random source for the backoff between claim rounds (simulations pass a seeded one). */
  random?: () => number;
  /** Sleep (simulations pass a virtual one). */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /**
   * Return before the catalog record is written (`Attachment.catalog` settles when it is):
   * for a caller that sets up meanwhile and writes that record itself no sooner.
   */
  catalogBeside?: boolean;
}

export interface Attachment {
  generation: number;
  head: Head;
  /** The restore base: the newest live snapshot, or null for an empty volume. */
  base: Manifest | null;
  /** The previous holder when it had not detached (only with force). */
  tookOverFrom: string | null;
  /**
   * How the generation was won: 'conditional-put' (create-if-absent, exclusive on any
   * store that offers it) or 'claim-rounds' (exclusive only if every contending host is
   * registered and the store reads a new object after its write; docs/protocols.md).
   */
  claim: 'conditional-put' | 'claim-rounds';
  /** The catalog record's update (a hint for the next reader); still running with catalogBeside: await it. */
  catalog: Promise<void>;
}

export async function acquireGeneration(repo: Repository, volume: string, opts: AttachOptions = {}): Promise<Attachment> {
  // On a store without create-if-absent the registered hosts are listed (claim rounds,
  // step 1) beside the catalog and generation reads: a listing is the slowest request.
  // (The store's answer on create-if-absent is probed once per store, then cached.)
  const [conditional, rec] = await Promise.all([repo.store.conditionalPut(opts), repo.getVolume(volume, opts)]);
  const hostsEarly = conditional ? undefined : settle(repo.listHosts(opts));
  // The highest generation, its record and its detach record, in one round trip when the
  // catalog's hint is right (the usual case); claim rounds' first reads come with them.
  const { generation: g, holder, detached, named, firstRound } = await probeGenerations(repo, volume, rec?.generation ?? 0, !conditional, opts);
  let tookOverFrom: string | null = null;
  if (g > 0) {
    if (!holder) {
      // The probe just read it: a store that loses sight of a new object is no ground to
      // decide who holds the volume on.
      throw new IslandError('BUSY', `generation ${g} of ${volume} was found and then read as missing; try again`, { details: { volume, generation: g } });
    }
    if (!detached && holder.host !== repo.host) {
      if (!opts.force) {
        throw new IslandError('ATTACHED_ELSEWHERE', `volume ${volume} is attached on host ${holder.host} (generation ${g}); detach it there, or fence that host and attach with --force`, { details: { volume, host: holder.host, generation: g } });
      }
      tookOverFrom = holder.host;
    }
  }
  // After a detach (or on a new volume) nothing more is committed under generations <= g:
  // the detach record is written after the final snapshot's link. The head is then read
  // while the claim runs, and used only once the claim is won. Otherwise (a forced
  // attach, or this host's own attach that never detached) the holder may still commit
  // until g + 1 exists, so the head is read after the claim.
  // A clean detach names the chain's end (heads/<volume>/<g>): proved in one round trip, it
  // spares the walk, whose cost grows with the history; otherwise the walk decides.
  const early = g === 0 || detached !== undefined ? settle(headAfterDetach(repo, volume, g, named, opts)) : undefined;
  const now = repo.now();
  const lease: Lease = { volume, host: repo.host, generation: g + 1, created: now, expires: now + FOREVER_MS };
  if (conditional) {
    if (!(await repo.claimGeneration(lease, opts))) {
      throw new IslandError('BUSY', `another host attached ${volume} at the same moment (generation ${g + 1}); try again`, { details: { volume, generation: g + 1 } });
    }
  } else {
    warnClaimRounds(repo);
    await claimByRounds(repo, lease, opts, { hosts: hostsEarly ? unsettle(await hostsEarly) : undefined, firstRound });
  }
  let head: Head;
  try {
    head = early ? unsettle(await early) : await resolveHead(repo, volume, g + 1, opts);
  } catch (err) {
    // Nothing was written under g + 1: hand it back, so the volume is not left held by a
    // host that could not attach it (another host, or this one after fsck --repair, may).
    // The chain's end is what generation g left: its head record goes forward, so the next
    // attach meets the same evidence instead of a walk that no longer sees it.
    await releaseGeneration(repo, volume, g + 1, opts, detached !== undefined ? named : undefined).catch(() => undefined);
    throw err;
  }
  // The restore base's tree root and the path to cluster 0 (the image header, the first
  // thing a reader asks for) go into the node cache while the caller sets up.
  if (head.live) lookup(manifestTree(head.live), 0, repo.nodeReader()).catch(() => undefined);
  // The catalog record is a hint for the next reader: written beside the caller's set-up.
  const catalog = rec ? repo.putVolume({ ...rec, status: 'attached', host: repo.host, generation: g + 1, revision: rec.revision + 1 }, opts) : Promise.resolve();
  if (opts.catalogBeside) catalog.catch(() => undefined); // the caller awaits it
  else await catalog;
  return { generation: g + 1, head, base: head.live, tookOverFrom, claim: conditional ? 'conditional-put' : 'claim-rounds', catalog };
}

/** The head after generation g detached: the one its head record names once proved, else the walk's. */
async function headAfterDetach(repo: Repository, volume: string, g: number, named: Manifest | undefined, opts: AttachOptions): Promise<Head> {
  return named ? resolveHeadNamed(repo, volume, named, g + 1, opts) : resolveHead(repo, volume, g + 1, opts);
}

type Settled<T> = { ok: true; value: T } | { ok: false; err: unknown };

/** A promise that never rejects (a result read later, or never). */
function settle<T>(p: Promise<T>): Promise<Settled<T>> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (err: unknown) => ({ ok: false as const, err }),
  );
}

function unsettle<T>(s: Settled<T>): T {
  if (!s.ok) throw s.err;
  return s.value;
}

/**
 * The highest generation of a volume (docs/protocols.md, "Attach" step 1) with its record
 * and detach record. The hint's generation, the next one and the hint's detach record are
 * read at once; when the hint is the highest that is all. Otherwise the probe steps back
 * while the hinted record is missing and forward while the next one exists, as
 * highestGeneration does, and reads the two records of the generation it stops at.
 */
async function probeGenerations(repo: Repository, volume: string, hint: number, claimRounds: boolean, opts: OpOptions): Promise<Probe> {
  const h = Math.max(0, hint);
  const [atHint, next, detachedAtHint, namedAtHint, ownClaim] = await Promise.all([
    h > 0 ? repo.getGeneration(volume, h, opts) : Promise.resolve(undefined),
    repo.getGeneration(volume, h + 1, opts),
    h > 0 ? repo.getDetached(volume, h, opts) : Promise.resolve(undefined),
    h > 0 ? headRecord(repo, volume, h, opts) : Promise.resolve(undefined),
    claimRounds ? repo.getClaim(volume, h + 1, 0, repo.host, opts) : Promise.resolve(undefined),
  ]);
  if ((h === 0 || atHint) && !next) {
    return { generation: h, holder: atHint, detached: detachedAtHint, named: namedAtHint, firstRound: claimRounds ? { claimedBefore: ownClaim !== undefined } : undefined };
  }
  const g = await highestGeneration(repo, volume, h, opts);
  if (g === 0) return { generation: 0, holder: undefined, detached: undefined, named: undefined, firstRound: undefined };
  const [holder, detached, named] = await Promise.all([repo.getGeneration(volume, g, opts), repo.getDetached(volume, g, opts), headRecord(repo, volume, g, opts)]);
  return { generation: g, holder, detached, named, firstRound: undefined };
}

interface Probe {
  generation: number;
  holder: Lease | undefined;
  detached: Lease | undefined;
  /** The head record of that generation: a hint (a damaged one is no hint). */
  named: Manifest | undefined;
  /**
   * Claim rounds: the reads of round 0 of generation + 1 made with the probe (that
   * generation was read as not won, and whether this host had claimed that round),
   * when the hint was the highest generation.
   */
  firstRound: FirstRound | undefined;
}

interface FirstRound {
  claimedBefore: boolean;
}

/** A head record that does not decode is ignored: the walk decides instead. */
function headRecord(repo: Repository, volume: string, g: number, opts: OpOptions): Promise<Manifest | undefined> {
  return repo.getHeadRecord(volume, g, opts).catch((err: unknown) => {
    if (codeOf(err) === 'FORMAT_CORRUPT' || codeOf(err) === 'HASH_MISMATCH' || codeOf(err) === 'FORMAT_UNSUPPORTED' || codeOf(err) === 'AUTH_FAILED') return undefined;
    throw err;
  });
}

const warned = new Set<string>();

/** Say once per store, loudly, that exclusivity now rests on assumptions the store does not enforce. */
function warnClaimRounds(repo: Repository): void {
  const what = repo.store.description;
  if (warned.has(what)) return;
  warned.add(what);
  process.emitWarning(
    `${what} has no create-if-absent (conditional PUT): attach is exclusive only if every host that attaches volumes here is registered (hosts/<host>) and listed before it contends, and the store reads a new object right after its write (docs/protocols.md, "Attach without create-if-absent")`,
    { code: 'ISLAND_NO_CONDITIONAL_PUT' },
  );
}

function busy(volume: string, n: number, why: string, details: Record<string, unknown> = {}): IslandError {
  return new IslandError('BUSY', `another host is attaching ${volume} (generation ${n}): ${why}; try again`, { details: { volume, generation: n, ...details } });
}

/**
 * Win generation l.generation on a store without create-if-absent, or throw BUSY.
 * The steps and the race each one closes are numbered in docs/protocols.md
 * ("Attach without create-if-absent"); the comments below carry the same numbers.
 */
async function claimByRounds(repo: Repository, l: Lease, opts: AttachOptions, early: { hosts: string[] | undefined; firstRound: FirstRound | undefined }): Promise<void> {
  const { volume, generation: n } = l;
  const sleep = opts.sleep ?? realSleep;
  const random = opts.random ?? Math.random;
  const waitMs = opts.verdictWaitMs ?? DEFAULT_VERDICT_WAIT_MS;
  // 1. register, and contend only once this host is listed among the registered hosts.
  let hosts = early.hosts ?? (await repo.listHosts(opts));
  if (!hosts.includes(repo.host)) {
    await repo.registerHost(opts);
    hosts = await repo.listHosts(opts);
    if (!hosts.includes(repo.host)) throw busy(volume, n, `host ${repo.host} registered but is not listed yet`);
  }
  for (let r = 0; r < MAX_CLAIM_ROUNDS; r++) {
    // 2. a generation already won ends the attempt (the caller starts again from g).
    // 3. a round this host took part in before (an earlier, abandoned attempt) is lost,
    //    but, like any lost round, passed only once the others' verdicts are known (6).
    //    Both are reads before this round's claim: made at once.
    //    Round 0's were made with the generation probe when its hint was right.
    let before: boolean;
    if (r === 0 && early.firstRound) before = early.firstRound.claimedBefore;
    else {
      const [won, claim] = await Promise.all([repo.getGeneration(volume, n, opts), repo.getClaim(volume, n, r, repo.host, opts)]);
      if (won) throw busy(volume, n, 'another host won it');
      before = claim !== undefined;
    }
    // 4. claim, then read the claim of every other contender this round: every read
    //    starts after the claim's PUT returned, all at once; the claimants only the
    //    listing shows are read as soon as it answers.
    if (!before) await repo.putClaim(l, r, opts);
    const claimed = (h: string): Promise<boolean> => repo.getClaim(volume, n, r, h, opts).then((c) => c !== undefined);
    const registered = [...new Set(hosts)].filter((h) => h !== repo.host);
    const [listed, registeredSeen] = await Promise.all([repo.listClaimants(volume, n, r, opts), Promise.all(registered.map(claimed))]);
    const extra = [...new Set(listed)].filter((h) => h !== repo.host && !registered.includes(h));
    const extraSeen = await Promise.all(extra.map(claimed));
    const seen = [...registered.filter((_, i) => registeredSeen[i]), ...extra.filter((_, i) => extraSeen[i])].sort();
    // 5. alone in a round this host had not claimed before: it won generation n. Only
    //    the winner writes its record.
    if (!before && seen.length === 0) {
      await repo.putGeneration(l, opts);
      return;
    }
    // 6. lost: say so, then learn every seen contender's verdict before moving on.
    if (!before || !(await repo.getClaimLost(volume, n, r, repo.host, opts))) await repo.putClaimLost(l, r, opts);
    for (const h of seen) {
      const deadline = repo.now() + waitMs;
      for (;;) {
        if (await repo.getClaimLost(volume, n, r, h, opts)) break;
        if (await repo.getGeneration(volume, n, opts)) throw busy(volume, n, `host ${h} won it`, { host: h });
        if (repo.now() >= deadline) {
          // A contender that never decides has crashed mid-claim: only an operator who
          // fenced it (--force) may count it as lost; else the volume stays unattachable.
          if (opts.force) break;
          throw busy(volume, n, `host ${h} claimed it and has not said whether it won (if ${h} is down and fenced, attach with --force)`, { host: h });
        }
        await sleep(VERDICT_POLL_MS, opts.signal);
      }
    }
    // 7. every seen contender lost too: back off at random and try the next round.
    await sleep(Math.floor(random() * ROUND_BACKOFF_MS), opts.signal);
  }
  throw busy(volume, n, `no host won in ${MAX_CLAIM_ROUNDS} rounds`);
}

/**
 * Mark generation g ended cleanly (its chain links are all written). `head`, when the
 * caller knows it, is the chain's end as this generation leaves it (its final snapshot,
 * or the head its attach found when it committed nothing): written as the head record
 * beside the detach record, so the next attach can skip the walk. Without it the next attach walks.
 */
export async function releaseGeneration(repo: Repository, volume: string, generation: number, opts: OpOptions = {}, head?: Manifest | null): Promise<void> {
  const now = repo.now();
  // Both at once: the head record is only ever read beside its detach record, and either
  // alone is safe (no detach record: the volume stays held; no head record: a walk).
  await Promise.all([
    head ? repo.putHeadRecord(generation, head, opts) : undefined,
    repo.putDetached({ volume, host: repo.host, generation, created: now, expires: now + FOREVER_MS }, opts),
  ]);
  // On a store without create-if-absent the registered hosts are listed (claim rounds,
  // step 1) beside the catalog and generation reads: a listing is the slowest request.
  const hostsEarly = settle(repo.store.conditionalPut(opts).then((c) => (c ? undefined : repo.listHosts(opts))));
  const rec = await repo.getVolume(volume, opts);
  if (rec && rec.generation === generation) {
    await repo.putVolume({ ...rec, status: 'available', host: null, revision: rec.revision + 1 }, opts);
  }
}
