/**
 * Copy between regions of an encrypted repository, on a real Swift: an empty target region
 * takes the same repository key, the copy restores byte-identical on a host that knows only
 * the target, no plaintext reaches it; a target whose record names another key is refused
 * with KEY_MISMATCH and receives nothing.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { S3Store } from '../../src/store/s3.js';
import { listAll, type ObjectStore } from '../../src/store/types.js';
import { cli, cliJson, image, makeHost, run, serve, type Host } from '../helpers/daemon.js';
import { uniqueBucket, useSwift, type SwiftInfo } from '../helpers/swift.js';

async function keysIn(store: ObjectStore, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for await (const o of listAll(store, prefix)) out.push(o.key);
  return out.sort();
}

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`copy tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;
  async function configure(h: Host, home: string, regions: Record<string, string>, sw: SwiftInfo): Promise<void> {
    h.configFile = join(h.dataDir, 'island.json');
    const decl = Object.fromEntries(Object.entries(regions).map(([name, bucket]) => [name, { type: 's3', ...sw, bucket }]));
    await writeFile(h.configFile, JSON.stringify({ region: home, regions: decl }));
  }

  t.test('encrypted copy: same key in the target, byte-identical restore there; another key is KEY_MISMATCH', async (t) => {
    const [bucketA, bucketB, bucketC] = [uniqueBucket('ecopy-a'), uniqueBucket('ecopy-b'), uniqueBucket('ecopy-c')];
    const a = await makeHost(t, 'ecopy-a');
    await configure(a, 'swift-a', { 'swift-a': bucketA, 'swift-b': bucketB, 'swift-c': bucketC }, swift);
    const keyA = join(a.dataDir, 'a.key');
    a.env = { ISLAND_KEY_FILE: keyA };
    t.equal((await cli(a, 'store', 'init-key')).code, 0);
    // Region C is another repository.
    const o = await makeHost(t, 'ecopy-o');
    await configure(o, 'swift-c', { 'swift-c': bucketC }, swift);
    o.env = { ISLAND_KEY_FILE: join(o.dataDir, 'o.key') };
    t.equal((await cli(o, 'store', 'init-key')).code, 0);
    const storeB = new S3Store({ ...swift, bucket: bucketB });
    const storeC = new S3Store({ ...swift, bucket: bucketC });
    t.teardown(() => Promise.all([storeB.close(), storeC.close()]));

    await serve(a);
    const known = randomBytes(512 * 1024);
    const knownFile = join(a.dataDir, 'known.bin');
    await writeFile(knownFile, known);
    await cliJson(a, 'volume', 'create', 'vm', '--size', '64M');
    await cliJson(a, 'attach', 'vm');
    await run('qemu-io', ['-t', 'none', '-c', `write -s ${knownFile} 0 512k`, '-c', 'write -P 0x42 40M 1M', image(a, 'vm')]);
    const s1 = ((await cliJson(a, 'snapshot', 'create', 'vm')).snapshots as { id: string }[])[0]!.id;

    const beforeC = await keysIn(storeC);
    const refused = await cli(a, 'snapshot', 'copy', s1, '--to', 'swift-c', '--wait');
    t.not(refused.code, 0, 'the copy to another repository fails');
    t.match(refused.stdout + refused.stderr, /KEY_MISMATCH/, `with KEY_MISMATCH: ${(refused.stdout + refused.stderr).trim().slice(0, 300)}`);
    t.same(await keysIn(storeC), beforeC, 'and the other repository receives nothing');

    const c1 = await cliJson(a, 'snapshot', 'copy', s1, '--to', 'swift-b', '--wait');
    t.ok((c1.packsCopied as number) > 0, `packs copied (${c1.packsCopied})`);
    const objects = await keysIn(storeB);
    t.ok(objects.includes('crypto/repository'), 'the target region is an encrypted repository now');
    for (const k of objects) {
      const bytes = await storeB.get(k);
      for (let i = 0; i + 32 <= known.length; i += 8192) if (bytes.includes(known.subarray(i, i + 32))) t.fail(`plaintext in ${k}`);
    }

    const b = await makeHost(t, 'ecopy-b');
    await configure(b, 'swift-b', { 'swift-b': bucketB }, swift);
    const keyB = join(b.dataDir, 'a.key');
    await copyFile(keyA, keyB);
    b.env = { ISLAND_KEY_FILE: keyB };
    await serve(b);
    await cliJson(b, 'attach', 'vm');
    const r = await run('qemu-io', ['-c', 'read -P 0x42 40M 1M', image(b, 'vm')]);
    t.notMatch(r.stdout, /Pattern verification failed/, 'host b, which knows only region B, reads the copy');
    const rawOut = join(b.dataDir, 'vm.raw');
    await run('qemu-img', ['convert', '-O', 'raw', image(b, 'vm'), rawOut]);
    const { readFile } = await import('node:fs/promises');
    t.ok((await readFile(rawOut)).subarray(0, known.length).equals(known), 'the known bytes come back exactly, decrypted from region B');
  });
}
