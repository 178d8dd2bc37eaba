/**
 * One run of the protocol simulation: the real protocol code (commit, delete, attach,
 * detach, GC) on several simulated hosts over a mem store behind the eventual-consistency
 * simulator, interleaved by a seeded scheduler that also crashes hosts. Returns the
 * invariant violations found after the run (none when the protocols hold).
 */
import type { IslandError } from '../../src/errors.js';
import type { Manifest } from '../../src/format/records.js';
import { lookup } from '../../src/format/tree.js';
import { acquireGeneration, releaseGeneration } from '../../src/repo/attach.js';
import { commitSnapshot, manifestTree, type ClusterChange, type ProtocolBreakage } from '../../src/repo/commit.js';
import { collectGarbage } from '../../src/repo/gc.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { deleteSnapshot, resolveHead } from '../../src/repo/snapshots.js';
import { ulidFactory } from '../../src/format/ulid.js';
import { EventualStore } from '../../src/store/eventual.js';
import { MemStore } from '../../src/store/mem.js';
import { listAll } from '../../src/store/types.js';
import { Rng } from '../../src/util/random.js';
import { HostStore, Scheduler } from './sim.js';

export interface SimConfig {
  graceMs: number;
  windowMs: number;
  maxListLagMs: number;
  breakage?: ProtocolBreakage;
  snapshots?: number;
}

const CLUSTER = 4096;
const CLUSTERS = 48;
const FANOUT = 16;
const VOLUME = 'vol';

type Content = (number | null)[]; // per cluster: fill byte, or null = zero/unallocated

function bytesOf(c: number): Buffer {
  return Buffer.alloc(CLUSTER, c);
}

export interface SimResult {
  violations: string[];
  committed: number;
  deleted: number;
  gcRuns: number;
  steps: number;
  forks: number;
}

export async function simulate(seed: number, cfg: SimConfig): Promise<SimResult> {
  const sched = new Scheduler(seed);
  const rng = new Rng(seed ^ 0x5eed);
  const mem = new MemStore({ now: sched.now });
  const shared = new EventualStore(mem, { seed, now: sched.now, maxListLagMs: cfg.maxListLagMs, maxStaleReadMs: 0, missProb: 0.2 });
  const repoFor = (host: string): Repository =>
    new Repository(new HostStore(shared, sched, host), {
      host,
      now: sched.now,
      ulid: ulidFactory({ now: sched.now, random: (n) => rng.bytes(n) }),
      randomId: () => rng.bytes(32),
      packTargetSize: 64 * 1024,
    });
  const oracle = new Map<string, { content: Content; manifest: Manifest }>();
  let deleted = 0;
  const deleting = new Set<string>();
  let gcRuns = 0;
  const violations: string[] = [];

  async function readContent(repo: Repository, m: Manifest): Promise<Content> {
    const out: Content = [];
    const reader = repo.nodeReader();
    for (let c = 0; c < m.tree.nClusters; c++) {
      const e = await lookup(manifestTree(m), c, reader);
      if (e.kind !== 'blob') out.push(null);
      else out.push((await repo.readBlob('data', e.loc))[0] ?? null);
    }
    return out;
  }

  async function writer(host: string, force: boolean, count: number): Promise<void> {
    const repo = repoFor(host);
    let att;
    try {
      att = await acquireGeneration(repo, VOLUME, { force });
    } catch (err) {
      const code = (err as IslandError).code;
      if (code === 'BUSY' || code === 'ATTACHED_ELSEWHERE' || code === 'HEAD_UNCERTAIN') return; // refused: a correct outcome
      throw err;
    }
    // The base an attach restores is what the walk proves on a view without lag (the
    // attach may have used the head record of a clean detach instead of the walk).
    if (!force) {
      const truth = await resolveHead(new Repository(mem, { host: 'checker', now: sched.now }), VOLUME, att.generation).catch(() => undefined);
      if (truth && truth.live?.id !== att.base?.id) violations.push(`${host} attached generation ${att.generation} restoring ${att.base?.id ?? 'nothing'} (head ${att.head.head?.id}), but the newest live snapshot is ${truth.live?.id ?? 'none'} (head ${truth.head?.id}); base deleted: ${att.base ? deleting.has(att.base.id) : '-'}`);
    }
    const gen = att.generation;
    let parent = att.base;
    let chainEnd = att.head.head;
    let content: Content = parent ? (oracle.get(parent.id)?.content ?? (await readContent(repo, parent))) : new Array<number | null>(CLUSTERS).fill(null);
    for (let i = 0; i < count; i++) {
      await sched.sleep(host, rng.int(cfg.graceMs * 2));
      const next = [...content];
      const changed = new Set<number>();
      for (let k = rng.int(6) + 1; k > 0; k--) {
        const c = rng.int(CLUSTERS);
        next[c] = rng.chance(0.15) ? null : rng.int(255) + 1;
        changed.add(c);
      }
      const full = parent === null;
      const make = (all: boolean): ClusterChange[] =>
        [...(all ? next.keys() : changed)].sort((a, b) => a - b).map((c) => ({ cluster: c, data: next[c] === null ? 'zero' : bytesOf(next[c] as number) }));
      const commit = (p: Manifest | null, all: boolean): Promise<Manifest> =>
        commitSnapshot(repo, { volume: VOLUME, generation: gen, parent: p, imageLength: CLUSTERS * CLUSTER, clusterSize: CLUSTER, fanout: FANOUT, consistency: 'crash', changes: make(all), windowMs: cfg.windowMs, breakage: cfg.breakage });
      let m: Manifest;
      try {
        try {
          m = await commit(parent, full);
        } catch (err) {
          if ((err as IslandError).code !== 'SNAPSHOT_DELETED') throw err;
          parent = null; // the parent went away: upload everything
          m = await commit(null, true);
        }
      } catch (err) {
        const code = (err as IslandError).code;
        if (code === 'FENCED') return; // another host took over: stop
        if (code === 'WINDOW_EXPIRED') continue; // the changes go into the next snapshot
        throw err;
      }
      oracle.set(m.id, { content: next, manifest: m });
      parent = m;
      chainEnd = m;
      content = next;
    }
    await releaseGeneration(repo, VOLUME, att.generation, {}, chainEnd);
  }

  async function deleter(host: string): Promise<void> {
    const repo = repoFor(host);
    for (let i = 0; i < 8; i++) {
      await sched.sleep(host, rng.int(cfg.graceMs));
      const ids = [...oracle.keys()];
      if (ids.length === 0) continue;
      const id = rng.pick(ids);
      if (deleting.has(id)) continue;
      deleting.add(id); // outcome unknown until the call returns (the host may crash in it)
      try {
        await deleteSnapshot(repo, VOLUME, id);
        deleted++;
      } catch (err) {
        if (!(await repo.getTombstone(id))) deleting.delete(id);
        const code = (err as IslandError).code;
        if (code !== 'PINNED' && code !== 'SNAPSHOT_DELETED' && code !== 'NOT_FOUND') throw err;
      }
    }
  }

  async function gc(host: string): Promise<void> {
    const repo = repoFor(host);
    for (let i = 0; i < 6; i++) {
      await sched.sleep(host, rng.int(cfg.graceMs));
      await collectGarbage(repo, { graceMs: cfg.graceMs });
      gcRuns++;
    }
  }

  const n = cfg.snapshots ?? 6;
  const actors = new Map<string, Promise<unknown>>();
  actors.set('a:writer', writer('a', false, n));
  actors.set('c:deleter', deleter('c'));
  actors.set('d:gc', gc('d'));
  // Host B takes the volume over later (after A detached, crashed, or while A still runs: a fork).
  actors.set('b:writer', sched.sleep('b', cfg.graceMs * n).then(() => writer('b', true, Math.ceil(n / 2))));
  // Host E attaches without force later still: after a clean detach it restores what the
  // head record names, proved without the walk.
  actors.set('e:writer', sched.sleep('e', cfg.graceMs * n * 2).then(() => writer('e', false, 2)));
  const crashAt = rng.chance(0.5) ? rng.int(400) : -1;
  const results = await sched.run(actors, () => {
    if (sched.steps === crashAt) sched.crash(rng.pick(['a', 'c', 'd']));
  });
  for (const [actor, r] of results) if (r !== 'ok') violations.push(`${actor} failed: ${(r as Error).message ?? String(r)}`);

  // Invariants, checked with a fresh view of the store (no scheduler, no lag).
  const check = new Repository(mem, { host: 'checker', now: sched.now });
  for (const [id, { content, manifest }] of oracle) {
    if (deleting.has(id) || (await check.getTombstone(id))) continue;
    if (!(await check.getManifest(VOLUME, id))) {
      violations.push(`snapshot ${id} committed and not deleted, but its manifest is gone`);
      continue;
    }
    try {
      const got = await readContent(check, manifest);
      const bad = got.findIndex((v, i) => v !== content[i]);
      if (bad >= 0) violations.push(`snapshot ${id}: cluster ${bad} reads ${got[bad]}, expected ${content[bad]}`);
    } catch (err) {
      violations.push(`snapshot ${id} is not restorable: ${(err as Error).message}`);
    }
  }
  const head = await resolveHead(check, VOLUME, 1000);
  const expectedForks = new Set<string>();
  const byParent = new Map<string, Set<number>>();
  for (const { manifest } of oracle.values()) {
    const k = manifest.parent ?? 'root';
    const gens = byParent.get(k) ?? new Set<number>();
    gens.add(manifest.generation);
    byParent.set(k, gens);
    if (gens.size > 1) expectedForks.add(k);
  }
  const found = new Set(head.forks.map((f) => f.parent ?? 'root'));
  // Forks on the winning chain are reported by the walk; check those it passes.
  for (const f of expectedForks) {
    const onChain = f === 'root' || [...oracle.values()].some((o) => o.manifest.id === f);
    if (onChain && !found.has(f) && head.head && isAncestor(oracle, f, head.head.id)) violations.push(`fork at ${f} not reported`);
  }
  return { violations, committed: oracle.size, deleted, gcRuns, steps: sched.steps, forks: head.forks.length };
}

function isAncestor(oracle: Map<string, { manifest: Manifest }>, anc: string, id: string): boolean {
  let at: string | null = id;
  while (at !== null) {
    const m = oracle.get(at)?.manifest;
    if (!m) return false;
    if (m.parent === anc || (anc === 'root' && m.parent === null)) return true;
    at = m.parent;
  }
  return false;
}

export interface AttachSimConfig {
  /** Hosts racing for the volume. */
  hosts: number;
  /** Attach/detach cycles each host tries. */
  rounds: number;
  /** How long an overwritten object's old bytes may still be read (last writer wins). */
  maxStaleReadMs: number;
  /** Offer the store's create-if-absent primitive to the protocol (default true). */
  conditionalPut?: boolean;
  /** A read of a new object may miss it this long after its write (default 0: read-after-write). */
  maxNewKeyReadLagMs?: number;
  /** Register every host before the run (default true), as claim rounds require. */
  registerAhead?: boolean;
}

export interface AttachSimResult {
  violations: string[];
  /** Attaches that won, over all hosts. */
  wins: number;
  /** Attaches refused (BUSY, ATTACHED_ELSEWHERE). */
  refused: number;
  /** Claim rounds some host lost (claim rounds only): how often hosts met in one round. */
  contested: number;
  steps: number;
}

/**
 * Concurrent attaches of one volume by several hosts over a store whose overwrites are
 * last-writer-wins and whose reads of an overwritten object may return the old bytes.
 * Each host attaches, holds the volume for a while, detaches, and tries again. Checks
 * that at most one host ever wins a generation and at most one holds the volume at any
 * moment (a host holds it from the return of its attach to the start of its detach).
 */
export async function simulateAttach(seed: number, cfg: AttachSimConfig): Promise<AttachSimResult> {
  const sched = new Scheduler(seed);
  const rng = new Rng(seed ^ 0xa77ac4);
  const mem = new MemStore({ now: sched.now });
  const shared = new EventualStore(mem, { seed, now: sched.now, maxListLagMs: 300, maxStaleReadMs: cfg.maxStaleReadMs, missProb: 0.2, conditionalPut: cfg.conditionalPut ?? true, maxNewKeyReadLagMs: cfg.maxNewKeyReadLagMs ?? 0 });
  const violations: string[] = [];
  const winners = new Map<number, string[]>();
  const holding = new Set<string>();
  let wins = 0;
  let refused = 0;

  async function host(name: string): Promise<void> {
    const repo = new Repository(new HostStore(shared, sched, name), { host: name, now: sched.now, randomId: () => rng.bytes(32) });
    for (let i = 0; i < cfg.rounds; i++) {
      await sched.sleep(name, rng.int(200));
      let att;
      try {
        // A short wait for verdicts makes hosts give up mid-round and come back later.
        att = await acquireGeneration(repo, VOLUME, { sleep: (ms) => sched.sleep(name, ms), random: () => rng.next(), verdictWaitMs: rng.int(600) });
      } catch (err) {
        const code = (err as IslandError).code;
        if (code === 'BUSY' || code === 'ATTACHED_ELSEWHERE') {
          refused++;
          continue;
        }
        throw err;
      }
      wins++;
      const w = winners.get(att.generation) ?? [];
      w.push(name);
      winners.set(att.generation, w);
      if (w.length > 1) violations.push(`generation ${att.generation} won by ${w.join(' and ')}`);
      if (holding.size > 0) violations.push(`${name} attached generation ${att.generation} while ${[...holding].join(', ')} held the volume`);
      holding.add(name);
      await sched.sleep(name, rng.int(300));
      holding.delete(name);
      await releaseGeneration(repo, VOLUME, att.generation);
    }
  }

  // Claim rounds need every contender registered before it contends (docs/protocols.md):
  // the hosts are registered ahead, as a deployment registers a host when it joins.
  if (!(cfg.conditionalPut ?? true) && (cfg.registerAhead ?? true)) for (let h = 0; h < cfg.hosts; h++) await mem.put(keys.host(`h${h}`), Buffer.alloc(0));
  const actors = new Map<string, Promise<unknown>>();
  for (let h = 0; h < cfg.hosts; h++) actors.set(`h${h}:attach`, host(`h${h}`));
  const results = await sched.run(actors);
  for (const [actor, r] of results) if (r !== 'ok') violations.push(`${actor} failed: ${(r as Error).message ?? String(r)}`);
  let contested = 0;
  for await (const o of listAll(mem, 'claims/')) if (o.key.includes('/lost/')) contested++;
  return { violations, wins, refused, contested, steps: sched.steps };
}
