/**
 * A lost or damaged chain link or manifest never rolls a volume back silently. Three
 * snapshots are committed through the real repository code; then the newest one's chain
 * link is deleted, its manifest is deleted, or its chain link is corrupted. Attach either
 * still finds the newest snapshot (its manifest, the commit point, stands in for a lost or
 * damaged link, and the link is named) or refuses naming the object; fsck reports an error
 * (not a clean store) and never offers the newest snapshot's packs to --prune-orphans; and
 * fsck --repair restores the object, so attach finds the newest snapshot through the chain.
 * A manifest lost with its link is found through the head record the detach left.
 *
 * Runs on the embedded directory store, and also on Swift when ISLAND_TEST_SWIFT names one.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { codeOf, IslandError } from '../../src/errors.js';
import type { Manifest } from '../../src/format/records.js';
import { runFsck, type FsckReport } from '../../src/fsck/check.js';
import { acquireGeneration, releaseGeneration } from '../../src/repo/attach.js';
import { commitSnapshot } from '../../src/repo/commit.js';
import { collectGarbage } from '../../src/repo/gc.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { deleteSnapshot, resolveHead } from '../../src/repo/snapshots.js';
import { FsStore } from '../../src/store/fs.js';
import { S3Store } from '../../src/store/s3.js';
import type { ObjectStore } from '../../src/store/types.js';

const C = 64 * 1024;
const CLUSTERS = 16;
const VOLUME = 'vol';

interface Fixture {
  store: ObjectStore;
  repo: Repository;
  snaps: Manifest[];
}

type StoreFactory = (t: Test) => Promise<ObjectStore>;

const factories: [string, StoreFactory][] = [
  [
    'fs',
    async (t) => {
      const dir = await mkdtemp(join(tmpdir(), 'island-lost-chain-'));
      t.teardown(() => rm(dir, { recursive: true, force: true }));
      return new FsStore(dir);
    },
  ],
];
if (process.env.ISLAND_TEST_SWIFT) {
  const swift = JSON.parse(await readFile(process.env.ISLAND_TEST_SWIFT, 'utf8')) as ConstructorParameters<typeof S3Store>[0];
  let n = 0;
  factories.push([
    'swift',
    async (t) => {
      const s = new S3Store({ ...swift, bucket: `lost-chain-${process.pid}-${Date.now().toString(36)}-${n++}` });
      t.teardown(() => s.close());
      return s;
    },
  ]);
}

/** Three snapshots of one volume, each writing two clusters of its own, then a clean detach. */
async function threeSnapshots(t: Test, make: StoreFactory): Promise<Fixture> {
  const store = await make(t);
  const repo = new Repository(store, { host: 'host-a' });
  const g = (await acquireGeneration(repo, VOLUME)).generation;
  const snaps: Manifest[] = [];
  let parent: Manifest | null = null;
  for (let i = 0; i < 3; i++) {
    const changes = [i * 2, i * 2 + 1].map((cluster) => ({ cluster, data: Buffer.alloc(C, 0x10 + i * 2 + (cluster & 1)) }));
    parent = await commitSnapshot(repo, { volume: VOLUME, generation: g, parent, imageLength: CLUSTERS * C, clusterSize: C, consistency: 'crash', changes, windowMs: 3_600_000 });
    snaps.push(parent);
  }
  // A clean detach, naming its final snapshot (the head record).
  await releaseGeneration(repo, VOLUME, g, {}, parent);
  return { store, repo, snaps };
}

/** Whole-store fsck; grace 0 so that every unreferenced pack counts as an orphan. */
function fsck(f: Fixture, repair?: { pruneOrphans?: boolean }): Promise<FsckReport> {
  return runFsck(f.repo, { graceMs: 0, ...(repair ? { repair } : {}) });
}

async function refusal(p: Promise<unknown>): Promise<IslandError> {
  try {
    await p;
  } catch (err) {
    return err as IslandError;
  }
  throw new Error('expected a refusal');
}

const packKeys = (m: Manifest): string[] => m.packs.map((p) => [keys.pack('data', p), keys.pack('metadata', p)]).flat();

async function existingPacks(store: ObjectStore, m: Manifest): Promise<number> {
  let n = 0;
  for (const k of packKeys(m)) if (await store.head(k)) n++;
  return n;
}

for (const [name, make] of factories) {
  t.test(`${name}: a lost chain link is stepped over through its manifest, reported by fsck, and rebuilt from it`, async (t) => {
    const f = await threeSnapshots(t, make);
    const [, s2, s3] = f.snaps as [Manifest, Manifest, Manifest];
    const linkKey = keys.link(VOLUME, s2.id, s3.generation);
    t.equal((await fsck(f)).exitCode, 0, 'clean before the damage');
    await f.store.delete(linkKey);

    // The manifest is the commit point and the link its index: the walk steps over the gap.
    const head = await resolveHead(f.repo, VOLUME, s3.generation);
    t.equal(head.head?.id, s3.id, 'resolveHead still finds the newest snapshot through its manifest');
    t.same(head.unlinked, [{ key: linkKey, snapshot: s3.id, why: 'lost' }], 'and names the link it stepped over');

    const r = await fsck(f);
    t.equal(r.exitCode, 4, 'fsck reports an error, not a clean store');
    const found = r.findings.find((x) => x.key === linkKey);
    t.equal(found?.type, 'missing-object', `the lost link is a finding: ${JSON.stringify(r.findings)}`);
    t.equal(found?.severity, 'error');
    t.same(found?.snapshots, [s3.id]);

    const fixed = await fsck(f, {});
    t.equal(fixed.exitCode, 1, `errors found and all corrected: ${JSON.stringify(fixed.findings)}`);
    t.equal(fixed.findings.find((x) => x.key === linkKey)?.repaired, true);
    t.equal((await fsck(f)).exitCode, 0, 'clean again');
    const again = await acquireGeneration(f.repo, VOLUME);
    t.equal(again.base?.id, s3.id, 'attach finds the newest snapshot');
    t.same(again.head.unlinked, [], 'through the rebuilt link');
  });

  t.test(`${name}: a lost manifest is refused, its packs are kept, and it is rewritten from its link`, async (t) => {
    const f = await threeSnapshots(t, make);
    const [, s2, s3] = f.snaps as [Manifest, Manifest, Manifest];
    const manifestKey = keys.manifest(VOLUME, s3.id);
    const own = await existingPacks(f.store, s3);
    t.ok(own > 0, 'the newest snapshot wrote packs of its own');
    await f.store.delete(manifestKey);

    const att = await refusal(acquireGeneration(f.repo, VOLUME));
    t.equal(codeOf(att), 'HEAD_UNCERTAIN', `attach refuses: ${att.message}`);
    t.match(att.message, manifestKey, 'naming the missing manifest');
    const forced = await resolveHead(f.repo, VOLUME, s3.generation + 5, { allowRollback: true });
    t.equal(forced.live?.id, s2.id, 'an explicit allowRollback restores the older snapshot');

    const r = await fsck(f);
    t.equal(r.exitCode, 4, 'fsck reports an error');
    const found = r.findings.find((x) => x.key === manifestKey);
    t.equal(found?.type, 'missing-object', `the lost manifest is a finding: ${JSON.stringify(r.findings)}`);
    t.same(found?.snapshots, [s3.id]);
    t.match(found?.message, 'only copy', 'it says the packs hold the newest data');
    const orphans = r.findings.filter((x) => x.type === 'orphan');
    t.same(orphans.filter((o) => packKeys(s3).includes(o.key)), [], 'the newest snapshot\'s packs are not offered as orphans');
    t.notOk(r.findings.some((x) => /prune-orphans/.test(x.repair) && packKeys(s3).includes(x.key)), 'nothing suggests pruning them');

    const fixed = await fsck(f, { pruneOrphans: true });
    t.equal(await existingPacks(f.store, s3), own, '--prune-orphans kept every pack of the newest snapshot');
    t.equal(fixed.findings.find((x) => x.key === manifestKey)?.repaired, true, `the manifest is rewritten from its link: ${JSON.stringify(fixed.findings)}`);
    t.equal(fixed.exitCode, 1);
    t.equal((await fsck(f)).exitCode, 0, 'clean again');
    const again = await acquireGeneration(f.repo, VOLUME);
    t.equal(again.base?.id, s3.id, 'attach finds the newest snapshot again');
  });

  t.test(`${name}: a manifest lost with its link is refused through the head record, and rewritten from it`, async (t) => {
    const f = await threeSnapshots(t, make);
    const [, s2, s3] = f.snaps as [Manifest, Manifest, Manifest];
    const manifestKey = keys.manifest(VOLUME, s3.id);
    const own = await existingPacks(f.store, s3);
    await f.store.delete(manifestKey);
    await f.store.delete(keys.link(VOLUME, s2.id, s3.generation));
    t.equal((await resolveHead(f.repo, VOLUME, s3.generation)).live?.id, s2.id, 'the walk alone would roll back to the snapshot before');

    const att = await refusal(acquireGeneration(f.repo, VOLUME));
    t.equal(codeOf(att), 'HEAD_UNCERTAIN', `attach refuses: ${att.message}`);
    t.match(att.message, keys.head(VOLUME, s3.generation), 'naming the head record');

    const r = await fsck(f);
    t.equal(r.exitCode, 4, 'fsck reports an error');
    const found = r.findings.find((x) => x.key === manifestKey);
    t.match(found?.message, 'head record', `the lost manifest is a finding: ${JSON.stringify(r.findings)}`);
    t.same(r.findings.filter((x) => x.type === 'orphan' && packKeys(s3).includes(x.key)), [], 'its packs are not orphans');

    const fixed = await fsck(f, { pruneOrphans: true });
    t.equal(await existingPacks(f.store, s3), own, 'every pack of the newest snapshot kept');
    t.equal(fixed.findings.find((x) => x.key === manifestKey)?.repaired, true, `rewritten from the head record: ${JSON.stringify(fixed.findings)}`);
    const linkFix = await fsck(f, {});
    t.equal(linkFix.findings.find((x) => x.key === keys.link(VOLUME, s2.id, s3.generation))?.repaired, true, 'the next repair rewrites its link');
    t.equal((await fsck(f)).exitCode, 0, 'clean again');
    const again = await acquireGeneration(f.repo, VOLUME);
    t.equal(again.base?.id, s3.id, 'attach finds the newest snapshot');
  });

  t.test(`${name}: a corrupt chain link does not block attach, is named, and is rebuilt by fsck --repair`, async (t) => {
    const f = await threeSnapshots(t, make);
    const [, s2, s3] = f.snaps as [Manifest, Manifest, Manifest];
    const linkKey = keys.link(VOLUME, s2.id, s3.generation);
    const bytes = await f.store.get(linkKey);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 40) ^ 0x5a, bytes.length - 40);
    await f.store.put(linkKey, bytes);

    const walked = await resolveHead(f.repo, VOLUME, s3.generation);
    t.equal(walked.head?.id, s3.id, 'the walk is not blocked: the manifest at that place stands in for the link');
    t.same(walked.unlinked, [{ key: linkKey, snapshot: s3.id, why: 'damaged' }], 'and the damaged link is named');
    // After a clean detach the attach proves the named head without walking the links below it.
    const att = await acquireGeneration(f.repo, VOLUME);
    t.equal(att.base?.id, s3.id, 'attach is not blocked');
    await releaseGeneration(f.repo, VOLUME, att.generation, {}, att.head.head);

    const r = await fsck(f);
    t.equal(r.exitCode, 4);
    t.ok(r.findings.some((x) => x.key === linkKey && x.severity === 'error'), `the corrupt link is an error: ${JSON.stringify(r.findings)}`);
    const fixed = await fsck(f, {});
    t.equal(fixed.exitCode, 1, `corrected: ${JSON.stringify(fixed.findings)}`);
    t.equal((await fsck(f)).exitCode, 0, 'clean again');
    const again = await acquireGeneration(f.repo, VOLUME);
    t.equal(again.base?.id, s3.id, 'attach finds the newest snapshot again');
    t.same(again.head.unlinked, [], 'through the rebuilt link');
  });

  t.test(`${name}: GC keeps the packs of a snapshot whose manifest is lost while its chain link remains`, async (t) => {
    const f = await threeSnapshots(t, make);
    const s3 = f.snaps[2] as Manifest;
    const own = await existingPacks(f.store, s3);
    await f.store.delete(keys.manifest(VOLUME, s3.id));
    await collectGarbage(f.repo, { graceMs: 0 });
    t.equal(await existingPacks(f.store, s3), own, 'every pack of the snapshot survives GC (its link stands in for the manifest)');
    const fixed = await fsck(f, {});
    t.equal(fixed.exitCode, 1, 'fsck --repair rewrites the manifest from the link');
    const again = await acquireGeneration(f.repo, VOLUME);
    t.equal(again.base?.id, s3.id, 'and attach restores the newest snapshot, whole');
  });

  t.test(`${name}: a deleted newest snapshot that GC collected is neither refused nor reported`, async (t) => {
    const f = await threeSnapshots(t, make);
    const [, s2, s3] = f.snaps as [Manifest, Manifest, Manifest];
    await deleteSnapshot(f.repo, VOLUME, s3.id);
    // A lagging listing (Swift) can hide packs from one GC: it then keeps the manifest and
    // the tombstone until a later GC has deleted the packs.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const gc = await collectGarbage(f.repo, { graceMs: 0 });
      if (gc.releasedDeferred === 0 || Date.now() > deadline) break;
      t.ok(await f.store.head(keys.tombstone(s3.id)), 'a deferred snapshot keeps its tombstone');
    }
    t.notOk(await f.store.head(keys.manifest(VOLUME, s3.id)), 'GC removed its manifest');
    t.ok(await f.store.head(keys.link(VOLUME, s2.id, s3.generation)), 'and kept its link');
    const r = await fsck(f);
    t.equal(r.exitCode, 0, `a collected snapshot is no lost manifest: ${JSON.stringify(r.findings)}`);
    const att = await acquireGeneration(f.repo, VOLUME);
    t.equal(att.base?.id, s2.id, 'attach restores the snapshot before it, as deleting the newest one asked');
  });

  t.test(`${name}: a corrupt chain link with no manifest to stand in for it refuses attach, naming it`, async (t) => {
    const f = await threeSnapshots(t, make);
    const [, s2, s3] = f.snaps as [Manifest, Manifest, Manifest];
    const linkKey = keys.link(VOLUME, s2.id, s3.generation);
    const bytes = await f.store.get(linkKey);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 40) ^ 0x5a, bytes.length - 40);
    await f.store.put(linkKey, bytes);
    await f.store.delete(keys.manifest(VOLUME, s3.id));
    const att = await refusal(acquireGeneration(f.repo, VOLUME));
    t.equal(codeOf(att), 'HEAD_UNCERTAIN', `attach refuses: ${att.message}`);
    t.match(att.message, linkKey, 'naming the corrupt link');
    t.match(att.message, 'fsck --repair', 'and the ways out');
    const forced = await resolveHead(f.repo, VOLUME, s3.generation + 5, { allowRollback: true });
    t.equal(forced.live?.id, s2.id, 'an explicit allowRollback takes what can be proved');
    t.equal((await fsck(f)).exitCode, 4, 'fsck reports it');
  });
}
