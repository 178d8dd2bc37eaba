/**
 * GC of a deleted chain whose snapshots are released at different runs: a snapshot released
 * while its packs are still live through a later deleted snapshot (its child shares them)
 * keeps its tombstone until those packs are gone. Removing it with the manifest left
 * its chain link without manifest or tombstone once the child was collected: every later
 * GC kept its packs through the link (a lost manifest, as far as anyone can tell), and
 * attach refused the volume with HEAD_UNCERTAIN. On the memory store, with a virtual clock.
 */
import t from 'tap';
import type { Manifest } from '../../src/format/records.js';
import { acquireGeneration } from '../../src/repo/attach.js';
import { commitSnapshot } from '../../src/repo/commit.js';
import { collectGarbage } from '../../src/repo/gc.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { deleteSnapshot, resolveHead } from '../../src/repo/snapshots.js';
import { MemStore } from '../../src/store/mem.js';

const C = 4096;
const VOLUME = 'vol';
const G = 3000;

t.test('a chain deleted and released over two GC runs leaves no link that looks like a lost manifest', async (t) => {
  let clock = 1_000_000;
  const now = (): number => clock;
  const store = new MemStore({ now });
  const repo = new Repository(store, { host: 'h', now });
  const g = (await acquireGeneration(repo, VOLUME)).generation;
  const commit = (parent: Manifest | null, clusters: number[], fill: number): Promise<Manifest> =>
    commitSnapshot(repo, { volume: VOLUME, generation: g, parent, imageLength: 32 * C, clusterSize: C, fanout: 16, consistency: 'crash', changes: clusters.map((c) => ({ cluster: c, data: Buffer.alloc(C, fill + c) })), windowMs: 1000 });
  const first = await commit(null, [0, 1, 2, 3, 16, 17], 1);
  clock += 10;
  // Shares clusters 0-2 and the tree leaf of clusters 16-31 with the first: every pack the
  // first wrote stays live through the second.
  const second = await commit(first, [3], 50);

  await deleteSnapshot(repo, VOLUME, first.id);
  clock += G + 100;
  await deleteSnapshot(repo, VOLUME, second.id);
  const r1 = await collectGarbage(repo, { graceMs: G });
  t.same(r1.releasedSnapshots, [first.id], 'the first GC releases the first snapshot only');
  t.notOk(await store.head(keys.manifest(VOLUME, first.id)), 'its manifest is removed');
  t.ok(await store.head(keys.tombstone(first.id)), 'its packs are live through the second: its tombstone stays');

  clock += G + 100;
  const r2 = await collectGarbage(repo, { graceMs: G });
  t.same(r2.releasedSnapshots, [second.id], 'the second GC releases the second');
  const left: string[] = [];
  for (const p of [...first.packs, ...second.packs]) {
    if ((await store.head(keys.pack('data', p))) || (await store.head(keys.pack('metadata', p)))) left.push(p.toString('hex'));
  }
  t.same(left, [], 'every pack of both is deleted');
  t.notOk(await store.head(keys.tombstone(first.id)), 'then the first tombstone is removed (its link named its packs)');
  t.notOk(await store.head(keys.tombstone(second.id)), 'and the second one');

  const r3 = await collectGarbage(repo, { graceMs: G });
  t.equal(r3.packsTotal, 0, 'a later GC finds no pack kept through a chain link');
  const head = await resolveHead(repo, VOLUME, g + 1);
  t.equal(head.live, null, 'attach resolves the volume to no live snapshot, without evidence of a lost manifest');
});
