import t from 'tap';
import { crc32 } from 'node:zlib';
import {
  ST_BASE_ID,
  ST_BASE_ID_LEN,
  ST_CLUSTER_SIZE,
  ST_COMPLETED_EPOCH,
  ST_CRC,
  ST_EPOCH,
  ST_FLAGS,
  ST_INTENT_EPOCH,
  ST_NAME,
  ST_NAME_LEN,
  ST_VERSION,
  ST_COMMITTED_ID,
  ST_COMMITTED_ID_LEN,
  ST_SYNCED_PAGES,
  STATE_RECORD_SIZE,
  decodeState,
  decodeStateRecord,
  encodeState,
  readState,
  writeState,
  type VolumeState,
} from '../../src/volume/state.js';
import { MemFs } from '../../src/volume/memfs.js';

const GOLDEN = [
  '4953565300020003000000028000000000010000040000000000000000050000', // bytes 0-31
  '0000000000000003000000000000000900000000000000070000000000000004', // bytes 32-63
  '0000000000000000000000000000000c09766f6c2d312e615f62000000000000', // bytes 64-95
  '0000000000000000000000000000000000000000000000000000000000000000', // bytes 96-127
  '000000000000000000000000000000001a3031485a59354a3858334d36514b32', // bytes 128-159
  '563954344e3752424344451a3031485a59354a3858334d36514b32563954344e', // bytes 160-191
  '3752424344460000000000010000000200000001000000070000000000000000', // bytes 192-223
  '0000000000000000000000000000000000000000000000000000000039d76c3f', // bytes 224-255
].join('');

const base: VolumeState = {
  name: 'vol-1.a_b',
  virtualSize: 10 * 2 ** 30,
  clusterSize: 65536,
  regionSize: 64 * 2 ** 20,
  imageLength: 327680,
  generation: 3,
  epoch: 9,
  completedEpoch: 7,
  intentEpoch: 4,
  baseLength: 0,
  baseSnapshot: '01HZY5J8X3M6QK2V9T4N7RBCDE',
  committedSnapshot: '01HZY5J8X3M6QK2V9T4N7RBCDF',
  filled: true,
  clean: true,
  sequence: 12,
  syncedPages: { dirty0: 1, dirty1: 2, intent: 1, present: 7 },
};

t.test('golden layout and round trip', async (t) => {
  const b = encodeState(base);
  t.equal(b.length, STATE_RECORD_SIZE);
  t.equal(b.subarray(0, 4).toString('latin1'), 'ISVS');
  t.equal(b.readUInt16BE(ST_VERSION), 2);
  t.equal(b.readUInt16BE(ST_FLAGS), 3, 'clean shutdown and filled flags');
  t.equal(b.readUInt32BE(ST_CLUSTER_SIZE), 65536);
  t.equal(b.readBigUInt64BE(ST_EPOCH), 9n);
  t.equal(b.readBigUInt64BE(ST_COMPLETED_EPOCH), 7n);
  t.equal(b.readBigUInt64BE(ST_INTENT_EPOCH), 4n);
  t.equal(b[ST_NAME_LEN], 9);
  t.equal(b.toString('ascii', ST_NAME, ST_NAME + 9), 'vol-1.a_b');
  t.equal(b[ST_BASE_ID_LEN], 26);
  t.equal(b.toString('ascii', ST_BASE_ID, ST_BASE_ID + 26), base.baseSnapshot);
  t.equal(b[ST_COMMITTED_ID_LEN], 26);
  t.equal(b.toString('ascii', ST_COMMITTED_ID, ST_COMMITTED_ID + 26), base.committedSnapshot);
  t.same([0, 1, 2, 3].map((i) => b.readUInt32BE(ST_SYNCED_PAGES + 4 * i)), [1, 2, 1, 7], 'synced pages of dirty.0, dirty.1, intent, present');
  t.ok(b.subarray(198, 200).every((x) => x === 0) && b.subarray(216, ST_CRC).every((x) => x === 0), 'reserved bytes are zero');
  t.equal(b.readUInt32BE(ST_CRC), crc32(b.subarray(0, ST_CRC)) >>> 0);
  t.same(decodeState(b), base);
  const none = { ...base, baseSnapshot: null, committedSnapshot: null, filled: false, clean: false };
  t.same(decodeState(encodeState(none)), none);
  t.equal(encodeState(none)[ST_COMMITTED_ID_LEN], 0, 'no committed snapshot');
});

t.test('golden bytes of a whole record', async (t) => {
  const hex = encodeState(base).toString('hex');
  t.equal(
    hex,
    GOLDEN,
    'the byte layout of version 2 does not move',
  );
});

t.test('a version 1 record decodes for its migration: no committed id, not filled', async (t) => {
  const b = encodeState({ ...base, filled: false, committedSnapshot: null, syncedPages: { dirty0: 0, dirty1: 0, intent: 0, present: 0 } });
  b.writeUInt16BE(1, ST_VERSION);
  b.writeUInt32BE(crc32(b.subarray(0, ST_CRC)) >>> 0, ST_CRC);
  const r = decodeStateRecord(b);
  t.equal(r.version, 1);
  t.equal(r.state.committedSnapshot, null);
  t.equal(r.state.filled, false);
  const filledV1 = Buffer.from(b);
  filledV1.writeUInt16BE(3, ST_FLAGS);
  filledV1.writeUInt32BE(crc32(filledV1.subarray(0, ST_CRC)) >>> 0, ST_CRC);
  t.throws(() => decodeState(filledV1), { code: 'FORMAT_UNSUPPORTED' }, 'version 1 knew no filled flag');
});

t.test('corrupt and unsupported records are refused with their code', async (t) => {
  const b = encodeState(base);
  const flipped = Buffer.from(b);
  flipped[ST_EPOCH + 7]! ^= 1;
  t.throws(() => decodeState(flipped), { code: 'FORMAT_CORRUPT', message: /checksum/ });
  t.throws(() => decodeState(b.subarray(0, 100)), { code: 'FORMAT_CORRUPT' });
  const v3 = Buffer.from(b);
  v3.writeUInt16BE(3, ST_VERSION);
  v3.writeUInt32BE(crc32(v3.subarray(0, ST_CRC)) >>> 0, ST_CRC);
  t.throws(() => decodeState(v3), { code: 'FORMAT_UNSUPPORTED' });
  const badId = Buffer.from(b);
  badId[ST_COMMITTED_ID_LEN] = 12;
  badId.writeUInt32BE(crc32(badId.subarray(0, ST_CRC)) >>> 0, ST_CRC);
  t.throws(() => decodeState(badId), { code: 'FORMAT_CORRUPT', message: /committed snapshot id length/ });
  t.throws(() => encodeState({ ...base, committedSnapshot: '../x' }), { code: 'INVALID_ARGUMENT' });
  const badName = Buffer.from(b);
  badName[ST_NAME] = 0x2f; // '/'
  badName.writeUInt32BE(crc32(badName.subarray(0, ST_CRC)) >>> 0, ST_CRC);
  t.throws(() => decodeState(badName), { code: 'FORMAT_CORRUPT', message: /volume name/ }, 'a name that could escape the directory');
  t.throws(() => encodeState({ ...base, completedEpoch: 10 }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeState({ ...base, regionSize: 1000 }), { code: 'INVALID_ARGUMENT' });
});

t.test('replacement is atomic across a crash', async (t) => {
  const fs = new MemFs();
  await fs.mkdir('/v');
  await writeState(fs, '/v', base);
  fs.crash();
  t.same(await readState(fs, '/v'), base, 'a written record survives');
  // A crash in the middle of the next write leaves the old record (never a torn one).
  let ops = 0;
  fs.onOp = (op) => {
    if (op.op === 'rename') ops++;
  };
  const next = { ...base, epoch: 10, sequence: 13 };
  await writeState(fs, '/v', next);
  t.equal(ops, 1);
  fs.onOp = (op) => {
    if (op.op === 'syncDir') throw new Error('power cut');
  };
  await t.rejects(writeState(fs, '/v', { ...next, epoch: 11 }));
  fs.onOp = undefined;
  fs.crash();
  t.same(await readState(fs, '/v'), next, 'the rename was not durable: the previous record');
  await t.rejects(readState(fs, '/nowhere'), { code: 'NOT_FOUND' });
});
