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
  STATE_RECORD_SIZE,
  decodeState,
  encodeState,
  readState,
  writeState,
  type VolumeState,
} from '../../src/volume/state.js';
import { MemFs } from '../../src/volume/memfs.js';

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
  clean: true,
  sequence: 12,
};

t.test('golden layout and round trip', async (t) => {
  const b = encodeState(base);
  t.equal(b.length, STATE_RECORD_SIZE);
  t.equal(b.subarray(0, 4).toString('latin1'), 'ISVS');
  t.equal(b.readUInt16BE(ST_VERSION), 1);
  t.equal(b.readUInt16BE(ST_FLAGS), 1, 'clean shutdown flag');
  t.equal(b.readUInt32BE(ST_CLUSTER_SIZE), 65536);
  t.equal(b.readBigUInt64BE(ST_EPOCH), 9n);
  t.equal(b.readBigUInt64BE(ST_COMPLETED_EPOCH), 7n);
  t.equal(b.readBigUInt64BE(ST_INTENT_EPOCH), 4n);
  t.equal(b[ST_NAME_LEN], 9);
  t.equal(b.toString('ascii', ST_NAME, ST_NAME + 9), 'vol-1.a_b');
  t.equal(b[ST_BASE_ID_LEN], 26);
  t.equal(b.toString('ascii', ST_BASE_ID, ST_BASE_ID + 26), base.baseSnapshot);
  t.equal(b.readUInt32BE(ST_CRC), crc32(b.subarray(0, ST_CRC)) >>> 0);
  t.same(decodeState(b), base);
  t.same(decodeState(encodeState({ ...base, baseSnapshot: null, clean: false })), { ...base, baseSnapshot: null, clean: false });
});

t.test('corrupt and unsupported records are refused with their code', async (t) => {
  const b = encodeState(base);
  const flipped = Buffer.from(b);
  flipped[ST_EPOCH + 7]! ^= 1;
  t.throws(() => decodeState(flipped), { code: 'FORMAT_CORRUPT', message: /checksum/ });
  t.throws(() => decodeState(b.subarray(0, 100)), { code: 'FORMAT_CORRUPT' });
  const v2 = Buffer.from(b);
  v2.writeUInt16BE(2, ST_VERSION);
  v2.writeUInt32BE(crc32(v2.subarray(0, ST_CRC)) >>> 0, ST_CRC);
  t.throws(() => decodeState(v2), { code: 'FORMAT_UNSUPPORTED' });
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
