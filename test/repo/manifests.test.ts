/**
 * Listing a volume's snapshots (repo/manifests.ts), as `island snapshot list` and prune do:
 * exactly the listed snapshots, each marked deleted exactly when it has a tombstone, with
 * one read of each manifest and of each tombstone, at most MANIFEST_READS reads at a time,
 * tombstones among them. The daemon's listing read the tombstones one at a time after the
 * manifests (1,000 snapshots: 1,000 round trips in sequence). 1,100 snapshots, so the
 * listing takes two pages, on the memory store behind a wrapper that counts the reads and
 * holds each for a millisecond (so reads overlap as they would on a network store).
 */
import t from 'tap';
import type { Manifest } from '../../src/format/records.js';
import { acquireGeneration } from '../../src/repo/attach.js';
import { commitSnapshot } from '../../src/repo/commit.js';
import { keys } from '../../src/repo/keys.js';
import { MANIFEST_READS, readLiveManifests, readSnapshots } from '../../src/repo/manifests.js';
import { Repository } from '../../src/repo/repository.js';
import { deleteSnapshot } from '../../src/repo/snapshots.js';
import { MemStore } from '../../src/store/mem.js';
import { ForwardingStore, type ListOptions, type ListPage, type OpOptions } from '../../src/store/types.js';

const C = 4096;
const VOLUME = 'many';
const N = 1100;

/** Counts GETs by key and lists by prefix; tracks how many GETs of each kind are in flight. */
class CountingStore extends ForwardingStore {
  readonly gets = new Map<string, number>();
  readonly lists: string[] = [];
  readonly inFlight = { manifest: 0, tombstone: 0, all: 0 };
  readonly maxInFlight = { manifest: 0, tombstone: 0, all: 0 };

  reset(): void {
    this.gets.clear();
    this.lists.length = 0;
    this.maxInFlight.manifest = this.maxInFlight.tombstone = this.maxInFlight.all = 0;
  }

  override async get(key: string, opts?: OpOptions): Promise<Buffer> {
    this.gets.set(key, (this.gets.get(key) ?? 0) + 1);
    const kind = key.startsWith('snapshots/') ? 'manifest' : key.startsWith('tombstones/') ? 'tombstone' : undefined;
    if (kind) this.inFlight[kind]++;
    this.inFlight.all++;
    if (kind) this.maxInFlight[kind] = Math.max(this.maxInFlight[kind], this.inFlight[kind]);
    this.maxInFlight.all = Math.max(this.maxInFlight.all, this.inFlight.all);
    try {
      await new Promise((r) => setTimeout(r, 1));
      return await super.get(key, opts);
    } finally {
      if (kind) this.inFlight[kind]--;
      this.inFlight.all--;
    }
  }

  override list(prefix: string, opts?: ListOptions): Promise<ListPage> {
    this.lists.push(prefix);
    return super.list(prefix, opts);
  }
}

t.test('a listing of 1,100 snapshots returns exactly the live ones, reading each record once, 16 reads at a time', async (t) => {
  const store = new CountingStore(new MemStore());
  const repo = new Repository(store, { host: 'h' });
  const g = (await acquireGeneration(repo, VOLUME)).generation;
  const commit = (parent: Manifest | null, changes: { cluster: number; data: Buffer }[]): Promise<Manifest> =>
    commitSnapshot(repo, { volume: VOLUME, generation: g, parent, imageLength: 64 * C, clusterSize: C, fanout: 16, consistency: 'crash', changes, windowMs: 60_000 });
  const made: Manifest[] = [await commit(null, [{ cluster: 0, data: Buffer.alloc(C, 1) }])];
  // The rest share the first one's tree (a snapshot of a detached volume): a manifest and a link each.
  while (made.length < N) made.push(await commit(made.at(-1) as Manifest, []));
  // Another volume's snapshot, which a listing of VOLUME must not show.
  const og = (await acquireGeneration(repo, 'other')).generation;
  const other = await commitSnapshot(repo, { volume: 'other', generation: og, parent: null, imageLength: 64 * C, clusterSize: C, consistency: 'crash', changes: [], windowMs: 60_000 });
  const deleted = new Set<string>();
  for (let i = 3; i < N; i += 7) {
    await deleteSnapshot(repo, VOLUME, (made[i] as Manifest).id);
    deleted.add((made[i] as Manifest).id);
  }

  store.reset();
  const listed = await readSnapshots(repo, VOLUME);
  t.same(
    listed.map((s) => s.manifest.id),
    made.map((m) => m.id),
    `all ${N} snapshots of the volume, in id order, and nothing else`,
  );
  t.same(listed.filter((s) => s.deleted).map((s) => s.manifest.id), [...deleted], `exactly the ${deleted.size} tombstoned ones are deleted`);
  t.notOk(listed.some((s) => s.manifest.id === other.id), "the other volume's snapshot is not listed");
  const wanted = new Set([...made.map((m) => keys.manifest(VOLUME, m.id)), ...made.map((m) => keys.tombstone(m.id))]);
  t.same([...store.gets.keys()].filter((k) => !wanted.has(k)), [], 'no other record is read');
  t.same([...store.gets.values()].filter((n) => n !== 1), [], 'each manifest and each tombstone is read once');
  t.equal(store.gets.size, 2 * N, 'every manifest and every tombstone is read');
  t.same(store.lists, [keys.manifestsPrefix(VOLUME), keys.manifestsPrefix(VOLUME)], "two pages of the volume's manifests are listed, nothing else");
  t.ok(store.maxInFlight.manifest <= MANIFEST_READS, `manifest reads in flight at most ${MANIFEST_READS} (${store.maxInFlight.manifest})`);
  t.ok(store.maxInFlight.all <= MANIFEST_READS, `reads in flight at most ${MANIFEST_READS} (${store.maxInFlight.all})`);
  t.ok(store.maxInFlight.tombstone > 1, `tombstones are read side by side, not one at a time (${store.maxInFlight.tombstone} at once)`);

  store.reset();
  const live = await readLiveManifests(repo, VOLUME);
  t.same(
    live.map((m) => m.id),
    made.filter((m) => !deleted.has(m.id)).map((m) => m.id),
    `readLiveManifests (prune's input): exactly the ${N - deleted.size} live snapshots`,
  );
  t.equal(store.gets.size, 2 * N, '... with the same reads');
  t.ok(store.maxInFlight.all <= MANIFEST_READS, '... as bounded');
});
