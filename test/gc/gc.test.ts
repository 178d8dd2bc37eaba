/**
 * Deleting snapshots, pruning and GC on a real Swift, through a real daemon and CLI:
 *
 * - a history of 10 snapshots of one volume with overlapping changes, deleted in a seeded
 *   random order with GC (grace 0) after each step: every remaining snapshot restores
 *   byte-identical to the image at its seal, and the pack bytes in the store equal the
 *   bytes the remaining snapshots reach plus the reported reclaimable bytes plus the
 *   trailer entries of the live frames and one footer per live pack (src/repo/gc.ts);
 * - a GC stopped by its abort signal in the middle of the sweep, then the next GC;
 * - two GCs at once (two hosts' collectors on one store, and two requests to one daemon);
 * - prune by a retention policy, a pinned snapshot skipped, bad input.
 */
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { hex } from '../../src/format/location.js';
import { FOOTER_LEN, TRAILER_ENTRY_LEN } from '../../src/format/pack.js';
import type { Manifest } from '../../src/format/records.js';
import { collectNodeRefs, iterate } from '../../src/format/tree.js';
import { ulid } from '../../src/format/ulid.js';
import { manifestTree } from '../../src/repo/commit.js';
import { collectGarbage, type GcReport } from '../../src/repo/gc.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { listAll } from '../../src/store/types.js';
import { Rng } from '../../src/util/random.js';
import { cli, cliJson, image, makeHost, run, serve, useS3, waitFor, type Host } from '../helpers/daemon.js';
import { uniqueBucket, useSwift, type SwiftInfo } from '../helpers/swift.js';

type Tap = typeof t;

interface Sealed {
  volume: string;
  id: string;
  /** A copy of the image file taken right after the snapshot committed (nothing wrote since the seal). */
  copy: string;
}

interface Setup {
  h: Host;
  store: S3Store;
  repo: Repository;
}

async function setup(t: Tap, swift: SwiftInfo, tag: string): Promise<Setup> {
  const bucket = uniqueBucket(tag);
  const h = await makeHost(t, `${tag}-host`);
  h.env = { ISLAND_GC_GRACE: '0', ISLAND_TEST_SWITCHES: '1' };
  await useS3(h, swift, bucket);
  await serve(h);
  const store = new S3Store({ ...swift, bucket });
  t.teardown(() => store.close());
  return { h, store, repo: new Repository(store, { host: 'checker' }) };
}

async function snapshot(h: Host, volume: string, n: number): Promise<Sealed> {
  const s = ((await cliJson(h, 'snapshot', 'create', volume)).snapshots as { id: string }[])[0] as { id: string };
  const copy = join(h.dataDir, `seal-${volume}-${n}`);
  await copyFile(image(h, volume), copy);
  return { volume, id: s.id, copy };
}

/** Every remaining snapshot restores byte for byte as its image was at the seal. */
async function checkRestores(t: Tap, s: Setup, snaps: Sealed[], what: string): Promise<void> {
  // All at once: each export is a series of small range GETs, so latency dominates.
  const same = await Promise.all(
    snaps.map(async (snap) => {
      const m = await s.repo.getManifest(snap.volume, snap.id);
      if (!m) {
        t.fail(`${what}: ${snap.id} is missing`);
        return false;
      }
      const out = join(s.h.dataDir, `check-${snap.id}`);
      await exportSnapshot(s.repo, m, out);
      const ok = await run('cmp', [out, snap.copy]).then(() => true, () => false);
      if (!ok) t.fail(`${what}: ${snap.id} differs from its image at the seal`);
      return ok;
    }),
  );
  t.equal(same.filter(Boolean).length, snaps.length, `${what}: all ${snaps.length} remaining snapshots restore byte-identical`);
}

/** Frames (blobs and nodes) the snapshots reach, per pack key, each location once: walked here, not by GC. */
async function reachable(repo: Repository, manifests: Manifest[]): Promise<Map<string, Map<number, number>>> {
  const out = new Map<string, Map<number, number>>();
  const add = (key: string, offset: number, length: number): void => {
    let m = out.get(key);
    if (!m) out.set(key, (m = new Map()));
    m.set(offset, length);
  };
  for (const m of manifests) {
    const tree = manifestTree(m);
    for await (const v of collectNodeRefs(tree, repo.nodeReader())) add(keys.pack('metadata', v.ref.loc.pack), v.ref.loc.offset, v.ref.loc.length);
    for await (const r of iterate(tree, repo.nodeReader())) if (r.entry.kind === 'blob') add(keys.pack('data', r.entry.loc.pack), r.entry.loc.offset, r.entry.loc.length);
  }
  return out;
}

async function packListing(store: S3Store): Promise<Map<string, number>> {
  const sizes = new Map<string, number>();
  for (const prefix of keys.packPrefixes) for await (const o of listAll(store, prefix)) sizes.set(o.key, o.size);
  return sizes;
}

/** After a real GC with grace 0: the store holds exactly the live packs, and the report's accounting adds up. */
async function checkAccounting(t: Tap, s: Setup, remaining: Sealed[], r: GcReport, what: string): Promise<void> {
  const gone = new Set(r.deletedPackKeys);
  let listing = await packListing(s.store);
  // A Swift container listing may trail a delete for a moment: wait for it, with a deadline.
  await waitFor('the listing to drop deleted packs', async () => {
    listing = await packListing(s.store);
    return ![...listing.keys()].some((k) => gone.has(k));
  });
  const manifests = (await Promise.all(remaining.map((x) => s.repo.getManifest(x.volume, x.id)))) as Manifest[];
  const reach = await reachable(s.repo, manifests);
  let liveBytes = 0;
  let liveFrames = 0;
  for (const frames of reach.values()) {
    liveFrames += frames.size;
    for (const len of frames.values()) liveBytes += len;
  }
  let stored = 0;
  for (const size of listing.values()) stored += size;
  const unreached = [...listing.keys()].filter((k) => !reach.has(k));
  t.same(unreached, [], `${what}: no pack left that nothing reaches`);
  t.equal(r.liveBytes, liveBytes, `${what}: GC counted ${liveBytes} live bytes in ${liveFrames} frames`);
  t.equal(r.liveFrames, liveFrames, `${what}: live frames`);
  t.equal(r.livePacks, reach.size, `${what}: live packs`);
  const overhead = liveFrames * TRAILER_ENTRY_LEN + reach.size * FOOTER_LEN;
  t.equal(r.packOverheadBytes, overhead, `${what}: overhead = trailer entries of live frames + a footer per live pack`);
  t.equal(stored, liveBytes + r.reclaimableBytes + overhead, `${what}: ${stored} bytes in packs = ${liveBytes} reachable + ${r.reclaimableBytes} reclaimable + ${overhead} trailer/footer`);
  t.equal(r.packBytesTotal - r.bytesFreed, stored, `${what}: the listing before GC minus what it freed is what is left`);
  const sumTop = r.topPartlyDead.reduce((n, p) => n + p.reclaimableBytes, 0);
  t.ok(r.topPartlyDead.length <= r.partlyDeadPacks && (r.partlyDeadPacks > r.topPartlyDead.length || sumTop === r.reclaimableBytes), `${what}: ${r.partlyDeadPacks} partly dead packs, the listed ones add up`);
}

async function gc(h: Host, ...args: string[]): Promise<GcReport> {
  return (await cliJson(h, 'gc', ...args)) as unknown as GcReport;
}

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`GC tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  t.test('10 snapshots deleted in a random order, GC after each: the rest restore exactly and every pack byte is accounted for', async (t) => {
    const s = await setup(t, swift, 'gc-hist');
    const { h } = s;
    await cliJson(h, 'volume', 'create', 'hist', '--size', '64M', '--cluster-size', '64K');
    await cliJson(h, 'attach', 'hist');
    const rng = new Rng(7);
    const history: Sealed[] = [];
    for (let i = 0; i < 10; i++) {
      // Overlapping changes in the first 6 MiB: each step rewrites clusters earlier steps wrote.
      const cmds = Array.from({ length: 3 }, () => ['-c', `write -P ${1 + rng.int(250)} ${rng.int(96) * 64}K ${(1 + rng.int(8)) * 64}K`]).flat();
      await run('qemu-io', ['-t', 'none', ...cmds, image(h, 'hist')]);
      history.push(await snapshot(h, 'hist', i));
    }
    // Swift's listings lag its writes under load: a GC whose listing lacks the newest
    // packs foretells less than the next one frees. Wait until every pack the snapshots
    // wrote is listed, so the dry run and the real run below see the same packs.
    const written = new Set<string>();
    for (const snap of history) {
      const m = (await s.repo.getManifest('hist', snap.id)) as Manifest;
      for (const p of m.packs) written.add(hex(p));
    }
    await waitFor('the listing to show every pack written', async () => {
      const listed = new Set([...(await packListing(s.store)).keys()].map((k) => k.slice(k.lastIndexOf('/') + 1)));
      return [...written].every((p) => listed.has(p));
    }, 30_000);
    const order = rng.shuffle([...history]);
    const remaining = [...history];
    let partlyDeadSeen = 0;
    for (const [step, victim] of order.entries()) {
      if (victim === history.at(-1)) {
        // The snapshot the attached volume's next one builds on is not deleted while it is attached.
        const refused = await cli(h, 'snapshot', 'delete', victim.id, '--json');
        t.match(JSON.parse(refused.stdout), { error: { code: 'BUSY', details: { reason: 'parent' } } }, `step ${step}: the parent of the attached volume is kept`);
        continue;
      }
      await cliJson(h, 'snapshot', 'delete', victim.id);
      remaining.splice(remaining.indexOf(victim), 1);
      const before = await packListing(s.store);
      const dry = await gc(h, '--dry-run');
      t.same(await packListing(s.store), before, `step ${step}: a dry run deletes nothing`);
      const r = await gc(h);
      t.ok(r.dryRun === false && dry.dryRun === true, `step ${step}: reports say whether they were dry runs`);
      t.same([r.packsDeleted, r.bytesFreed, r.reclaimableBytes], [dry.packsDeleted, dry.bytesFreed, dry.reclaimableBytes], `step ${step}: the dry run foretold ${r.packsDeleted} packs, ${r.bytesFreed} bytes`);
      t.same(r.releasedSnapshots, [victim.id], `step ${step}: ${victim.id} collected`);
      partlyDeadSeen += r.partlyDeadPacks;
      await checkAccounting(t, s, remaining, r, `step ${step}`);
      await checkRestores(t, s, remaining, `step ${step}`);
    }
    t.ok(partlyDeadSeen > 0, `partly dead packs were reported along the way (${partlyDeadSeen})`);
    // The snapshot kept while the volume was attached goes with the volume.
    t.equal((await cli(h, 'detach', 'hist')).code, 0, 'detached');
    t.equal((await cli(h, 'volume', 'delete', 'hist')).code, 0, 'the volume is deleted');
    const left = (await cliJson(h, 'snapshot', 'list', 'hist')).snapshots as { id: string; deleted?: boolean }[];
    for (const sn of left) if (!sn.deleted) await cliJson(h, 'snapshot', 'delete', sn.id);
    await gc(h);
    t.equal((await packListing(s.store)).size, 0, 'with every snapshot deleted no pack is left');

    // Bad input.
    const collected = await cli(h, 'snapshot', 'delete', order[0]?.id as string);
    t.match(collected, { code: 1, stderr: /NOT_FOUND: no snapshot/ }, 'deleting a collected snapshot: NOT_FOUND');
    const unknown = await cli(h, 'snapshot', 'delete', ulid());
    t.match(unknown, { code: 1, stderr: /NOT_FOUND: no snapshot/ }, 'an unknown snapshot id: NOT_FOUND');
    for (const bad of ['not-an-id', '01ARZ3NDEKTSV4RRFFQ69G5FAVX', 'ILOU0000000000000000000000']) {
      t.match(await cli(h, 'snapshot', 'delete', bad), { code: 2, stderr: /INVALID_ARGUMENT/ }, `a malformed id ${bad} is refused`);
    }
    t.match(await cli(h, 'snapshot', 'delete'), { code: 2, stderr: /missing snapshot id/ }, 'no id at all');
    const dry = await cli(h, 'gc', '--dry-run');
    t.match(dry.stdout, /would free 0 objects, 0 B of packs/, 'a dry run says what it would free');
    t.match(dry.stdout, /partly dead: 0 packs, 0 B reclaimable/, 'and the partly dead packs');
  });

  t.test('a GC stopped midway, two GCs at once, prune with a pinned snapshot', async (t) => {
    const s = await setup(t, swift, 'gc-churn');
    const { h } = s;
    await cliJson(h, 'volume', 'create', 'churn', '--size', '16M', '--cluster-size', '64K');
    await cliJson(h, 'attach', 'churn');
    // Each snapshot rewrites the same 512 KiB: after snapshot k+1, the data snapshot k
    // wrote is dead (except the first one's qcow2 metadata clusters).
    const snaps: Sealed[] = [];
    for (let i = 0; i < 7; i++) {
      await run('qemu-io', ['-t', 'none', '-c', `write -P ${0x10 + i} 0 512K`, image(h, 'churn')]);
      snaps.push(await snapshot(h, 'churn', i));
    }
    const [s0, s1, s2, s3, s4, s5, s6] = snaps as [Sealed, Sealed, Sealed, Sealed, Sealed, Sealed, Sealed];
    t.match(await cli(h, 'snapshot', 'delete', s1.id, ulid()), { code: 1, stderr: /NOT_FOUND: no snapshot/ }, 'a list with an unknown id is refused');
    t.notOk(await s.repo.getTombstone(s1.id), 'and deletes nothing of the list');
    await cliJson(h, 'snapshot', 'delete', s1.id, s2.id, s3.id, s3.id);
    t.match(await cli(h, 'snapshot', 'delete', s1.id), { code: 1, stderr: /SNAPSHOT_DELETED: snapshot .* is already deleted/ }, 'a tombstoned snapshot: SNAPSHOT_DELETED');

    // --- killed midway -----------------------------------------------------------------
    const gcA = new Repository(s.store, { host: 'gc-a' });
    const plan = await collectGarbage(gcA, { graceMs: 0, dryRun: true });
    t.ok(plan.packsDeleted >= 3, `${plan.packsDeleted} packs to sweep`);
    const ac = new AbortController();
    const phases: string[] = [];
    const killed = collectGarbage(gcA, {
      graceMs: 0,
      sweepBatch: 1,
      signal: ac.signal,
      onProgress: (phase, done) => {
        phases.push(phase);
        if (phase === 'sweep' && done >= 1) ac.abort();
      },
    });
    await t.rejects(killed, { code: 'ABORTED', message: /stopped after deleting 1 of/ }, 'the GC stops at its signal in the middle of the sweep');
    t.ok(phases.includes('mark') && phases.includes('sweep'), `progress phases: ${[...new Set(phases)].join(', ')}`);
    const doomed = plan.deletedPackKeys;
    let after = await packListing(s.store);
    await waitFor('the deleted pack to leave the listing', async () => {
      after = await packListing(s.store);
      return doomed.some((k) => !after.has(k));
    });
    t.equal(doomed.filter((k) => !after.has(k)).length, 1, `one batch (one pack of ${doomed.length}) was deleted before the stop`);
    const list = (await cliJson(h, 'snapshot', 'list', 'churn')).snapshots as { id: string; deleted: boolean }[];
    t.same(list.filter((x) => x.deleted).map((x) => x.id).sort(), [s1.id, s2.id, s3.id].sort(), 'the released manifests and tombstones are still there (removed last)');
    await checkRestores(t, s, [s0, s4, s5, s6], 'after the stopped GC');
    const next = await gc(h);
    t.equal(next.packsDeleted, plan.packsDeleted - 1, 'the next GC sweeps the rest');
    t.same(next.releasedSnapshots.sort(), [s1.id, s2.id, s3.id].sort(), 'and collects the released snapshots');
    await checkAccounting(t, s, [s0, s4, s5, s6], next, 'after the next GC');
    await checkRestores(t, s, [s0, s4, s5, s6], 'after the next GC');

    // --- two GCs at once ---------------------------------------------------------------
    await cliJson(h, 'snapshot', 'delete', s4.id, s5.id);
    const gcB = new Repository(s.store, { host: 'gc-b' });
    const plan2 = await collectGarbage(gcA, { graceMs: 0, dryRun: true });
    const [ra, rb] = await Promise.all([collectGarbage(gcA, { graceMs: 0, sweepBatch: 1 }), collectGarbage(gcB, { graceMs: 0, sweepBatch: 1 })]);
    const swept = new Set([...ra.deletedPackKeys, ...rb.deletedPackKeys]);
    t.ok(plan2.packsDeleted > 0 && plan2.deletedPackKeys.every((k) => swept.has(k)), `two GCs at once both finish and sweep the ${plan2.packsDeleted} dead packs between them (${ra.packsDeleted} and ${rb.packsDeleted})`);
    await checkRestores(t, s, [s0, s6], 'after two GCs at once');
    const calm = await gc(h);
    t.same([calm.packsDeleted, calm.manifestsDeleted, calm.releasedSnapshots.length], [0, 0, 0], 'a GC after them finds nothing left to free');
    await checkAccounting(t, s, [s0, s6], calm, 'after two GCs at once');
    const both = await Promise.all([cli(h, 'gc', '--json'), cli(h, 'gc', '--json')]);
    t.ok(both.every((r) => r.code === 0 || /BUSY/.test(r.stdout)) && both.some((r) => r.code === 0), 'two requests to one daemon: one runs, the other runs too or is told BUSY');

    // --- prune ---------------------------------------------------------------------------
    t.match(await cli(h, 'snapshot', 'prune', 'churn'), { code: 2, stderr: /INVALID_ARGUMENT: a retention policy needs at least one/ }, 'prune without a keep rule is refused');
    t.match(await cli(h, 'snapshot', 'prune', 'churn', '--keep-last', '0'), { code: 2, stderr: /INVALID_ARGUMENT/ }, 'keep rules of 0 only are refused');
    t.match(await cli(h, 'snapshot', 'prune', 'churn', '--keep-last', 'two'), { code: 2, stderr: /INVALID_ARGUMENT: --keep-last takes a count/ }, 'a count that is not a number');
    t.match(await cli(h, 'snapshot', 'prune', 'no-such-volume', '--keep-last', '1'), { code: 1, stderr: /NOT_FOUND: no volume no-such-volume/ }, 'an unknown volume');
    t.match(await cli(h, 'snapshot', 'prune', 'Bad/Name', '--keep-last', '1'), { code: 2, stderr: /INVALID_ARGUMENT/ }, 'a malformed volume name');
    const dryPrune = await cliJson(h, 'snapshot', 'prune', 'churn', '--keep-last', '1', '--keep-daily', '3', '--dry-run');
    const ids = (xs: unknown): string[] => (xs as { id: string }[]).map((x) => x.id);
    t.same([ids(dryPrune.kept), ids(dryPrune.deleted), ids(dryPrune.skipped), dryPrune.dryRun], [[s6.id], [s0.id], [], true], 'a dry run: the newest is kept, the other would go');
    t.match((dryPrune.kept as { why: string }[])[0]?.why, /^last #1, daily \d{4}-\d\d-\d\d$/, 'kept for both rules');
    t.ok(await findSnapshot(s.repo, s0.id) && !(await s.repo.getTombstone(s0.id)), 'a dry run writes no tombstone');
    const now = Date.now();
    const pin = { id: ulid(), snapshot: s0.id, volume: 'churn', holder: 'copy' as const, host: 'elsewhere', created: now, expires: now + 3_600_000 };
    await s.repo.putPin(pin);
    t.match(await cli(h, 'snapshot', 'delete', s0.id), { code: 1, stderr: /PINNED: snapshot .* is pinned \(copy on elsewhere\)/ }, 'an explicit delete of a pinned snapshot is refused, naming the pin');
    const pinned = await cli(h, 'snapshot', 'prune', 'churn', '--keep-last', '1');
    t.equal(pinned.code, 0, 'prune succeeds with a pinned snapshot');
    t.match(pinned.stdout, new RegExp(`keep\\t${s6.id}\\t.*\\tlast #1`), 'it says what it kept and why');
    t.match(pinned.stdout, new RegExp(`skip\\t${s0.id}\\t.*PINNED: .*copy on elsewhere`), 'and skips the pinned one, naming the pin');
    t.notOk(await s.repo.getTombstone(s0.id), 'the pinned snapshot is not deleted');
    await s.repo.deletePin(pin);
    const pruned = await cliJson(h, 'snapshot', 'prune', 'churn', '--keep-last', '1');
    t.same([ids(pruned.kept), ids(pruned.deleted), ids(pruned.skipped), pruned.dryRun], [[s6.id], [s0.id], [], false], 'unpinned, it is pruned');
    const tomb = await s.repo.getTombstone(s0.id);
    t.match(tomb?.reason, /pruned \(keep last 1\)/, 'the tombstone says why');
    const human = await cli(h, 'gc');
    // The pruned snapshot shares packs with the kept one: its tombstone stays until they are gone.
    t.match(human.stdout, /^gc: freed [1-9]\d* objects, .* of packs: [1-9]\d* packs?, 1 manifest and 0 tombstones of 1 deleted snapshot, 0 stale checkpoints\n/, 'GC collects the pruned snapshot and says what it freed');
    t.match(human.stdout, /\n {2}partly dead: \d+ packs?, .* reclaimable/, 'and what partly dead packs hold');
    const final = await gc(h);
    t.same([final.releasedSnapshots, final.packsDeleted], [[], 0], 'nothing is left for the next run');
    await checkAccounting(t, s, [s6], final, 'after prune and GC');
    await checkRestores(t, s, [s6], 'after prune and GC');
  });
}
