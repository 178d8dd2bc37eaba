/**
 * Listing and deleting many snapshots through the daemon (daemon/history.ts), in store
 * requests counted by its /metrics: `snapshot list` reads each snapshot's manifest and
 * tombstone once and lists the manifests once; `snapshot delete` of many ids finds them all
 * with one listing of the manifests (it listed every manifest of the region once per id).
 * A volume of 40 snapshots written before the daemon starts, as a detached volume's
 * snapshots are (one generation, the first holding a cluster, the rest sharing its tree).
 */
import { createServer } from 'node:net';
import t from 'tap';
import type { Manifest } from '../../src/format/records.js';
import { acquireGeneration, releaseGeneration } from '../../src/repo/attach.js';
import { commitSnapshot } from '../../src/repo/commit.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStore } from '../../src/store/fs.js';
import { cli, cliJson, makeHost, serve } from '../helpers/daemon.js';

const N = 40;
const C = 65536;

async function freePort(): Promise<number> {
  return new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** The daemon's store requests so far, by operation. */
async function requests(port: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^island_store_requests_total\{op="([a-z_]+)"\} (\d+)/gm)) out[m[1] as string] = Number(m[2]);
  return out;
}

const since = (a: Record<string, number>, b: Record<string, number>, op: string): number => (b[op] ?? 0) - (a[op] ?? 0);

t.test(`list and delete among ${N} snapshots, in store requests`, async (t) => {
  const h = await makeHost(t, 'history');
  const store = new FsStore(h.storeDir);
  const made: Manifest[] = [];
  try {
    const repo = new Repository(store, { host: 'writer', region: 'default' });
    await repo.putVolume({ name: 'many', virtualSize: 1 << 30, clusterSize: C, region: 'default', created: repo.now(), source: null, status: 'available', host: null, generation: 0, revision: 1 });
    const g = (await acquireGeneration(repo, 'many')).generation;
    while (made.length < N) {
      made.push(await commitSnapshot(repo, { volume: 'many', generation: g, parent: made.at(-1) ?? null, imageLength: 1 << 30, clusterSize: C, consistency: 'crash', changes: made.length === 0 ? [{ cluster: 0, data: Buffer.alloc(C, 7) }] : [], windowMs: 3_600_000 }));
    }
    await releaseGeneration(repo, 'many', g);
  } finally {
    await store.close();
  }
  const port = await freePort();
  h.env = { ISLAND_METRICS_PORT: String(port) };
  await serve(h);

  let before = await requests(port);
  const listed = (await cliJson(h, 'snapshot', 'list', 'many')).snapshots as { id: string; deleted: boolean }[];
  let after = await requests(port);
  t.same(listed.map((s) => s.id), made.map((m) => m.id), `all ${N} snapshots, in order`);
  t.same(listed.filter((s) => s.deleted), [], 'none deleted');
  t.equal(since(before, after, 'get'), 2 * N, 'a manifest and a tombstone read each, nothing more');
  t.ok(since(before, after, 'list') <= 3, `the manifests listed once, beside the damage marks (${since(before, after, 'list')} listings)`);

  // The oldest 30 (the head, which the volume restores, stays).
  const doomed = made.slice(0, 30).map((m) => m.id);
  before = await requests(port);
  const r = await cliJson(h, 'snapshot', 'delete', ...doomed);
  after = await requests(port);
  t.same(r.deleted, doomed, 'all 30 deleted');
  // Each deletion lists its snapshot's pins (deleteSnapshot); finding the 30 is one listing,
  // and the head check (is one of them what the volume restores?) a few more.
  const lists = since(before, after, 'list');
  t.ok(lists <= doomed.length + 8, `finding the 30 ids takes one listing of the manifests, not one per id (${lists} listings for 30 deletions)`);

  const again = (await cliJson(h, 'snapshot', 'list', 'many')).snapshots as { id: string; deleted: boolean }[];
  t.same(again.filter((s) => s.deleted).map((s) => s.id), doomed, 'the list shows exactly those deleted');
  const twice = await cli(h, 'snapshot', 'delete', made[35]?.id as string, doomed[3] as string);
  t.match(twice.stderr, new RegExp(`^island: SNAPSHOT_DELETED: snapshot ${doomed[3]} is already deleted`), 'a list with a deleted id is refused, naming it');
  const missing = await cli(h, 'snapshot', 'delete', made[36]?.id as string, '01ARZ3NDEKTSV4RRFFQ69G5FAV');
  t.match(missing.stderr, /^island: NOT_FOUND: no snapshot 01ARZ3NDEKTSV4RRFFQ69G5FAV/, 'and one with an unknown id');
  const still = (await cliJson(h, 'snapshot', 'list', 'many')).snapshots as { id: string; deleted: boolean }[];
  t.same(still.filter((s) => s.deleted).map((s) => s.id), doomed, '... deleting nothing');
});
