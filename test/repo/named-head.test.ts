/**
 * The head a clean detach names (heads/<volume>/<g>): an attach after it reads the same
 * objects whatever the history's length, and it falls back to the walk, with the walk's
 * answer, whenever the named head cannot be proved (a child link, a manifest committed
 * after it whose link was lost, a tombstone, a damaged record, a record naming an older
 * snapshot). On the embedded store.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { codeOf } from '../../src/errors.js';
import type { Manifest } from '../../src/format/records.js';
import { Findings } from '../../src/fsck/findings.js';
import { readRecords } from '../../src/fsck/records.js';
import { acquireGeneration, releaseGeneration } from '../../src/repo/attach.js';
import { commitSnapshot } from '../../src/repo/commit.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { deleteSnapshot } from '../../src/repo/snapshots.js';
import { FsStore } from '../../src/store/fs.js';
import { MetricsStore } from '../../src/store/metrics.js';

const C = 64 * 1024;
const VOLUME = 'vol';

async function setup(t: Test): Promise<{ store: FsStore; repo: Repository }> {
  const dir = await mkdtemp(join(tmpdir(), 'island-named-head-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = new FsStore(dir);
  return { store, repo: new Repository(store, { host: 'host-a' }) };
}

function commit(repo: Repository, generation: number, parent: Manifest | null, fill: number): Promise<Manifest> {
  return commitSnapshot(repo, { volume: VOLUME, generation, parent, imageLength: 4 * C, clusterSize: C, consistency: 'crash', changes: [{ cluster: fill % 4, data: Buffer.alloc(C, fill) }], windowMs: 3_600_000 });
}

/** `generations` attach/commit/detach cycles of `perGeneration` snapshots each; the last snapshot. */
async function history(repo: Repository, generations: number, perGeneration: number): Promise<Manifest> {
  let last: Manifest | null = null;
  for (let g = 0; g < generations; g++) {
    const att = await acquireGeneration(repo, VOLUME);
    for (let i = 0; i < perGeneration; i++) last = await commit(repo, att.generation, last, g * perGeneration + i + 1);
    await releaseGeneration(repo, VOLUME, att.generation, {}, last);
  }
  return last as Manifest;
}

/** Requests another host's attach makes (a cold repository of its own), and what it restores. */
async function attachElsewhere(store: FsStore): Promise<{ requests: number; base: string | null; generation: number }> {
  const counted = new MetricsStore(store);
  const other = new Repository(counted, { host: 'host-b' });
  const att = await acquireGeneration(other, VOLUME);
  const requests = counted.stats.requests;
  await releaseGeneration(other, VOLUME, att.generation, {}, att.head.head);
  return { requests, base: att.base?.id ?? null, generation: att.generation };
}

t.test('an attach after a clean detach reads as many objects for 40 snapshots as for 4', async (t) => {
  const short = await setup(t);
  const long = await setup(t);
  // Four generations each (no catalog record here: the generations are probed from 1).
  const a = await history(short.repo, 4, 1);
  const b = await history(long.repo, 4, 10);
  const one = await attachElsewhere(short.store);
  const forty = await attachElsewhere(long.store);
  t.equal(one.base, a.id, 'four snapshots: restores the last');
  t.equal(forty.base, b.id, 'forty snapshots: restores the last');
  t.equal(forty.requests, one.requests, `the same requests (${one.requests}) whatever the history's length (the walk reads a round per snapshot)`);
  t.ok(await long.repo.getHeadRecord(VOLUME, 4), 'the detach wrote a head record');
});

t.test('a child link of the named head sends the attach to the walk', async (t) => {
  const { store, repo } = await setup(t);
  const named = await history(repo, 2, 2);
  // A child of the named head under its own generation (what a record naming too early
  // would hide): linked, so the walk takes it.
  const child = await commit(repo, named.generation, named, 9);
  t.equal((await attachElsewhere(store)).base, child.id);
});

t.test('a manifest committed after the named head, its link lost, is found as the walk finds it', async (t) => {
  const { store, repo } = await setup(t);
  const named = await history(repo, 2, 2);
  const child = await commit(repo, named.generation, named, 9);
  await store.delete(keys.link(VOLUME, named.id, named.generation));
  t.equal((await attachElsewhere(store)).base, child.id);
});

t.test('a deleted named head restores the newest snapshot before it', async (t) => {
  const { store, repo } = await setup(t);
  const named = await history(repo, 2, 2);
  await deleteSnapshot(repo, VOLUME, named.id);
  t.equal((await attachElsewhere(store)).base, named.parent);
});

t.test('a record naming an older snapshot, or a damaged one, changes nothing', async (t) => {
  const { store, repo } = await setup(t);
  const last = await history(repo, 2, 3);
  const older = (await repo.getManifest(VOLUME, last.parent as string)) as Manifest;
  await repo.putHeadRecord(2, older);
  t.equal((await attachElsewhere(store)).base, last.id, 'an older named head has a child link: the walk decides');
  const g = 3;
  const key = keys.head(VOLUME, g);
  const bytes = await store.get(key);
  bytes.writeUInt8(bytes.readUInt8(24) ^ 1, 24);
  await store.put(key, bytes);
  t.equal((await attachElsewhere(store)).base, last.id, 'a damaged head record is no hint');
  const findings = new Findings();
  await readRecords(repo, findings);
  t.ok(findings.all().some((f) => f.key === key), 'fsck reports the damaged head record');
});

t.test('without a detach record the head record is not used', async (t) => {
  const { store, repo } = await setup(t);
  const named = await history(repo, 1, 2);
  // Generation 2 committed on top and wrote a head record naming the older snapshot, then
  // crashed before its detach record: a forced attach must walk.
  const att = await acquireGeneration(repo, VOLUME);
  const newer = await commit(repo, att.generation, named, 7);
  await repo.putHeadRecord(att.generation, named);
  await store.delete(keys.link(VOLUME, named.id, att.generation));
  const other = new Repository(store, { host: 'host-b' });
  const forced = await acquireGeneration(other, VOLUME, { force: true });
  t.equal(forced.base?.id, newer.id);
});

t.test('a named head whose manifest and link are both lost, its packs still there, is refused, not rolled back', async (t) => {
  const { store, repo } = await setup(t);
  const last = await history(repo, 2, 3);
  // Store damage: the final snapshot's manifest and chain link are gone; no tombstone names it.
  await store.delete(keys.manifest(VOLUME, last.id));
  await store.delete(keys.link(VOLUME, last.parent, last.generation));
  const other = new Repository(store, { host: 'host-b' });
  const err = await acquireGeneration(other, VOLUME).catch((e: unknown) => e);
  t.equal(codeOf(err), 'HEAD_UNCERTAIN', 'the walk alone would restore the snapshot before it');
  t.match((err as Error).message, keys.head(VOLUME, 2));
  t.ok(await other.getDetached(VOLUME, 3), 'generation 3 is released');
  const rolled = await acquireGeneration(other, VOLUME, { allowRollback: true });
  t.equal(rolled.base?.id, last.parent, 'allowRollback restores what can be proved');
  t.equal(rolled.head.uncertain.length, 1, 'and says what it overrode');
});

t.test('a named head deleted and collected (no manifest, no tombstone, packs gone) is no evidence', async (t) => {
  const { store, repo } = await setup(t);
  const last = await history(repo, 2, 3);
  // What GC leaves of a deleted snapshot once its packs went: no manifest, tombstone removed.
  for (const p of last.packs) {
    await store.delete(keys.pack('data', p)).catch(() => undefined);
    await store.delete(keys.pack('metadata', p)).catch(() => undefined);
  }
  await store.delete(keys.manifest(VOLUME, last.id));
  t.equal((await attachElsewhere(store)).base, last.parent);
});
