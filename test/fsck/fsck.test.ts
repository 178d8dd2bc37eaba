/**
 * island fsck against a real Swift holding real qcow2 images written by QEMU through the
 * FUSE mount. Damage is injected into the store object by object; each kind must be found
 * with the right finding and the right affected snapshots, and repaired where it can be:
 * a flipped byte in a blob (deep tier; repaired from the local copy), a truncated pack
 * (trailer rebuilt), a corrupted manifest (rewritten from its chain link), a stale pin
 * (deleted), an orphan pack (pruned), a dangling reference and a corrupted tree node and a
 * deleted pack (not repairable: the snapshots are marked damaged and refused as sources).
 */
import { randomBytes } from 'node:crypto';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { encodeBlob } from '../../src/format/blob.js';
import { PackBuilder } from '../../src/format/pack.js';
import type { Manifest } from '../../src/format/records.js';
import { encodeNode, UNALLOCATED, type TreeEntry } from '../../src/format/tree-node.js';
import { iterate } from '../../src/format/tree.js';
import { manifestTree } from '../../src/repo/commit.js';
import { keys } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { S3Store } from '../../src/store/s3.js';
import { cli, cliJson, image, makeHost, run, serve, useS3, waitFor, type Host } from '../helpers/daemon.js';
import { inspectVolume } from '../../src/volume/setup.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

interface FindingOut {
  type: string;
  severity: string;
  key: string;
  snapshots: string[];
  repaired?: boolean;
  message: string;
}
interface ReportOut {
  exitCode: number;
  findings: FindingOut[];
  summary: { errors: number; warnings: number; repaired: number; nodes: number; packsVerified: number; bytesVerified: number; seed: number | null; damagedSnapshots: string[]; orphanPacks: number };
}

async function fsck(h: Host, ...args: string[]): Promise<{ code: number; report: ReportOut }> {
  const r = await cli(h, 'fsck', '--json', ...args);
  let report: ReportOut;
  try {
    report = JSON.parse(r.stdout) as ReportOut;
  } catch {
    throw new Error(`fsck ${args.join(' ')} printed no report (exit ${r.code}): ${r.stdout}${r.stderr}`);
  }
  return { code: r.code, report };
}

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`fsck tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  t.test('fsck finds each injected damage, names the snapshots, repairs what it can', async (t) => {
    const bucket = uniqueBucket('fsck');
    const h = await makeHost(t, 'fsck-host');
    h.env = { ISLAND_GC_GRACE: '0', ISLAND_TEST_SWITCHES: '1' };
    await useS3(h, swift, bucket);
    await serve(h);
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    const repo = new Repository(store, { host: 'injector' });

    await cliJson(h, 'volume', 'create', 'vol', '--size', '256M');
    await cliJson(h, 'attach', 'vol');
    const img = image(h, 'vol');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0xa1 0 1M', img]);
    const s1 = ((await cliJson(h, 'snapshot', 'create', 'vol')).snapshots as { id: string }[])[0]!.id;
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0xa2 8M 1M', img]);
    const s2 = ((await cliJson(h, 'snapshot', 'create', 'vol')).snapshots as { id: string }[])[0]!.id;
    // After s2 the first megabyte changes locally: s1's blobs there have no local copy left.
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0xa3 0 1M', '-c', 'flush', img]);
    const m1 = (await repo.getManifest('vol', s1)) as Manifest;
    const m2 = (await repo.getManifest('vol', s2)) as Manifest;

    const clean = await fsck(h, '--deep');
    t.equal(clean.code, 0, `a store after normal use is clean: ${JSON.stringify(clean.report.findings)}`);
    t.same(clean.report.findings, []);
    t.ok(clean.report.summary.nodes >= 2 && clean.report.summary.packsVerified >= 2, 'the deep tier read the packs');

    // Blobs of s2 by where they live: s2's own data packs (the 8M write), s1's (shared).
    const blobsOf = async (m: Manifest): Promise<{ cluster: number; loc: { pack: Buffer; offset: number; length: number; id: Buffer } }[]> => {
      const out = [];
      for await (const r of iterate(manifestTree(m), repo.nodeReader())) if (r.entry.kind === 'blob') out.push({ cluster: r.first, loc: r.entry.loc });
      return out;
    };
    const own = (await blobsOf(m2)).filter((b) => m2.packs.some((p) => p.equals(b.loc.pack)));
    const inherited = (await blobsOf(m2)).filter((b) => m1.packs.some((p) => p.equals(b.loc.pack)));
    t.ok(own.length > 0 && inherited.length > 0, 'the later snapshot has its own blobs and shares the first one\'s');
    const dataKey = (pack: Buffer): string => keys.pack('data', pack);

    await t.test('a flipped byte in a blob: found by --deep, rewritten from the local copy', async (t) => {
      const victim = own.at(-1)!;
      const key = dataKey(victim.loc.pack);
      const bytes = await store.get(key);
      bytes[victim.loc.offset + 100] ^= 0x40;
      await store.put(key, bytes);
      const structure = await fsck(h);
      t.equal(structure.code, 0, 'the structure tier reads no blob data, so it cannot see it');
      const deep = await fsck(h, '--deep');
      t.equal(deep.code, 4);
      const f = deep.report.findings.find((x) => x.key === `${key}@${victim.loc.offset}`);
      t.match(f?.type, /^(checksum-mismatch|undecodable)$/, 'a blob that fails to decode or to hash');
      t.same(f?.snapshots, [s2], 'affecting the snapshot that references it');
      const fixed = await fsck(h, '--deep', '--repair');
      t.equal(fixed.code, 1, `errors found and corrected: ${JSON.stringify(fixed.report.findings)}`);
      t.equal(fixed.report.findings.find((x) => x.key === `${key}@${victim.loc.offset}`)?.repaired, true);
      t.equal((await fsck(h, '--deep')).code, 0, 'clean again');
    });

    await t.test('a truncated pack: trailer lost, rebuilt from its frames', async (t) => {
      const key = dataKey(own[0]!.loc.pack);
      const bytes = await store.get(key);
      await store.put(key, bytes.subarray(0, bytes.length - 30));
      const r = await fsck(h);
      t.equal(r.code, 4);
      const f = r.report.findings.find((x) => x.key === key);
      t.equal(f?.type, 'undecodable', 'the pack does not decode');
      t.same(f?.snapshots, [s2]);
      const fixed = await fsck(h, '--repair');
      t.equal(fixed.code, 1, JSON.stringify(fixed.report.findings));
      const again = await fsck(h, '--deep');
      t.equal(again.code, 0, `clean again, blobs included: ${JSON.stringify(again.report.findings)}`);
    });

    await t.test('a corrupted manifest: rewritten from its chain link', async (t) => {
      const key = keys.manifest('vol', s2);
      const bytes = await store.get(key);
      bytes[bytes.length - 5] ^= 0xff;
      await store.put(key, bytes);
      const r = await fsck(h);
      t.equal(r.code, 4);
      const f = r.report.findings.find((x) => x.key === key);
      t.equal(f?.type, 'checksum-mismatch');
      t.same(f?.snapshots, [s2]);
      t.equal((await fsck(h, '--repair')).code, 1);
      t.equal((await fsck(h)).code, 0, 'clean again');
      t.same(await repo.getManifest('vol', s2), m2, 'the manifest is the one committed');
    });

    await t.test('a stale pin and an orphan pack: warnings, removed by --repair (--prune-orphans)', async (t) => {
      const now = Date.now();
      await repo.putPin({ id: repo.ulid(), snapshot: s1, volume: 'vol', holder: 'attach', host: 'gone-host', created: now - 3_600_000, expires: now - 1000 });
      const b = new PackBuilder('data');
      const blob = encodeBlob(randomBytes(4096));
      b.add(blob.frame, blob.id);
      const orphan = keys.pack('data', randomBytes(32));
      await store.put(orphan, b.finish().bytes);
      // Swift's container listing can lag a new object: fsck finds orphans by listing.
      let r = await fsck(h);
      for (const end = Date.now() + 30_000; !r.report.findings.some((x) => x.type === 'orphan') && Date.now() < end; ) r = await fsck(h);
      t.equal(r.code, 0, 'warnings do not fail the check');
      t.equal(r.report.findings.find((x) => x.type === 'stale-pin')?.severity, 'warning');
      t.equal(r.report.findings.find((x) => x.type === 'orphan')?.key, orphan);
      const refused = await cli(h, 'fsck', '--prune-orphans');
      t.equal(refused.code, 2, '--prune-orphans alone is refused as an invalid argument');
      await fsck(h, '--repair', '--prune-orphans');
      t.equal(await store.head(orphan), undefined, 'the orphan is gone');
      t.same((await fsck(h)).report.findings, [], 'nothing left to say');
    });

    await t.test('--local: the local copy against its last snapshot, by hash', async (t) => {
      const victim = own.at(-1)!;
      const dir = join(h.dataDir, 'volumes', 'vol');
      // Wait for the daemon's bitmap flush to start a new intent epoch: then only the
      // clusters written since s2 count as changed.
      await waitFor('the intent epoch to roll over', async () => !(await inspectVolume(dir)).mayHaveChanged(victim.cluster), 120_000);
      const ok = await cli(h, 'fsck', '--local', '--json');
      const r = JSON.parse(ok.stdout) as ReportOut & { summary: { local: { volumes: number; clustersCompared: number; clustersChangedSince: number } } };
      t.equal(ok.code, 0, JSON.stringify(r.findings));
      t.equal(r.summary.local.volumes, 1);
      t.ok(r.summary.local.clustersChangedSince >= 16, `the megabyte rewritten since s2 is tracked as changed (${r.summary.local.clustersChangedSince})`);
      t.ok(r.summary.local.clustersCompared > r.summary.local.clustersChangedSince, 'the rest was compared and agrees');
      // A change behind the engine's back (bit rot, a stray writer): tracking does not know it.
      const fh = await open(join(dir, 'image.qcow2'), 'r+');
      const orig = Buffer.alloc(1);
      const at = victim.cluster * m2.clusterSize + 10;
      await fh.read(orig, 0, 1, at);
      await fh.write(Buffer.from([orig[0]! ^ 0xff]), 0, 1, at);
      const bad = await fsck(h, '--local');
      t.equal(bad.code, 4);
      t.equal(bad.report.findings[0]?.key, `local:${dir}/image.qcow2@${victim.cluster}`, 'the untracked cluster is named');
      await fh.write(orig, 0, 1, at);
      await fh.close();
      t.equal((await fsck(h, '--local')).code, 0, 'clean again');
    });

    await t.test('damage nothing can repair: dangling reference, bad tree node, deleted pack', async (t) => {
      // A snapshot of another volume whose only leaf points where no blob is.
      const entries: TreeEntry[] = new Array(512).fill(UNALLOCATED);
      entries[0] = { kind: 'blob', loc: { pack: own[0]!.loc.pack, offset: 7, length: 4242, id: randomBytes(32) } };
      const sink = repo.packSink('metadata');
      const root = await sink.writeNode(encodeNode({ kind: 'leaf', level: 0, fanoutBits: 9, entries }));
      await sink.flush();
      const ghost: Manifest = { ...m1, volume: 'ghost', id: repo.ulid(), parent: null, tree: { root: root.loc, nClusters: 1, fanout: 512, depth: 1 }, imageLength: 65536, packs: [...sink.written].sort(Buffer.compare) };
      await repo.putManifest(ghost);
      // A flipped byte in s2's root node; s1's data pack deleted.
      const metaKey = keys.pack('metadata', m2.tree.root!.pack);
      const meta = await store.get(metaKey);
      meta[m2.tree.root!.offset + 90] ^= 0x01;
      await store.put(metaKey, meta);
      const lost = dataKey(inherited[0]!.loc.pack);
      await store.delete(lost);

      const r = await fsck(h, '--repair');
      t.equal(r.code, 4, 'errors left uncorrected');
      const byKey = (k: string): FindingOut | undefined => r.report.findings.find((x) => x.key === k);
      t.equal(byKey(`${dataKey(own[0]!.loc.pack)}@7`)?.type, 'dangling-reference');
      t.same(byKey(`${dataKey(own[0]!.loc.pack)}@7`)?.snapshots, [ghost.id]);
      t.match(byKey(`${metaKey}@${m2.tree.root!.offset}`)?.type, /^(checksum-mismatch|undecodable)$/, 'the tree node fails its hash or its decoding');
      t.same(byKey(`${metaKey}@${m2.tree.root!.offset}`)?.snapshots, [s2]);
      t.equal(byKey(lost)?.type, 'missing-object');
      t.same(byKey(lost)?.snapshots, [s1], 's1 needs the pack (s2 is unreadable above it already)');
      t.same(r.report.summary.damagedSnapshots, [ghost.id, s1, s2].sort());
      for (const id of [s1, s2, ghost.id]) t.ok(await repo.getDamage(id), `snapshot ${id} is marked damaged`);

      const list = (await cliJson(h, 'snapshot', 'list', 'vol')).snapshots as { id: string; damaged: boolean }[];
      t.same(list.map((s) => s.damaged), [true, true], 'listed as damaged');
      const refused = await cli(h, 'volume', 'create', 'copy', '--from', s1);
      t.match(refused.stderr, /SNAPSHOT_DAMAGED/, 'refused as a restore source');
      const after = await fsck(h);
      t.equal(after.code, 4);
      t.ok(after.report.findings.some((x) => x.type === 'damaged-snapshot'), 'the marks are reported');
    });

    await t.test('bad options exit 2; an unknown snapshot is an operational error', async (t) => {
      t.equal((await cli(h, 'fsck', '--deep=0')).code, 2);
      t.equal((await cli(h, 'fsck', '--snapshot', 'nope')).code, 2);
      t.equal((await cli(h, 'fsck', '--snapshot', '01J00000000000000000000000')).code, 8, 'an unknown snapshot');
    });
  });

  t.test('a sampled deep check prints its seed and repeats with it', async (t) => {
    const bucket = uniqueBucket('fsck-sample');
    const h = await makeHost(t, 'fsck-sample');
    await useS3(h, swift, bucket);
    await serve(h);
    await cliJson(h, 'volume', 'create', 'v', '--size', '64M');
    await cliJson(h, 'attach', 'v');
    for (let i = 0; i < 4; i++) {
      await run('qemu-io', ['-t', 'none', '-c', `write -P 0x${(0x10 + i).toString(16)} ${i * 4}M 1M`, image(h, 'v')]);
      await cliJson(h, 'snapshot', 'create', 'v');
    }
    const a = await fsck(h, '--deep=50');
    t.equal(a.code, 0);
    t.type(a.report.summary.seed, 'number', 'the seed is reported');
    const b = await fsck(h, '--deep=50', '--seed', String(a.report.summary.seed));
    t.equal(b.report.summary.bytesVerified, a.report.summary.bytesVerified, 'the same seed verifies the same packs');
    const human = await cli(h, 'fsck', '--deep=50');
    t.match(human.stdout, /sample seed \d+: repeat with --seed \d+/);
    t.match(human.stdout, /0 errors, 0 warnings/);
  });

  t.test('--qcow2: qemu-img check of each snapshot image through a read-only snapshot mount', async (t) => {
    const bucket = uniqueBucket('fsck-qcow2');
    const h = await makeHost(t, 'fsck-qcow2');
    await useS3(h, swift, bucket);
    await serve(h);
    await cliJson(h, 'volume', 'create', 'q', '--size', '64M');
    await cliJson(h, 'attach', 'q');
    const img = image(h, 'q');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x5c 0 2M', img]);
    const s1 = ((await cliJson(h, 'snapshot', 'create', 'q')).snapshots as { id: string }[])[0]!.id;

    const mounted = await cliJson(h, 'snapshot', 'mount', s1);
    t.equal(mounted.file, join(h.mount, `q@${s1}.qcow2`), 'the snapshot shows as VOLUME@ID.qcow2');
    t.match((await run('qemu-img', ['check', mounted.file as string])).stdout, /No errors were found/, 'qemu-img check reads it');
    t.notMatch((await run('qemu-io', ['-r', '-c', 'read -P 0x5c 0 2M', mounted.file as string])).stdout, /Pattern verification failed/, 'with the data of the snapshot');
    await t.rejects(open(mounted.file as string, 'r+'), { code: 'EROFS' }, 'it cannot be opened for writing');
    await cliJson(h, 'snapshot', 'unmount', s1);

    // Poke the image's qcow2 metadata: the refcount of cluster 0 (the header) becomes 0.
    const fh = await open(img, 'r+');
    const head = Buffer.alloc(104);
    await fh.read(head, 0, head.length, 0);
    const table = Buffer.alloc(8);
    await fh.read(table, 0, 8, Number(head.readBigUInt64BE(48)));
    await fh.write(Buffer.alloc(2), 0, 2, Number(table.readBigUInt64BE(0)));
    await fh.sync();
    await fh.close();
    const s2 = ((await cliJson(h, 'snapshot', 'create', 'q')).snapshots as { id: string }[])[0]!.id;

    const r = await fsck(h, '--qcow2', '--repair');
    t.equal(r.code, 4, 'a corrupt image is an error left uncorrected');
    const f = r.report.findings.find((x) => x.type === 'qcow2-corruption');
    t.same(f?.snapshots, [s2], 'only the snapshot taken after the poke');
    t.match(f?.message, /corruption/);
    t.equal(await new Repository(new S3Store({ ...swift, bucket }), { host: 'x' }).getDamage(s2), undefined, 'not marked damaged: it stays restorable for qemu-img check -r');
    t.same(await readdir(h.mount), ['q.qcow2'], 'the check unmounted the snapshots it mounted');
  });
}
