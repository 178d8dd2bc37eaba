/**
 * resolveHead finds the newest snapshot when a chain link is lost or damaged but the
 * manifest it indexes is there, refuses when it cannot prove the chain reached the newest
 * snapshot, and only then: a fork lost by a lower generation, a retried commit, a deleted
 * newest snapshot and one already collected by GC are not evidence of anything newer.
 * On the embedded store.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { codeOf, type IslandError } from '../../src/errors.js';
import type { Manifest } from '../../src/format/records.js';
import { acquireGeneration, releaseGeneration } from '../../src/repo/attach.js';
import { commitSnapshot } from '../../src/repo/commit.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { deleteSnapshot, resolveHead } from '../../src/repo/snapshots.js';
import { FsStore } from '../../src/store/fs.js';

const C = 64 * 1024;
const VOLUME = 'vol';

async function setup(t: Test): Promise<{ store: FsStore; repo: Repository }> {
  const dir = await mkdtemp(join(tmpdir(), 'island-head-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = new FsStore(dir);
  return { store, repo: new Repository(store, { host: 'host-a' }) };
}

function commit(repo: Repository, generation: number, parent: Manifest | null, fill: number): Promise<Manifest> {
  return commitSnapshot(repo, { volume: VOLUME, generation, parent, imageLength: 4 * C, clusterSize: C, consistency: 'crash', changes: [{ cluster: fill % 4, data: Buffer.alloc(C, fill) }], windowMs: 3_600_000 });
}

t.test('a fork lost by the lower generation is not evidence of a newer head', async (t) => {
  const { repo } = await setup(t);
  const g1 = (await acquireGeneration(repo, VOLUME)).generation;
  const s1 = await commit(repo, g1, null, 1);
  const g2 = (await acquireGeneration(repo, VOLUME)).generation;
  const winner = await commit(repo, g2, s1, 3);
  // What a fenced writer of generation 1 that raced the fencing check leaves: a manifest on
  // s1, and (lost here) no chain link. It lost to generation 2 and is nothing newer.
  const loser: Manifest = { ...winner, id: repo.ulid(), generation: g1 };
  await repo.putManifest(loser);
  const h = await resolveHead(repo, VOLUME, g2);
  t.equal(h.head?.id, winner.id, 'the higher generation wins');
});

t.test('a lost link of the winning generation is stepped over by its manifest, not lost to a lower one', async (t) => {
  const { repo } = await setup(t);
  const g1 = (await acquireGeneration(repo, VOLUME)).generation;
  const s1 = await commit(repo, g1, null, 1);
  const lower = await commit(repo, g1, s1, 2);
  const g2 = (await acquireGeneration(repo, VOLUME)).generation;
  const winner = await commit(repo, g2, s1, 3);
  const linkKey = keys.link(VOLUME, s1.id, g2);
  await repo.store.delete(linkKey);
  const h = await resolveHead(repo, VOLUME, g2);
  t.equal(h.head?.id, winner.id, 'the walk alone would take the lower generation\'s child');
  t.same(h.unlinked, [{ key: linkKey, snapshot: winner.id, why: 'lost' }]);
  t.ok(h.forks.some((f) => f.parent === s1.id && f.children.some((c) => c.id === lower.id)), 'the other child is a fork');
});

t.test('a damaged link with no manifest to stand in for it is refused, naming it', async (t) => {
  const { repo } = await setup(t);
  const g = (await acquireGeneration(repo, VOLUME)).generation;
  const s1 = await commit(repo, g, null, 1);
  const s2 = await commit(repo, g, s1, 2);
  const linkKey = keys.link(VOLUME, s1.id, g);
  const bytes = await repo.store.get(linkKey);
  bytes.writeUInt8(bytes.readUInt8(20) ^ 1, 20);
  await repo.store.put(linkKey, bytes);
  await repo.store.delete(keys.manifest(VOLUME, s2.id));
  const err = (await resolveHead(repo, VOLUME, g).catch((e: unknown) => e)) as IslandError;
  t.equal(codeOf(err), 'HEAD_UNCERTAIN');
  t.match(err.message, linkKey);
  const forced = await resolveHead(repo, VOLUME, g, { allowRollback: true });
  t.equal(forced.live?.id, s1.id, 'allowRollback takes what can be proved');
  t.equal(forced.uncertain.length, 1, 'and says what it overrode');
});

t.test('a commit that died between its manifest and its link is followed, and a retry of it wins', async (t) => {
  const { repo } = await setup(t);
  const g = (await acquireGeneration(repo, VOLUME)).generation;
  const s1 = await commit(repo, g, null, 1);
  const died = await commit(repo, g, s1, 2);
  await repo.store.delete(keys.link(VOLUME, s1.id, g));
  t.equal((await resolveHead(repo, VOLUME, g)).head?.id, died.id, 'the committed manifest is the head');
  const retry = await commit(repo, g, s1, 3);
  const h = await resolveHead(repo, VOLUME, g);
  t.equal(h.head?.id, retry.id, 'the retry took the link: the one that died is its same-generation sibling');
  t.same(h.unlinked, []);
});

t.test('a deleted newest snapshot, and one GC collected, roll back to the previous one without a refusal', async (t) => {
  const { repo } = await setup(t);
  const g = (await acquireGeneration(repo, VOLUME)).generation;
  const s1 = await commit(repo, g, null, 1);
  const s2 = await commit(repo, g, s1, 2);
  await releaseGeneration(repo, VOLUME, g);
  await deleteSnapshot(repo, VOLUME, s2.id);
  const h = await resolveHead(repo, VOLUME, g);
  t.equal(h.head?.id, s2.id);
  t.equal(h.live?.id, s1.id, 'a deleted snapshot is not a restore base');
  // What GC leaves of it: the chain link only (its packs, then its manifest and tombstone, are gone).
  for (const p of s2.packs) {
    await repo.store.delete(keys.pack('data', p));
    await repo.store.delete(keys.pack('metadata', p));
  }
  await repo.store.delete(keys.manifest(VOLUME, s2.id));
  await repo.store.delete(keys.tombstone(s2.id));
  const after = await resolveHead(repo, VOLUME, g);
  t.equal(after.live?.id, s1.id, 'a collected snapshot is not a lost one');
});

t.test('a snapshot whose ancestry cannot be followed is evidence', async (t) => {
  const { repo } = await setup(t);
  const g = (await acquireGeneration(repo, VOLUME)).generation;
  const s1 = await commit(repo, g, null, 1);
  // The first snapshot's manifest and link both lost, a second one committed on top of it.
  const s2 = await commit(repo, g, s1, 2);
  await repo.store.delete(keys.link(VOLUME, null, g));
  await repo.store.delete(keys.manifest(VOLUME, s1.id));
  const err = (await resolveHead(repo, VOLUME, g).catch((e: unknown) => e)) as IslandError;
  t.equal(codeOf(err), 'HEAD_UNCERTAIN', 'the walk finds nothing, but a listed manifest descends from a lost snapshot');
  t.match(err.message, s2.id);
});

t.test('a later generation built on a root whose link a same-generation retake overwrote wins', async (t) => {
  const { repo } = await setup(t);
  const g1 = (await acquireGeneration(repo, VOLUME)).generation;
  const s1 = await commit(repo, g1, null, 1);
  // Another host takes the volume over (generation 2) and builds on s1.
  const g2 = (await acquireGeneration(repo, VOLUME, { force: true })).generation;
  const b1 = await commit(repo, g2, s1, 2);
  const b2 = await commit(repo, g2, b1, 3);
  // The host of generation 1, past its fencing check before generation 2 existed, retakes
  // its snapshot in full as a root (its parent looked deleted) and writes it now: the
  // same root link name, overwritten.
  const retake: Manifest = { ...s1, id: repo.ulid(), parent: null, generation: g1 };
  await repo.putManifest(retake);
  await repo.putLink(retake);
  t.equal((await repo.getLink(VOLUME, null, g1))?.id, retake.id, 'the root link now names the retake');
  const h = await resolveHead(repo, VOLUME, g2);
  t.equal(h.head?.id, b2.id, 'generation 2\'s chain, not the lower generation\'s retake');
  t.ok(h.forks.some((f) => f.parent === null && f.children.some((c) => c.id === retake.id)), 'the retake is a fork');
});
