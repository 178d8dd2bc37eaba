/**
 * The frame codec (src/format/frame-codec.ts) and the sealed store (src/crypto/sealed-store.ts)
 * on the real fs store, driven through the Repository and the pack builder: records are
 * sealed at rest and read back as before, plain packs and plain records are refused in an
 * encrypted repository, sealing a worker's frame later equals sealing it at once.
 */
import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { RepositoryKeys } from '../../src/crypto/keys.js';
import { SealedStore } from '../../src/crypto/sealed-store.js';
import { encodeBlob } from '../../src/format/blob.js';
import { decodeEncryptedBlob, encodeEncryptedBlob, encodeUnsealedBlob, packSealKey, sealFrame } from '../../src/format/encrypted-frame.js';
import { encryptedFrames, PLAIN_FRAMES } from '../../src/format/frame-codec.js';
import { PackBuilder, parsePack } from '../../src/format/pack.js';
import { encodeTombstone, type Tombstone } from '../../src/format/records.js';
import { Repository } from '../../src/repo/repository.js';
import { FsStore } from '../../src/store/fs.js';
import { listAll } from '../../src/store/types.js';

const keys = RepositoryKeys.generate();
const tomb: Tombstone = { snapshot: '01HZX3C6Y1V8K9E2R5T7W0Q4MN', volume: 'secret-volume', created: Date.UTC(2024, 4, 1), host: 'node-1', reason: 'a reason nobody should read', forced: false };

t.test('sealFrame of a worker-made unsealed frame equals sealing at once; both codecs round trip', async (t) => {
  const plain = Buffer.from('cluster contents '.repeat(500));
  const pk = packSealKey(1, keys.encKey(1) as Buffer, randomBytes(16), 'data');
  const unsealed = encodeUnsealedBlob(plain, 'data', keys.idKey);
  t.same(unsealed.id, keys.blobId(plain));
  t.same(sealFrame(unsealed.frame, pk, 3, 1000), encodeEncryptedBlob(plain, pk, keys.idKey, 3, 1000).frame);
  t.throws(() => sealFrame(sealFrame(unsealed.frame, pk, 3, 1000), pk, 4, 2000), { code: 'INVALID_ARGUMENT' }, 'never sealed twice');
  const enc = encryptedFrames(keys);
  const pack = enc.newPack('data');
  const frames: { frame: Buffer; off: number; id: Buffer }[] = [];
  let off = 0;
  for (let i = 0; i < 5; i++) {
    const p = randomBytes(5000);
    const e = enc.encode(p, 'data');
    const placed = pack.place(e.frame, i, off);
    t.equal(placed.length, pack.placedLength(e.frame.length));
    frames.push({ frame: placed, off, id: e.id });
    t.same(enc.decode(placed, e.id, { base: off, kind: 'data' }), p);
    off += placed.length;
  }
  t.throws(() => enc.decode(frames[1]!.frame, frames[1]!.id, { base: frames[0]!.off }), { code: 'AUTH_FAILED' }, 'a frame read at another offset');
  const p = randomBytes(100);
  const e = PLAIN_FRAMES.encode(p, 'metadata');
  t.same(PLAIN_FRAMES.newPack('metadata').place(e.frame, 0, 0), e.frame, 'unencrypted frames are stored as encoded');
  t.same(PLAIN_FRAMES.decode(e.frame, e.id, { base: 0 }), p);
  t.notSame(enc.idOf(p), PLAIN_FRAMES.idOf(p));
});

t.test('an encrypted pack is a valid pack: parsePack checks it without the key, frames open with it', async (t) => {
  const enc = encryptedFrames(keys);
  const pack = enc.newPack('data');
  const b = new PackBuilder('data', 1 << 20);
  const plains = Array.from({ length: 8 }, (_, i) => (i % 2 ? randomBytes(4096) : Buffer.alloc(4096, i)));
  let off = 0;
  for (const [i, p] of plains.entries()) {
    const e = enc.encode(p, 'data');
    const placed = pack.place(e.frame, i, off);
    t.equal(b.add(placed, e.id), off, 'the builder puts the frame where it was sealed for');
    off += placed.length;
  }
  const built = b.finish();
  const parsed = parsePack(built.bytes);
  t.equal(parsed.entries.length, 8);
  const salt = built.bytes.subarray(12, 28);
  for (const [i, en] of parsed.entries.entries()) {
    const frame = built.bytes.subarray(en.offset, en.offset + en.frameLength);
    t.same(decodeEncryptedBlob(frame, keys, en.id, { frameOffset: en.offset, packSalt: salt, index: i }), plains[i]);
  }
  t.equal(built.bytes.indexOf(Buffer.alloc(4096, 4).subarray(0, 64)), -1, 'a known pattern does not appear in the pack');
});

t.test('the sealed store: records sealed at rest, read back as before; mixing refused both ways', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-sealed-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const raw = new FsStore(dir);
  const sealed = new SealedStore(raw, keys);
  t.teardown(() => raw.close());
  const repo = new Repository(sealed, { host: 'node-1', region: 'default' });
  await repo.putTombstone(tomb);
  t.same(await repo.getTombstone(tomb.snapshot), tomb, 'read back through the repository');
  const at = await raw.get(`tombstones/${tomb.snapshot}`);
  t.equal(at.indexOf(Buffer.from('secret-volume')), -1, 'the volume name is not in the stored body');
  t.equal(at.indexOf(Buffer.from('nobody should read')), -1);
  t.equal(at.readUInt16BE(6), 1, 'flag: sealed');

  // Moved under another name: refused.
  await raw.put('tombstones/01HZX3C6Y1V8K9E2R5T7W0Q4MA', at);
  await t.rejects(repo.getTombstone('01HZX3C6Y1V8K9E2R5T7W0Q4MA'), { code: 'AUTH_FAILED' });
  // A plain record planted in an encrypted repository: refused, not read.
  await raw.put('tombstones/01HZX3C6Y1V8K9E2R5T7W0Q4MB', encodeTombstone({ ...tomb, snapshot: '01HZX3C6Y1V8K9E2R5T7W0Q4MB' }));
  await t.rejects(repo.getTombstone('01HZX3C6Y1V8K9E2R5T7W0Q4MB'), { code: 'FORMAT_UNSUPPORTED', message: /not encrypted/ });
  // A pack of plain frames: refused before it reaches the store.
  const b = new PackBuilder('data', 1 << 20);
  const e = encodeBlob(randomBytes(1000), 'data');
  b.add(e.frame, e.id);
  const before: string[] = [];
  for await (const o of listAll(raw, '')) before.push(o.key);
  await t.rejects(sealed.put('data/00/' + '00'.repeat(32), b.finish().bytes), { code: 'ENCRYPTION_MIXED' });
  const after: string[] = [];
  for await (const o of listAll(raw, '')) after.push(o.key);
  t.same(after, before, 'nothing written');
  // Another key set reading the same store: every record fails authentication.
  const stranger = new Repository(new SealedStore(raw, RepositoryKeys.generate()), { host: 'node-1', region: 'default' });
  await t.rejects(stranger.getTombstone(tomb.snapshot), { code: 'AUTH_FAILED' });
});
