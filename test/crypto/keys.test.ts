/**
 * Key files (src/crypto/key-file.ts) and the refusal logic of src/crypto/repository.ts on
 * the real fs store: mode 0600 enforced, wrong passphrases and wrong keys refused with one
 * clear code, nothing written on a refusal, unencrypted stores untouched, mixing refused.
 */
import t from 'tap';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeKeyFile, encodeKeyFile, KEY_FILE_LEN, loadKeyFile, readPassphrase, writeKeyFile } from '../../src/crypto/key-file.js';
import { RepositoryKeys } from '../../src/crypto/keys.js';
import { ENCRYPTION_RECORD_KEY, initializeRepository, keyFileEntryKey, listKeyFiles, openRepository, registerKeyFile, removeKeyFile } from '../../src/crypto/repository.js';
import { FsStore } from '../../src/store/fs.js';
import { listAll, type ObjectStore } from '../../src/store/types.js';

/** Cheap scrypt for tests (the minimum the decoder accepts); the CLI uses the default. */
const FAST = { scrypt: { logN: 14, r: 8, p: 1 } };

async function tmp(t: Tap.Test): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'island-crypto-'));
  t.teardown(() => rm(d, { recursive: true, force: true }));
  return d;
}

async function objects(store: ObjectStore): Promise<string[]> {
  const out: string[] = [];
  for await (const o of listAll(store, '')) out.push(o.key);
  return out.sort();
}

t.test('a key file: layout, passphrase, wrong passphrase, damage', async (t) => {
  const keys = RepositoryKeys.generate(4);
  const pass = Buffer.from('correct horse battery staple');
  const { bytes, keyFileId } = await encodeKeyFile(keys, pass, FAST);
  t.equal(bytes.length, KEY_FILE_LEN);
  t.equal(bytes.subarray(0, 8).toString('hex'), '49534b4600010000', 'magic, version 1, flags 0 (has a passphrase)');
  t.same(bytes.subarray(8, 24), keyFileId);
  t.same(bytes.subarray(24, 40), keys.repositoryId);
  t.equal(bytes.subarray(40, 44).toString('hex'), '010e0801', 'scrypt, N = 2^14, r = 8, p = 1');
  t.equal(bytes.readUInt32BE(76), 4, 'data key id');
  t.notOk(bytes.includes(keys.masterForWrapping()), 'the master key is not in the file in clear');
  const back = await decodeKeyFile(bytes, pass);
  t.same(back.keys.idKey, keys.idKey, 'unwraps to the same master key');
  t.same(back.keyFileId, keyFileId);
  t.equal(back.keys.writeKeyId, 4);
  await t.rejects(decodeKeyFile(bytes, Buffer.from('wrong')), { code: 'KEY_MISMATCH' });
  await t.rejects(decodeKeyFile(bytes, Buffer.alloc(0)), { code: 'KEY_MISSING' }, 'no passphrase configured for a file that has one');
  for (const at of [10, 30, 41, 50, 77, 100, 140]) {
    const f = Buffer.from(bytes);
    f[at] = (f[at] as number) ^ 1;
    await t.rejects(decodeKeyFile(f, pass), { code: /KEY_MISMATCH|FORMAT_UNSUPPORTED/ }, `byte ${at} changed`);
  }
  const bare = await encodeKeyFile(keys, Buffer.alloc(0), FAST);
  t.equal(bare.bytes.readUInt16BE(6), 1, 'flag: no passphrase');
  t.same((await decodeKeyFile(bare.bytes, Buffer.alloc(0))).keys.idKey, keys.idKey);
  await t.rejects(decodeKeyFile(bare.bytes, pass), { code: 'KEY_MISMATCH' });
  // A hostile file asking for a huge scrypt cost is refused before scrypt runs.
  const hostile = Buffer.from(bytes);
  hostile[41] = 30;
  await t.rejects(decodeKeyFile(hostile, pass), { code: 'KEY_MISMATCH', message: /log2\(N\)/ });
});

t.test('key and passphrase files must be 0600: readable by others is refused, contents unread', async (t) => {
  const d = await tmp(t);
  const { bytes } = await encodeKeyFile(RepositoryKeys.generate(), Buffer.alloc(0), FAST);
  const path = join(d, 'island.key');
  await writeKeyFile(path, bytes);
  t.same((await loadKeyFile(path, Buffer.alloc(0))).keyFileId, bytes.subarray(8, 24));
  await t.rejects(writeKeyFile(path, bytes), { code: 'ALREADY_EXISTS' }, 'never overwritten');
  t.same(await readFile(path), bytes);
  for (const mode of [0o644, 0o640, 0o604, 0o620]) {
    await chmod(path, mode);
    await t.rejects(loadKeyFile(path, Buffer.alloc(0)), { code: 'KEY_FILE_UNSAFE', message: new RegExp(`mode 0${mode.toString(8)}`) });
  }
  await chmod(path, 0o400);
  t.ok(await loadKeyFile(path, Buffer.alloc(0)), '0400 is fine');
  await t.rejects(loadKeyFile(join(d, 'missing.key'), Buffer.alloc(0)), { code: 'KEY_MISSING' });
  const pf = join(d, 'pass');
  await writeFile(pf, 'secret\n', { mode: 0o644 });
  await chmod(pf, 0o644);
  await t.rejects(readPassphrase(pf), { code: 'KEY_FILE_UNSAFE' });
  await chmod(pf, 0o600);
  t.equal((await readPassphrase(pf)).toString(), 'secret', 'one trailing newline dropped');
});

t.test('repository: unencrypted store keeps working; mixing, missing, wrong and revoked keys are refused and write nothing', async (t) => {
  const d = await tmp(t);
  const plainStore = new FsStore(join(d, 'plain'));
  const encStore = new FsStore(join(d, 'enc'));
  t.teardown(async () => {
    await plainStore.close();
    await encStore.close();
  });
  const a = await decodeKeyFile((await encodeKeyFile(RepositoryKeys.generate(), Buffer.alloc(0), FAST)).bytes, Buffer.alloc(0));
  const stranger = await decodeKeyFile((await encodeKeyFile(RepositoryKeys.generate(), Buffer.alloc(0), FAST)).bytes, Buffer.alloc(0));

  // An unencrypted store with data: no key works as before; a key is refused (ENCRYPTION_MIXED).
  await plainStore.put('snapshots/vm1/01HZX3C6Y1V8K9E2R5T7W0Q4MN', Buffer.from('a manifest'));
  t.same(await openRepository(plainStore, undefined), { encrypted: false });
  const before = await objects(plainStore);
  await t.rejects(openRepository(plainStore, a), { code: 'ENCRYPTION_MIXED' });
  await t.rejects(initializeRepository(plainStore, a, 'x'), { code: 'ENCRYPTION_MIXED' });
  t.same(await objects(plainStore), before, 'nothing written');

  // An empty store becomes encrypted at first use with a key.
  const opened = await openRepository(encStore, a, { label: 'first' });
  t.ok(opened.encrypted);
  t.same(await objects(encStore), [keyFileEntryKey(a.keyFileId), ENCRYPTION_RECORD_KEY].sort());
  const rec = await encStore.get(ENCRYPTION_RECORD_KEY);
  t.notOk(rec.includes(a.keys.idKey) || rec.includes(a.keys.masterForWrapping()), 'the record holds no key');
  const snapshot = await objects(encStore);
  await t.rejects(openRepository(encStore, undefined), { code: 'KEY_MISSING' }, 'no key');
  await t.rejects(openRepository(encStore, stranger), { code: 'KEY_MISMATCH' }, 'another master key');
  await t.rejects(initializeRepository(encStore, stranger, 'x'), { code: 'ALREADY_EXISTS' }, 'the record is write-once');
  t.same(await objects(encStore), snapshot, 'nothing written by any refusal');

  // A second key file for the same master key: registered, listed; the first can then be revoked by the second.
  const bBytes = (await encodeKeyFile(a.keys, Buffer.from('pw2'), FAST)).bytes;
  const b = await decodeKeyFile(bBytes, Buffer.from('pw2'));
  await t.rejects(openRepository(encStore, b), { code: 'KEY_REVOKED' }, 'not registered yet');
  await registerKeyFile(encStore, a.keys, b.keyFileId, 'second');
  t.ok((await openRepository(encStore, b)).encrypted);
  const listed = await listKeyFiles(encStore, b.keys);
  t.same(listed.map((l) => [l.label, l.authentic]).sort(), [['first', true], ['second', true]]);
  await t.rejects(removeKeyFile(encStore, a, a.keyFileId), { code: 'INVALID_ARGUMENT' }, 'not the key file in use');
  await removeKeyFile(encStore, b, a.keyFileId);
  await t.rejects(openRepository(encStore, a), { code: 'KEY_REVOKED' });
  t.ok((await openRepository(encStore, b)).encrypted, 'the other key file still opens it');
  // An entry forged without the master key does not count as authentic.
  await registerKeyFile(encStore, stranger.keys, stranger.keyFileId, 'forged');
  await t.rejects(openRepository(encStore, stranger), { code: 'KEY_MISMATCH' });
  t.same((await listKeyFiles(encStore, b.keys)).find((l) => l.label === 'forged')?.authentic, false, 'a listing marks it');
});

t.test('openEncryption: the store and frame codec a process uses, refusals before any write', async (t) => {
  const { openEncryption, requireReadable } = await import('../../src/crypto/open.js');
  const d = await tmp(t);
  const store = new FsStore(join(d, 'store'));
  t.teardown(() => store.close());
  const plain = await openEncryption(store, { keyFile: undefined, keyPassphraseFile: undefined });
  t.equal(plain.encrypted, false);
  t.equal(plain.store, store, 'an unencrypted store is used as it is');
  await requireReadable(store, false, 'GC');
  const key = join(d, 'k.key');
  await writeKeyFile(key, (await encodeKeyFile(RepositoryKeys.generate(), Buffer.alloc(0), FAST)).bytes);
  const enc = await openEncryption(store, { keyFile: key, keyPassphraseFile: undefined });
  t.ok(enc.encrypted && enc.frames.encrypted, 'an empty store becomes encrypted at first use');
  await t.rejects(requireReadable(store, false, 'GC'), { code: 'KEY_MISSING', message: /GC deleted nothing/ });
  await requireReadable(store, true, 'GC');
  await t.rejects(openEncryption(store, { keyFile: undefined, keyPassphraseFile: undefined }), { code: 'KEY_MISSING' });
});

t.test('fuzz: mutated key files fail with a known code, never unwrap to another key', async (t) => {
  const keys = RepositoryKeys.generate();
  const { bytes } = await encodeKeyFile(keys, Buffer.alloc(0), FAST);
  const codes = new Map<string, number>();
  for (let i = 0; i < 300; i++) {
    const f = Buffer.from(bytes);
    const at = (i * 7919) % f.length;
    f[at] = (f[at] as number) ^ (1 + (i % 255));
    try {
      const k = await decodeKeyFile(f, Buffer.alloc(0));
      t.same(k.keys.idKey, keys.idKey, 'only a harmless change unwraps, and to the same key');
      codes.set('ok', (codes.get('ok') ?? 0) + 1);
    } catch (err) {
      const code = (err as { code?: string }).code ?? 'none';
      t.ok(['KEY_MISMATCH', 'KEY_MISSING', 'FORMAT_UNSUPPORTED'].includes(code), `known code ${code}`);
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
  }
  t.notOk(codes.has('ok'), `every change is refused: ${JSON.stringify([...codes])}`);
});

t.test('openRegionStore: a copy target is checked on first use; another key is KEY_MISMATCH, nothing written', async (t) => {
  const { openRegionStore } = await import('../../src/crypto/open.js');
  const d = await tmp(t);
  const mine = await decodeKeyFile((await encodeKeyFile(RepositoryKeys.generate(), Buffer.alloc(0), FAST)).bytes, Buffer.alloc(0));
  const theirs = await decodeKeyFile((await encodeKeyFile(RepositoryKeys.generate(), Buffer.alloc(0), FAST)).bytes, Buffer.alloc(0));
  const empty = new FsStore(join(d, 'empty'));
  const foreign = new FsStore(join(d, 'foreign'));
  t.teardown(async () => {
    await empty.close();
    await foreign.close();
  });
  await initializeRepository(foreign, theirs, 'theirs');
  const before = await objects(foreign);
  const target = openRegionStore(foreign, mine);
  t.ok(target.frames.encrypted);
  await t.rejects(target.store.put('snapshots/v/01HZX3C6Y1V8K9E2R5T7W0Q4MN', Buffer.from('x')), { code: 'KEY_MISMATCH' });
  await t.rejects(target.store.get('snapshots/v/01HZX3C6Y1V8K9E2R5T7W0Q4MN'), { code: 'KEY_MISMATCH' });
  t.same(await objects(foreign), before, 'nothing written to the other repository');
  const fresh = openRegionStore(empty, mine);
  await fresh.store.put('hosts/h1', Buffer.alloc(0));
  t.same(await objects(empty), [keyFileEntryKey(mine.keyFileId), ENCRYPTION_RECORD_KEY, 'hosts/h1'].sort(), 'an empty region takes the same repository key');
  t.ok((await openRepository(empty, mine)).encrypted);
  const plainTarget = openRegionStore(foreign, undefined);
  t.notOk(plainTarget.frames.encrypted);
  await t.rejects(plainTarget.store.list('snapshots/'), { code: 'KEY_MISSING' }, 'no key for an encrypted region');
});
