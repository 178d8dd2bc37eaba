/**
 * Sealed records (src/format/encrypted-record.ts) and the two key objects of the store
 * (src/format/encryption-record.ts): golden layout, round trips, tamper detection, records
 * moved to another name, fuzzing.
 */
import t from 'tap';
import { createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { RepositoryKeys } from '../../src/crypto/keys.js';
import { isErrorCode } from '../../src/errors.js';
import { sha256 } from '../../src/format/bytes.js';
import { isSealedRecord, openRecord, RECORD_FLAG_SEALED, SEAL_OVERHEAD } from '../../src/format/encrypted-record.js';
import {
  decodeEncryptionRecord,
  decodeKeyFileEntry,
  ENC_RECORD_LEN,
  encodeEncryptionRecord,
  encodeKeyFileEntry,
} from '../../src/format/encryption-record.js';
import { decodeTombstone, encodeTombstone, type Tombstone } from '../../src/format/records.js';
import { Rng } from '../../src/util/random.js';

const keys = new RepositoryKeys(Buffer.alloc(32, 0x11), Buffer.alloc(16, 0x22), 3);
const tomb: Tombstone = { snapshot: '01HZX3C6Y1V8K9E2R5T7W0Q4MN', volume: 'vm1-root', created: Date.UTC(2024, 4, 1, 12, 0, 0, 1), host: 'node-1', reason: 'retention: older than 30 days', forced: false };
const NAME = 'tombstones/01HZX3C6Y1V8K9E2R5T7W0Q4MN';

t.test('a sealed record: layout by the table, independent decryption, round trip to the same plain bytes', async (t) => {
  const plain = encodeTombstone(tomb);
  const salt = Buffer.alloc(16, 0x44);
  const sealed = keys.sealRecord(plain, NAME, salt);
  t.ok(isSealedRecord(sealed));
  t.notOk(isSealedRecord(plain));
  t.same(sealed.subarray(0, 6), plain.subarray(0, 6), 'magic and version kept');
  t.equal(sealed.readUInt16BE(6), RECORD_FLAG_SEALED);
  const n = sealed.readUInt32BE(8);
  t.equal(n, plain.length - 44 + SEAL_OVERHEAD, 'body length = plain body + 36');
  t.same(sealed.subarray(12, 28), salt);
  t.equal(sealed.readUInt32BE(28), 3, 'key id');
  t.same(sealed.subarray(12 + n), sha256(sealed.subarray(0, 12 + n)), 'envelope checksum');
  t.equal(sealed.indexOf(Buffer.from('vm1-root')), -1, 'the volume name is not in the sealed body');
  t.equal(sealed.indexOf(Buffer.from('retention')), -1);
  // By the spec: subkey = HKDF(data key 3, salt, "island record v1"), nonce 0, AD = header || name.
  const dataKey = Buffer.from(hkdfSync('sha256', Buffer.alloc(32, 0x11), Buffer.alloc(16, 0x22), Buffer.concat([Buffer.from('island data key v1'), Buffer.from([0, 0, 0, 3])]), 32));
  const sub = Buffer.from(hkdfSync('sha256', dataKey, salt, Buffer.from('island record v1'), 32));
  const d = createDecipheriv('aes-256-gcm', sub, Buffer.alloc(12));
  d.setAAD(Buffer.concat([sealed.subarray(0, 12), Buffer.from(NAME)]));
  d.setAuthTag(sealed.subarray(12 + n - 16, 12 + n));
  const body = Buffer.concat([d.update(sealed.subarray(32, 12 + n - 16)), d.final()]);
  t.same(body, plain.subarray(12, plain.length - 32));
  const opened = keys.openRecord(sealed, NAME);
  t.same(opened, plain, 'openRecord gives back the plain record byte for byte');
  t.same(decodeTombstone(opened), tomb);
  t.throws(() => decodeTombstone(sealed), { code: 'FORMAT_UNSUPPORTED' }, 'a build without encryption refuses it, never misreads it');
});

t.test('records moved, tampered, or opened with another key are refused', async (t) => {
  const sealed = keys.sealRecord(encodeTombstone(tomb), NAME);
  t.throws(() => keys.openRecord(sealed, 'tombstones/01HZX3C6Y1V8K9E2R5T7W0Q4MA'), { code: 'AUTH_FAILED' }, 'under another name');
  t.throws(() => RepositoryKeys.generate().openRecord(sealed, NAME), { code: 'AUTH_FAILED' }, 'another master key');
  t.throws(() => openRecord(sealed, NAME, () => undefined), { code: 'KEY_MISSING' });
  t.throws(() => keys.openRecord(encodeTombstone(tomb), NAME), { code: 'FORMAT_UNSUPPORTED', message: /not encrypted/ }, 'an unencrypted record in an encrypted repository');
  let authFailed = 0;
  for (let i = 12; i < sealed.length - 32; i++) {
    const f = Buffer.from(sealed);
    f[i] = (f[i] as number) ^ 0x80;
    f.set(sha256(f.subarray(0, f.length - 32)), f.length - 32); // re-checksummed: only the tag can tell
    try {
      keys.openRecord(f, NAME);
      t.fail(`byte ${i} changed and opened`);
    } catch (err) {
      if ((err as { code?: string }).code === 'AUTH_FAILED') authFailed++;
    }
  }
  t.equal(authFailed, sealed.length - 32 - 12, 'every byte of the sealed body (salt, key id, ciphertext, tag) fails authentication');
});

t.test('fuzz: mutated sealed records fail with a known code', async (t) => {
  const rnd = new Rng(77);
  const sealed = keys.sealRecord(encodeTombstone(tomb), NAME);
  const outcomes = new Map<string, number>();
  for (let i = 0; i < 10_000; i++) {
    let f = Buffer.from(sealed);
    const op = rnd.int(3);
    if (op === 0) f[rnd.int(f.length)] = rnd.int(256);
    else if (op === 1) f = f.subarray(0, rnd.int(f.length));
    else f = Buffer.concat([f, randomBytes(1 + rnd.int(40))]);
    try {
      t.same(keys.openRecord(f, NAME), encodeTombstone(tomb));
      outcomes.set('ok', (outcomes.get('ok') ?? 0) + 1);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (!isErrorCode(code) || !['AUTH_FAILED', 'FORMAT_CORRUPT', 'FORMAT_UNSUPPORTED', 'KEY_MISSING'].includes(code)) {
        t.fail(`unexpected ${String(code)}`);
        return;
      }
      outcomes.set(code, (outcomes.get(code) ?? 0) + 1);
    }
  }
  t.ok(outcomes.get('FORMAT_CORRUPT'), `outcomes ${JSON.stringify([...outcomes])}`);
});

t.test('the repository encryption record: golden bytes, round trip, damage', async (t) => {
  const rec = { repositoryId: Buffer.alloc(16, 0x22), idKeyCheck: keys.idKeyCheck(), created: Date.UTC(2026, 11, 7) };
  const b = encodeEncryptionRecord(rec);
  t.equal(b.length, ENC_RECORD_LEN);
  t.equal(b.subarray(0, 28).toString('hex'), '49535245' + '0001' + '0000' + '22'.repeat(16) + '01' + '01' + '01' + '00');
  t.equal(b.readBigUInt64BE(60), BigInt(rec.created));
  t.same(b.subarray(72), sha256(b.subarray(0, 72)));
  t.same(decodeEncryptionRecord(b), rec);
  t.notOk(b.includes(keys.idKey), 'the id key itself is not in the record');
  for (let i = 0; i < b.length; i++) {
    const f = Buffer.from(b);
    f[i] = (f[i] as number) ^ 1;
    t.throws(() => decodeEncryptionRecord(f), { code: /FORMAT_CORRUPT|FORMAT_UNSUPPORTED/ });
  }
  t.throws(() => decodeEncryptionRecord(b.subarray(0, 50)), { code: 'FORMAT_CORRUPT' });
});

t.test('key file entries: MAC under the registry key, labels bounded', async (t) => {
  const e = { keyFileId: Buffer.alloc(16, 0x55), created: 1_700_000_000_000, label: 'ops laptop ünïcode' };
  const b = encodeKeyFileEntry(e, keys.registryKey);
  t.same(decodeKeyFileEntry(b, keys.registryKey), { ...e, authentic: true });
  t.same(decodeKeyFileEntry(b), { ...e, authentic: false }, 'readable without the key, not authenticated');
  t.throws(() => decodeKeyFileEntry(b, RepositoryKeys.generate().registryKey), { code: 'AUTH_FAILED' });
  const f = Buffer.from(b);
  f[40] = (f[40] as number) ^ 1;
  t.throws(() => decodeKeyFileEntry(f, keys.registryKey), { code: 'AUTH_FAILED' });
  t.throws(() => encodeKeyFileEntry({ ...e, label: 'two\nlines' }, keys.registryKey), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeKeyFileEntry({ ...e, label: 'x'.repeat(201) }, keys.registryKey), { code: 'INVALID_ARGUMENT' });
  t.throws(() => decodeKeyFileEntry(b.subarray(0, b.length - 1), keys.registryKey), { code: 'FORMAT_CORRUPT' });
});
