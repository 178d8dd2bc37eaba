/**
 * Copy of snapshots between regions, on a real Swift with two buckets as two regions: the
 * copy restores byte-identical on a host that knows only the target region, a later
 * snapshot's copy moves only its new packs, and bad input gets clear errors.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { listAll } from '../../src/store/types.js';
import { cli, cliJson, image, makeHost, run, serve, waitFor, type Host } from '../helpers/daemon.js';
import { uniqueBucket, useSwift, type SwiftInfo } from '../helpers/swift.js';

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`copy tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  /** A host whose configuration declares `regions` (name -> bucket) and lives in `home`. */
  async function configure(h: Host, home: string, regions: Record<string, string>, sw: SwiftInfo): Promise<void> {
    h.configFile = join(h.dataDir, 'island.json');
    const decl = Object.fromEntries(Object.entries(regions).map(([name, bucket]) => [name, { type: 's3', ...sw, bucket }]));
    await writeFile(h.configFile, JSON.stringify({ region: home, regions: decl }));
  }

  const packKeys = async (store: S3Store): Promise<Set<string>> => {
    const out = new Set<string>();
    for (const prefix of keys.packPrefixes) for await (const o of listAll(store, prefix)) out.add(o.key);
    return out;
  };

  t.test('snapshot copy: restores in the target region alone; a later copy moves only new packs', async (t) => {
    const bucketA = uniqueBucket('copy-a');
    const bucketB = uniqueBucket('copy-b');
    const a = await makeHost(t, 'host-a');
    await configure(a, 'swift-a', { 'swift-a': bucketA, 'swift-b': bucketB }, swift);
    const b = await makeHost(t, 'host-b');
    await configure(b, 'swift-b', { 'swift-b': bucketB }, swift);
    const storeA = new S3Store({ ...swift, bucket: bucketA });
    const storeB = new S3Store({ ...swift, bucket: bucketB });
    t.teardown(() => Promise.all([storeA.close(), storeB.close()]));
    const repoA = new Repository(storeA, { host: 'checker', region: 'swift-a' });
    const repoB = new Repository(storeB, { host: 'checker', region: 'swift-b' });
    const exportOf = async (repo: Repository, id: string, file: string): Promise<string> => {
      const m = await findSnapshot(repo, id);
      t.ok(m, `snapshot ${id} is in region ${repo.region}`);
      const path = join(a.dataDir, file);
      await exportSnapshot(repo, m as NonNullable<typeof m>, path);
      return path;
    };

    await serve(a);
    await cliJson(a, 'volume', 'create', 'vm', '--size', '64M');
    await cliJson(a, 'attach', 'vm');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x41 0 4M', '-c', 'write -P 0x42 40M 1M', image(a, 'vm')]);
    const s1 = ((await cliJson(a, 'snapshot', 'create', 'vm')).snapshots as { id: string }[])[0]?.id as string;

    // Bad input.
    const unknownRegion = await cli(a, 'snapshot', 'copy', s1, '--to', 'nowhere');
    t.equal(unknownRegion.code, 2, 'an unknown region is invalid input');
    t.match(unknownRegion.stderr, /INVALID_ARGUMENT: unknown region nowhere \(configured: swift-b/, `and names the configured ones: ${unknownRegion.stderr.trim()}`);
    const own = await cli(a, 'snapshot', 'copy', s1, '--to', 'swift-a');
    t.match(own.stderr, /INVALID_ARGUMENT.*own region/, `copying into the daemon's own region is refused: ${own.stderr.trim()}`);
    const badName = await cli(a, 'snapshot', 'copy', s1, '--to', 'Bad/Region');
    t.equal(badName.code, 2, `a malformed region name is invalid input: ${badName.stderr.trim()}`);
    const unknown = await cli(a, 'snapshot', 'copy', '01J0000000000000000000000Z', '--to', 'swift-b');
    t.match(unknown.stderr, /NOT_FOUND: no snapshot 01J0000000000000000000000Z/, `an unknown snapshot: ${unknown.stderr.trim()}`);
    const malformed = await cli(a, 'snapshot', 'copy', 'not-a-snapshot', '--to', 'swift-b');
    t.equal(malformed.code, 2, `a malformed id is invalid input: ${malformed.stderr.trim()}`);
    const noTarget = await cli(a, 'snapshot', 'copy', s1);
    t.match(noTarget.stderr, /INVALID_ARGUMENT: missing --to REGION/, 'the target region is required');
    t.equal((await packKeys(storeB)).size, 0, 'nothing reached the target region');

    // First copy: everything the tree reaches.
    const c1 = await cliJson(a, 'snapshot', 'copy', s1, '--to', 'swift-b', '--wait');
    t.equal(c1.alreadyCopied, false);
    t.ok((c1.packsTotal as number) > 0 && c1.packsCopied === c1.packsTotal, `the first copy moves every pack the tree reaches (${c1.packsCopied})`);
    t.equal(c1.parent, null, 'and starts the volume\'s chain in the target');
    const again = await cliJson(a, 'snapshot', 'copy', s1, '--to', 'swift-b', '--wait');
    t.equal(again.alreadyCopied, true, 'copying it again finds it there and moves nothing');
    t.same((await repoA.listPins(s1)).filter((p) => p.holder === 'copy'), [], 'the source pin is gone once the copy is done');
    const srcOne = await exportOf(repoA, s1, 's1-a.img');
    const viaB = await exportOf(repoB, s1, 's1-b.img');
    await run('cmp', [srcOne, viaB]);
    t.pass('the copy read through its tree from the target region alone is byte-identical');

    // A host that knows only region B attaches the volume: restored from the copy.
    await serve(b);
    const listed = (await cliJson(b, 'volume', 'list')).volumes as { name: string; virtualSize: number }[];
    t.same(listed.map((v) => [v.name, v.virtualSize]), [['vm', 64 * 1024 * 1024]], 'the copy made the volume known in the target region');
    await cliJson(b, 'attach', 'vm');
    await run('cmp', [srcOne, image(b, 'vm')]);
    t.pass('a host configured with region B only restores the copy byte-identical');
    await cliJson(b, 'detach', 'vm');

    // A later snapshot: its copy moves only the packs that snapshot wrote.
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x43 8M 2M', image(a, 'vm')]);
    const s2 = ((await cliJson(a, 'snapshot', 'create', 'vm')).snapshots as { id: string }[])[0]?.id as string;
    const m2 = await findSnapshot(repoA, s2);
    const own2 = new Set((m2?.packs ?? []).flatMap((p) => [keys.pack('data', p), keys.pack('metadata', p)]));
    const before = await packKeys(storeB);
    const c2 = await cliJson(a, 'snapshot', 'copy', s2, '--to', 'swift-b', '--wait');
    t.equal(c2.packsCopied, m2?.packs.length, `the second copy moves only the ${m2?.packs.length} packs the new snapshot wrote (of ${c2.packsTotal} its tree reaches)`);
    t.ok((c2.packsTotal as number) > (c2.packsCopied as number), 'the shared ones were already there');
    let added: string[] = [];
    await waitFor('the new packs in the target listing', async () => {
      added = [...(await packKeys(storeB))].filter((k) => !before.has(k));
      return added.length >= (c2.packsCopied as number);
    });
    t.ok(added.length === c2.packsCopied && added.every((k) => own2.has(k)), 'and the target gained exactly those pack objects');

    await cliJson(b, 'attach', 'vm');
    const srcTwo = await exportOf(repoA, s2, 's2-a.img');
    await run('cmp', [srcTwo, image(b, 'vm')]);
    t.pass('the target restores the later snapshot byte-identical (it is the volume\'s latest there)');
    const older = await cli(a, 'snapshot', 'copy', s2, '--to', 'swift-b');
    t.equal(older.code, 0, 'a copy that is already there succeeds while the volume is attached in the target');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x44 0 64k', image(a, 'vm')]);
    const s3 = ((await cliJson(a, 'snapshot', 'create', 'vm')).snapshots as { id: string }[])[0]?.id as string;
    const held = await cli(a, 'snapshot', 'copy', s3, '--to', 'swift-b', '--wait');
    t.match(held.stderr, /ATTACHED_ELSEWHERE.*host-b/, `a new copy into a volume attached in the target is refused: ${held.stderr.trim()}`);
    // Once detached there, B's final snapshot is newer than s3: copying s3 would hide it.
    await cliJson(b, 'detach', 'vm');
    const stale = await cli(a, 'snapshot', 'copy', s3, '--to', 'swift-b', '--wait');
    t.match(stale.stderr, /INVALID_ARGUMENT: region swift-b already holds snapshot \w+ of vm, newer than/, `a snapshot older than the target's latest is refused: ${stale.stderr.trim()}`);
    t.same((await repoA.listPins(s3)).filter((p) => p.holder === 'copy'), [], 'a refused copy leaves no pin behind');
  });
}
