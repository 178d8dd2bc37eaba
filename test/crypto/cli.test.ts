/**
 * `island store init-key` and `island store key add|list|remove` through the built CLI on
 * the embedded (fs) store: exit codes, the codes of refusals, nothing written when refused,
 * rotation of key files.
 */
import t from 'tap';
import { chmod, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FsStore } from '../../src/store/fs.js';
import { listAll } from '../../src/store/types.js';
import { cli, makeHost, type Host } from '../helpers/daemon.js';

async function storeObjects(h: Host): Promise<string[]> {
  const s = new FsStore(h.storeDir);
  try {
    const out: string[] = [];
    for await (const o of listAll(s, '')) out.push(o.key);
    return out.sort();
  } finally {
    await s.close();
  }
}

function errorCode(r: { stdout: string }): string {
  return (JSON.parse(r.stdout) as { error: { code: string } }).error.code;
}

t.test('init-key, add, list, remove: rotation of key files through the CLI', async (t) => {
  const h = await makeHost(t, 'crypto-cli');
  const keyA = join(h.dataDir, 'a.key');
  const keyB = join(h.dataDir, 'b.key');
  const passA = join(h.dataDir, 'pass-a');
  const passB = join(h.dataDir, 'pass-b');
  await writeFile(passA, 'first passphrase\n', { mode: 0o600 });
  await writeFile(passB, 'second passphrase\n', { mode: 0o600 });
  h.env = { ISLAND_KEY_FILE: keyA, ISLAND_KEY_PASSPHRASE_FILE: passA };

  const init = await cli(h, 'store', 'init-key', '--label', 'ops', '--json');
  t.equal(init.code, 0, init.stderr + init.stdout);
  const made = JSON.parse(init.stdout) as { repository: string; keyFile: string; path: string };
  t.equal(made.path, keyA);
  t.equal((await stat(keyA)).mode & 0o777, 0o600, 'key file mode 0600');
  t.same(await storeObjects(h), ['crypto/keyfiles/' + made.keyFile, 'crypto/repository'].sort());
  const human = await cli(h, 'store', 'init-key');
  t.equal(human.code, 1, 'a second init-key fails with exit 1');
  t.match(human.stderr, /ALREADY_EXISTS/);

  const add = await cli(h, 'store', 'key', 'add', keyB, '--passphrase-file', passB, '--label', 'backup', '--json');
  t.equal(add.code, 0, add.stderr + add.stdout);
  const b = JSON.parse(add.stdout) as { keyFile: string };
  const list = JSON.parse((await cli(h, 'store', 'key', 'list', '--json')).stdout) as { keyFiles: { id: string; label: string; inUse: boolean; authentic: boolean }[] };
  t.same(list.keyFiles.map((k) => [k.label, k.inUse, k.authentic]).sort(), [['backup', false, true], ['ops', true, true]]);

  // Rotate: switch to key file B, remove A. A no longer opens the repository.
  h.env = { ISLAND_KEY_FILE: keyB, ISLAND_KEY_PASSPHRASE_FILE: passB };
  const rm = await cli(h, 'store', 'key', 'remove', made.keyFile, '--json');
  t.equal(rm.code, 0, rm.stdout + rm.stderr);
  const self = await cli(h, 'store', 'key', 'remove', b.keyFile, '--json');
  t.equal(self.code, 2, 'removing the key file in use is refused as an invalid argument');
  h.env = { ISLAND_KEY_FILE: keyA, ISLAND_KEY_PASSPHRASE_FILE: passA };
  const revoked = await cli(h, 'store', 'key', 'list', '--json');
  t.equal(revoked.code, 1);
  t.equal(errorCode(revoked), 'KEY_REVOKED');
});

t.test('refusals exit 1 with one code and write nothing', async (t) => {
  const h = await makeHost(t, 'crypto-cli-refuse');
  const key = join(h.dataDir, 'k.key');
  h.env = { ISLAND_KEY_FILE: key };
  t.equal((await cli(h, 'store', 'init-key')).code, 0);
  const objects = await storeObjects(h);

  await chmod(key, 0o644);
  const unsafe = await cli(h, 'store', 'key', 'list', '--json');
  t.equal(unsafe.code, 1);
  t.equal(errorCode(unsafe), 'KEY_FILE_UNSAFE');
  await chmod(key, 0o600);

  const pass = join(h.dataDir, 'pass');
  await writeFile(pass, 'not the passphrase (the key file has none)', { mode: 0o600 });
  h.env = { ISLAND_KEY_FILE: key, ISLAND_KEY_PASSPHRASE_FILE: pass };
  const wrong = await cli(h, 'store', 'key', 'add', join(h.dataDir, 'x.key'), '--json');
  t.equal(wrong.code, 1);
  t.equal(errorCode(wrong), 'KEY_MISMATCH');

  // A key file of another repository against this store.
  const other = await makeHost(t, 'crypto-cli-other');
  const otherKey = join(other.dataDir, 'o.key');
  other.env = { ISLAND_KEY_FILE: otherKey };
  t.equal((await cli(other, 'store', 'init-key')).code, 0);
  h.env = { ISLAND_KEY_FILE: otherKey };
  const mismatch = await cli(h, 'store', 'key', 'add', join(h.dataDir, 'y.key'), '--json');
  t.equal(mismatch.code, 1);
  t.equal(errorCode(mismatch), 'KEY_MISMATCH');

  h.env = {};
  const missing = await cli(h, 'store', 'key', 'add', join(h.dataDir, 'z.key'), '--json');
  t.equal(missing.code, 2, 'no key file configured: an invalid invocation');
  t.same(await storeObjects(h), objects, 'the store is unchanged');
  t.same((await readdir(h.dataDir)).filter((n) => /^[xyz]\.key$/.test(n)), [], 'no key file was written');
});

t.test('init-key on a store that holds unencrypted data is refused (ENCRYPTION_MIXED) and writes nothing', async (t) => {
  const h = await makeHost(t, 'crypto-cli-mixed');
  const s = new FsStore(h.storeDir);
  await s.put('volumes/vm1', Buffer.from('a catalog record'));
  await s.close();
  h.env = { ISLAND_KEY_FILE: join(h.dataDir, 'k.key') };
  const r = await cli(h, 'store', 'init-key', '--json');
  t.equal(r.code, 1);
  t.equal(errorCode(r), 'ENCRYPTION_MIXED');
  t.same(await storeObjects(h), ['volumes/vm1']);
  t.notOk((await readdir(h.dataDir)).includes('k.key'), 'no key file written');
});
