/**
 * An encrypted repository end to end, on a real Swift, with real daemons, FUSE mounts and
 * qemu-io: known plaintext never reaches the store (and does reach an unencrypted one,
 * so the scan can see it), the same cluster written twice is stored once, a second host
 * restores byte-exact through lazy reads, rotating key files keeps every snapshot readable,
 * fsck --deep names a flipped byte, daemons with no key or another key refuse and write
 * nothing, a key for an unencrypted store is refused, and a GC without the key deletes
 * nothing and says so.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { loadKeyFile } from '../../src/crypto/key-file.js';
import { openWithKey } from '../../src/crypto/open.js';
import { parsePack } from '../../src/format/pack.js';
import { collectGarbage } from '../../src/repo/gc.js';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { listAll, type ObjectStore } from '../../src/store/types.js';
import { cli, cliJson, image, makeHost, run, serve, useS3, type Host } from '../helpers/daemon.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

const CLUSTER = 65536;

async function allObjects(store: ObjectStore): Promise<{ key: string; bytes: Buffer }[]> {
  const out = [];
  for await (const o of listAll(store, '')) out.push({ key: o.key, bytes: await store.get(o.key) });
  return out;
}

/** 32-byte windows of `known`, one per 4 KiB: any of them in an object means plaintext leaked. */
function leaks(objects: { key: string; bytes: Buffer }[], known: Buffer): string[] {
  const needles: Buffer[] = [];
  for (let i = 0; i + 32 <= known.length; i += 4096) needles.push(known.subarray(i, i + 32));
  return objects.filter((o) => needles.some((n) => o.bytes.includes(n))).map((o) => o.key);
}

async function failing(h: Host, ...args: string[]): Promise<{ code: number; error: string }> {
  const r = await cli(h, ...args, '--json');
  return { code: r.code, error: r.code === 0 ? '' : ((JSON.parse(r.stdout) as { error: { code: string } }).error.code) };
}

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`encrypted store tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  t.test('an encrypted repository on Swift, end to end', async (t) => {
    const bucket = uniqueBucket('crypto');
    const a = await makeHost(t, 'enc-a');
    const b = await makeHost(t, 'enc-b');
    await useS3(a, swift, bucket);
    await useS3(b, swift, bucket);
    const keyA = join(a.dataDir, 'island.key');
    const passA = join(a.dataDir, 'pass');
    await writeFile(passA, 'passphrase of host a\n', { mode: 0o600 });
    a.env = { ISLAND_KEY_FILE: keyA, ISLAND_KEY_PASSPHRASE_FILE: passA };
    const init = await cli(a, 'store', 'init-key', '--label', 'host a');
    t.equal(init.code, 0, init.stderr);
    await serve(a);
    const raw = new S3Store({ ...swift, bucket });
    t.teardown(() => raw.close());

    // Known, incompressible plaintext, written twice (same clusters at two places), and a pattern.
    const known = randomBytes(1024 * 1024);
    const knownFile = join(a.dataDir, 'known.bin');
    await writeFile(knownFile, known);
    await cliJson(a, 'volume', 'create', 'secret', '--size', '4G');
    await cliJson(a, 'attach', 'secret');
    const fa = image(a, 'secret');
    await run('qemu-io', ['-t', 'none', '-c', `write -s ${knownFile} 0 1M`, '-c', `write -s ${knownFile} 1G 1M`, '-c', 'write -P 0xa1 2G 2M', fa]);
    const s1 = ((await cliJson(a, 'snapshot', 'create', 'secret')).snapshots as { id: string }[])[0]!.id;

    const objects = await allObjects(raw);
    t.ok(objects.some((o) => o.key.startsWith('data/')), 'data packs were written');
    t.same(leaks(objects, known), [], 'no 32-byte window of the known plaintext is in any store object');
    t.notOk(objects.some((o) => o.key.startsWith('snapshots/') && o.bytes.includes(Buffer.from('"volume":"secret"'))), 'manifests are sealed');

    // The same cluster twice is stored once: each of the 16 known clusters' keyed id appears once.
    const kf = await loadKeyFile(keyA, Buffer.from('passphrase of host a'));
    const ids = new Map<string, number>();
    for (const o of objects.filter((x) => x.key.startsWith('data/'))) for (const e of parsePack(o.bytes).entries) ids.set(e.id.toString('hex'), (ids.get(e.id.toString('hex')) ?? 0) + 1);
    for (let i = 0; i < 16; i++) {
      const id = kf.keys.blobId(known.subarray(i * CLUSTER, (i + 1) * CLUSTER)).toString('hex');
      t.equal(ids.get(id), 1, `known cluster ${i} is stored exactly once`);
    }

    // A second host with the same repository key restores byte-exact, lazily.
    const keyB = join(b.dataDir, 'island.key');
    const passB = join(b.dataDir, 'pass');
    await writeFile(passB, 'passphrase of host b\n', { mode: 0o600 });
    const add = await cli(a, 'store', 'key', 'add', keyB, '--passphrase-file', passB, '--label', 'host b');
    t.equal(add.code, 0, add.stderr);
    b.env = { ISLAND_KEY_FILE: keyB, ISLAND_KEY_PASSPHRASE_FILE: passB };
    await serve(b);
    await cliJson(a, 'detach', 'secret');
    const final = ((await cliJson(a, 'snapshot', 'list', 'secret')).snapshots as { id: string }[]).at(-1)!.id;
    await cliJson(b, 'attach', 'secret');
    const fb = image(b, 'secret');
    const r = await run('qemu-io', ['-c', 'read -P 0xa1 2G 2M', fb]);
    t.notMatch(r.stdout, /Pattern verification failed/, 'the pattern reads back on host b');
    const opened = await openWithKey(raw, kf);
    const repo = new Repository(opened.store, { host: 'checker', frames: opened.frames });
    const out = join(b.dataDir, 'export.qcow2');
    await exportSnapshot(repo, (await findSnapshot(repo, final))!, out);
    t.match((await run('qemu-img', ['compare', out, fb])).stdout, /Images are identical/, 'export and lazy restore agree byte for byte');

    // Rotation: host b removes host a's key file; every snapshot stays readable with b's.
    const removed = await cli(b, 'store', 'key', 'remove', kf.keyFileId.toString('hex'));
    t.equal(removed.code, 0, removed.stderr);
    const kfB = await loadKeyFile(keyB, Buffer.from('passphrase of host b'));
    const openedB = await openWithKey(raw, kfB);
    const repoB = new Repository(openedB.store, { host: 'checker', frames: openedB.frames });
    for (const id of [s1, final]) {
      const o2 = join(b.dataDir, `${id}.qcow2`);
      await exportSnapshot(repoB, (await findSnapshot(repoB, id))!, o2);
      t.match((await run('qemu-img', ['check', o2])).stdout, /No errors were found/, `snapshot ${id} readable after rotation`);
    }
    t.equal((await failing(a, 'store', 'key', 'list')).error, 'KEY_REVOKED', 'the removed key file no longer opens the repository');

    // Refusals: no key, or a key of another repository: exit 1, nothing written.
    const before = (await allObjects(raw)).map((o) => o.key).sort();
    const c = await makeHost(t, 'enc-c');
    await useS3(c, swift, bucket);
    const other = await makeHost(t, 'enc-other');
    other.env = { ISLAND_KEY_FILE: join(other.dataDir, 'o.key') };
    t.equal((await cli(other, 'store', 'init-key')).code, 0, 'another repository (embedded store)');
    c.env = { ISLAND_KEY_FILE: join(other.dataDir, 'o.key') };
    t.equal((await failing(c, 'store', 'key', 'list')).error, 'KEY_MISMATCH');
    await t.rejects(serve(c), /KEY_MISMATCH/, 'a daemon with another repository\'s key does not start');
    c.env = {};
    await t.rejects(serve(c), /KEY_MISSING/, 'a daemon without a key does not start');
    // GC without the key deletes nothing, and says why.
    await t.rejects(collectGarbage(new Repository(raw, { host: 'gc' }), { graceMs: 0 }), { code: 'KEY_MISSING', message: /deleted nothing/ });
    t.same((await allObjects(raw)).map((o) => o.key).sort(), before, 'nothing written or deleted by any refusal');

    // fsck --deep with the key finds a flipped byte in an encrypted frame and names the object.
    const victim = (await allObjects(raw)).find((o) => o.key.startsWith('data/'))!;
    const entry = parsePack(victim.bytes).entries[0]!;
    victim.bytes[entry.offset + 100] = (victim.bytes[entry.offset + 100] as number) ^ 0x01;
    await raw.put(victim.key, victim.bytes);
    const deep = await cli(b, 'fsck', '--deep', '--json');
    t.equal(deep.code, 4, 'errors found');
    t.match(deep.stdout, new RegExp(`${victim.key}@${entry.offset}`), 'the finding names the pack and offset');
  });

  t.test('an unencrypted store keeps working, shows what encryption hides, and refuses a key', async (t) => {
    const bucket = uniqueBucket('plain');
    const h = await makeHost(t, 'plain-a');
    await useS3(h, swift, bucket);
    await serve(h);
    const raw = new S3Store({ ...swift, bucket });
    t.teardown(() => raw.close());
    const known = randomBytes(1024 * 1024);
    const knownFile = join(h.dataDir, 'known.bin');
    await writeFile(knownFile, known);
    await cliJson(h, 'volume', 'create', 'open', '--size', '1G');
    await cliJson(h, 'attach', 'open');
    await run('qemu-io', ['-t', 'none', '-c', `write -s ${knownFile} 0 1M`, image(h, 'open')]);
    await cliJson(h, 'snapshot', 'create', 'open');
    t.ok(leaks(await allObjects(raw), known).length > 0, 'without encryption the scan finds the plaintext (so the scan above can see a leak)');
    const before = (await allObjects(raw)).map((o) => o.key).sort();
    const k = await makeHost(t, 'plain-k');
    await useS3(k, swift, bucket);
    k.env = { ISLAND_KEY_FILE: join(k.dataDir, 'k.key') };
    t.equal((await failing(k, 'store', 'init-key')).error, 'ENCRYPTION_MIXED');
    t.same((await allObjects(raw)).map((o) => o.key).sort(), before, 'nothing written');
  });
}
