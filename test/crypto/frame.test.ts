/**
 * Encrypted frames (src/format/encrypted-frame.ts): golden bytes checked against the byte
 * table by an independent computation from the spec, round trips over codecs and sizes,
 * every single-bit flip detected, frames moved or relabelled refused, and fuzzed input that
 * only ever fails with a known code.
 */
import t from 'tap';
import { createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { RepositoryKeys } from '../../src/crypto/keys.js';
import { isErrorCode } from '../../src/errors.js';
import { BLOB_HEADER_LEN, decodeBlob, encodeBlob } from '../../src/format/blob.js';
import { CODEC_LZ4, CODEC_NONE } from '../../src/format/codec.js';
import {
  decodeEncryptedBlob,
  encodeEncryptedBlob,
  FN_INDEX_OFF,
  FN_SALT_OFF,
  GCM_TAG_LEN,
  packSealKey,
  readEncryptedFrameHeader,
} from '../../src/format/encrypted-frame.js';
import { Rng } from '../../src/util/random.js';

const MASTER = Buffer.alloc(32, 0x11);
const REPO = Buffer.alloc(16, 0x22);
const SALT = Buffer.alloc(16, 0x33);
const keys = new RepositoryKeys(MASTER, REPO, 7);

const GOLDEN_PLAIN = Buffer.from('0123456789abcdef');
// Frame 5 of a data pack with salt 33..33, key id 7, at offset 4096; 16 incompressible bytes.
const GOLDEN_FRAME = Buffer.from(
  '49534c42' + '01' + '01' + '00' + '00' + '00000007' + '33'.repeat(16) + '00000005' + '00000000' + '00000010' + '00000020' +
    '2898f749b8f0be941a81172b12612dcfba6d9ddf4fcd3730da4c4be5fe81e449' + '97d82741' +
    'adf6aa7f2d469d3dfa13cba9534e011f' + '26b3dffdde884e78b34b0e23cf3464a9',
  'hex',
);

t.test('golden frame: the bytes of the table, and an independent decryption from the spec', async (t) => {
  const pk = packSealKey(7, keys.encKey(7) as Buffer, SALT, 'data');
  const e = encodeEncryptedBlob(GOLDEN_PLAIN, pk, keys.idKey, 5, 4096);
  t.equal(e.frame.toString('hex'), GOLDEN_FRAME.toString('hex'), 'golden bytes');
  t.equal(e.codec, CODEC_NONE);
  // From the spec alone: HKDF chain, HMAC id, CRC, AES-256-GCM with AD = header[0..76) || u64 offset.
  const dataKey = Buffer.from(hkdfSync('sha256', MASTER, REPO, Buffer.concat([Buffer.from('island data key v1'), Buffer.from([0, 0, 0, 7])]), 32));
  const idKey = Buffer.from(hkdfSync('sha256', MASTER, REPO, Buffer.from('island id key v1'), 32));
  const sub = Buffer.from(hkdfSync('sha256', dataKey, SALT, Buffer.concat([Buffer.from('island frame v1'), Buffer.from([1])]), 32));
  t.same(GOLDEN_FRAME.subarray(44, 76), createHmac('sha256', idKey).update(GOLDEN_PLAIN).digest(), 'blob id = HMAC-SHA-256(id key, plain)');
  t.equal(GOLDEN_FRAME.readUInt32BE(76), crc32(GOLDEN_FRAME.subarray(0, 76)) >>> 0, 'header CRC');
  const nonce = Buffer.concat([Buffer.alloc(8), Buffer.from([0, 0, 0, 5])]);
  const d = createDecipheriv('aes-256-gcm', sub, nonce);
  const off = Buffer.alloc(8);
  off.writeBigUInt64BE(4096n);
  d.setAAD(Buffer.concat([GOLDEN_FRAME.subarray(0, 76), off]));
  d.setAuthTag(GOLDEN_FRAME.subarray(GOLDEN_FRAME.length - 16));
  const plain = Buffer.concat([d.update(GOLDEN_FRAME.subarray(80, GOLDEN_FRAME.length - 16)), d.final()]);
  t.same(plain, GOLDEN_PLAIN, 'decrypts by the spec');
  t.same(decodeEncryptedBlob(GOLDEN_FRAME, keys, e.id, { frameOffset: 4096, kind: 'data', packSalt: SALT, index: 5 }), GOLDEN_PLAIN, 'and by the decoder');
  const h = readEncryptedFrameHeader(GOLDEN_FRAME);
  t.equal(h.keyId, 7);
  t.equal(h.index, 5);
  t.same(h.salt, SALT);
});

t.test('round trips: sizes, codecs, kinds, key ids; the plain bytes never appear in the frame', async (t) => {
  const rnd = new Rng(18);
  const k2 = keys.withWriteKeyId(9);
  const seen = new Set<number>();
  let offset = 0;
  const pk = k2.newPackKey('data');
  for (let i = 0; i < 60; i++) {
    const n = [0, 1, 15, 16, 4096, 65536, 2 * 1024 * 1024][i % 7] as number;
    const plain = Buffer.alloc(n);
    if (i % 3 === 0) for (let j = 0; j < n; j++) plain[j] = rnd.int(256);
    else for (let j = 0; j < n; j++) plain[j] = 'island '.charCodeAt(j % 7);
    const e = encodeEncryptedBlob(plain, pk, k2.idKey, i, offset);
    seen.add(e.codec);
    t.equal(e.frame.length, BLOB_HEADER_LEN + readEncryptedFrameHeader(e.frame).sealedLength);
    if (n >= 64) t.equal(e.frame.indexOf(plain.subarray(0, 64)), -1, `frame ${i}: no 64-byte run of the plain bytes`);
    // Read with the key set of another key file for the same master key (write key id 1): every key id stays readable.
    t.same(decodeEncryptedBlob(e.frame, keys, e.id, { frameOffset: offset }), plain);
    t.same(e.id, keys.blobId(plain), 'the id does not depend on the data key id (dedup across rotation)');
    offset += e.frame.length;
  }
  t.ok(seen.has(CODEC_NONE) && seen.has(CODEC_LZ4), 'both codecs were exercised');
});

t.test('every single-bit flip of a frame is detected, never decoded', async (t) => {
  const pk = keys.newPackKey('metadata');
  const plain = Buffer.from('a tree node, or any metadata blob '.repeat(8));
  const e = encodeEncryptedBlob(plain, pk, keys.idKey, 3, 777);
  const codes = new Map<string, number>();
  for (let bit = 0; bit < e.frame.length * 8; bit++) {
    const f = Buffer.from(e.frame);
    f[bit >> 3] = (f[bit >> 3] as number) ^ (1 << (bit & 7));
    try {
      decodeEncryptedBlob(f, keys, e.id, { frameOffset: 777 });
      t.fail(`bit ${bit} flipped and decoded`);
      return;
    } catch (err) {
      const code = (err as { code: string }).code;
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
  }
  t.ok(codes.get('AUTH_FAILED'), `payload and tag flips fail authentication: ${JSON.stringify([...codes])}`);
  t.ok(codes.get('FORMAT_CORRUPT'), 'header flips fail the CRC');
  for (const c of codes.keys()) t.ok(['AUTH_FAILED', 'FORMAT_CORRUPT', 'HASH_MISMATCH', 'FORMAT_UNSUPPORTED'].includes(c), `known code ${c}`);
});

t.test('a header re-signed by someone without the key (valid CRC) still fails authentication', async (t) => {
  const pk = keys.newPackKey('data');
  const plain = randomBytes(4096);
  const e = encodeEncryptedBlob(plain, pk, keys.idKey, 0, 0);
  const resign = (f: Buffer): Buffer => {
    f.writeUInt32BE(crc32(f.subarray(0, 76)) >>> 0, 76);
    return f;
  };
  const index = resign(Buffer.from(e.frame));
  index.writeUInt32BE(1, FN_INDEX_OFF);
  t.throws(() => decodeEncryptedBlob(resign(index), keys, e.id, { frameOffset: 0 }), { code: 'AUTH_FAILED' }, 'another frame index');
  const salt = Buffer.from(e.frame);
  salt[FN_SALT_OFF] = (salt[FN_SALT_OFF] as number) ^ 1;
  t.throws(() => decodeEncryptedBlob(resign(salt), keys, e.id, { frameOffset: 0 }), { code: 'AUTH_FAILED' }, 'another pack salt');
  t.throws(() => decodeEncryptedBlob(e.frame, keys, e.id, { frameOffset: 80 }), { code: 'AUTH_FAILED' }, 'moved to another offset');
  const other = randomBytes(32);
  const relabel = Buffer.from(e.frame);
  other.copy(relabel, 44);
  t.throws(() => decodeEncryptedBlob(resign(relabel), keys, other, { frameOffset: 0 }), { code: 'AUTH_FAILED' }, 'relabelled with another blob id');
  t.throws(() => decodeEncryptedBlob(e.frame, keys, e.id, { frameOffset: 0, packSalt: randomBytes(16) }), { code: 'FORMAT_CORRUPT' }, 'a whole-pack reader sees a foreign salt');
  t.throws(() => decodeEncryptedBlob(e.frame, keys, e.id, { frameOffset: 0, index: 4 }), { code: 'FORMAT_CORRUPT' }, '... and a frame out of its place');
  t.throws(() => decodeEncryptedBlob(e.frame, keys, other, { frameOffset: 0 }), { code: 'HASH_MISMATCH' }, 'a pointer that expects another id');
});

t.test('wrong keys: another master key fails authentication, never returns bytes', async (t) => {
  const pk = keys.newPackKey('data');
  const e = encodeEncryptedBlob(randomBytes(1000), pk, keys.idKey, 0, 0);
  const stranger = RepositoryKeys.generate();
  t.throws(() => decodeEncryptedBlob(e.frame, stranger, e.id, { frameOffset: 0 }), { code: 'AUTH_FAILED' });
  const sameRepoOtherMaster = new RepositoryKeys(randomBytes(32), REPO, 7);
  t.throws(() => decodeEncryptedBlob(e.frame, sameRepoOtherMaster, e.id, { frameOffset: 0 }), { code: 'AUTH_FAILED' });
  const none = { idKey: keys.idKey, encKey: () => undefined };
  t.throws(() => decodeEncryptedBlob(e.frame, none, e.id, { frameOffset: 0 }), { code: 'KEY_MISSING' });
});

t.test('unencrypted and encrypted frames do not pass for each other', async (t) => {
  const plain = randomBytes(100);
  const u = encodeBlob(plain, 'data');
  t.throws(() => decodeEncryptedBlob(u.frame, keys, u.id, { frameOffset: 0 }), { code: 'FORMAT_UNSUPPORTED' }, 'an unencrypted frame in an encrypted repository');
  const e = encodeEncryptedBlob(plain, keys.newPackKey('data'), keys.idKey, 0, 0);
  t.throws(() => decodeBlob(e.frame, e.id), { code: 'FORMAT_UNSUPPORTED' }, 'a build without the key refuses an encrypted frame');
  t.notSame(e.id, u.id, 'the keyed id differs from SHA-256: the store cannot test for known content');
});

t.test('frames of one pack never share a nonce: the index is the nonce, the salt makes the subkey', async (t) => {
  const a = keys.newPackKey('data');
  const b = keys.newPackKey('data');
  t.notSame(a.salt, b.salt, 'two packs, two salts');
  t.notSame(a.subkey, b.subkey, 'two packs, two subkeys');
  const plain = Buffer.alloc(4096, 7);
  const f0 = encodeEncryptedBlob(plain, a, keys.idKey, 0, 0);
  const f1 = encodeEncryptedBlob(plain, a, keys.idKey, 1, f0.frame.length);
  t.notSame(f0.frame.subarray(BLOB_HEADER_LEN), f1.frame.subarray(BLOB_HEADER_LEN), 'equal plain bytes, different ciphertext');
  t.same(f0.id, f1.id, 'equal ids: the same cluster is recognised (and stored once by the writer)');
  t.throws(() => encodeEncryptedBlob(plain, a, keys.idKey, -1, 0), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeEncryptedBlob(plain, a, keys.idKey, 2 ** 32, 0), { code: 'INVALID_ARGUMENT' });
  t.throws(() => packSealKey(0, keys.encKey(1) as Buffer, randomBytes(16), 'data'), { code: 'INVALID_ARGUMENT' }, 'key id 0 means unencrypted');
});

t.test('fuzz: mutated frames fail with a known code or decode to the original bytes', async (t) => {
  const rnd = new Rng(1818);
  const pk = keys.newPackKey('data');
  const originals = [Buffer.alloc(0), randomBytes(64), Buffer.alloc(65536, 1), Buffer.from('x'.repeat(3000))].map((p, i) => ({ p, e: encodeEncryptedBlob(p, pk, keys.idKey, i, 0) }));
  const outcomes = new Map<string, number>();
  for (let i = 0; i < 20_000; i++) {
    const { p, e } = originals[rnd.int(originals.length)] as { p: Buffer; e: { frame: Buffer; id: Buffer } };
    let f = Buffer.from(e.frame);
    const op = rnd.int(4);
    if (op === 0) f[rnd.int(f.length)] = rnd.int(256);
    else if (op === 1) f = f.subarray(0, rnd.int(f.length));
    else if (op === 2) f = Buffer.concat([f, randomBytes(1 + rnd.int(20))]);
    else for (let k = 0; k < 1 + rnd.int(8); k++) f[rnd.int(f.length)] = rnd.int(256);
    try {
      const got = decodeEncryptedBlob(f, keys, undefined, { frameOffset: 0 });
      t.ok(got.equals(p) || f.equals(e.frame), 'only an unchanged frame decodes');
      outcomes.set('ok', (outcomes.get('ok') ?? 0) + 1);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (!isErrorCode(code) || !['AUTH_FAILED', 'FORMAT_CORRUPT', 'FORMAT_UNSUPPORTED', 'HASH_MISMATCH'].includes(code)) {
        t.fail(`unexpected ${String(code)}: ${(err as Error).message}`);
        return;
      }
      outcomes.set(code, (outcomes.get(code) ?? 0) + 1);
    }
  }
  t.ok(outcomes.get('AUTH_FAILED') && outcomes.get('FORMAT_CORRUPT'), `outcomes: ${JSON.stringify([...outcomes])}`);
  t.equal(GCM_TAG_LEN, 16);
});
