import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IslandError } from '../../src/errors.js';
import {
  QCOW2_HDR_AUTOCLEAR_FEATURES,
  QCOW2_HDR_BACKING_FILE_OFFSET,
  QCOW2_HDR_BACKING_FILE_SIZE,
  QCOW2_HDR_CLUSTER_BITS,
  QCOW2_HDR_COMPATIBLE_FEATURES,
  QCOW2_HDR_COMPRESSION_TYPE,
  QCOW2_HDR_CRYPT_METHOD,
  QCOW2_HDR_HEADER_LENGTH,
  QCOW2_HDR_INCOMPATIBLE_FEATURES,
  QCOW2_HDR_L1_SIZE,
  QCOW2_HDR_L1_TABLE_OFFSET,
  QCOW2_HDR_MAGIC,
  QCOW2_HDR_NB_SNAPSHOTS,
  QCOW2_HDR_REFCOUNT_ORDER,
  QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS,
  QCOW2_HDR_REFCOUNT_TABLE_OFFSET,
  QCOW2_HDR_SIZE,
  QCOW2_HDR_SNAPSHOTS_OFFSET,
  QCOW2_HDR_VERSION,
  QCOW2_INCOMPAT_CORRUPT,
  QCOW2_INCOMPAT_DIRTY,
  QCOW2_MAX_HEADER_BYTES,
  QCOW2_MAX_HEADER_EXTENSIONS,
  QCOW2_MAX_VIRTUAL_SIZE,
  QCOW2_EXT_FEATURE_TABLE,
  createQcow2Image,
  parseQcow2Header,
  qcow2MaxVirtualSize,
  qcow2Warnings,
  type Qcow2Header,
} from '../../src/format/qcow2.js';
import { Rng } from '../../src/util/random.js';

const exec = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const PiB = 1024 * TiB;

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a tool; a non-zero exit is a result, not an exception. */
async function run(cmd: string, args: string[], cwd?: string): Promise<RunResult> {
  try {
    const { stdout, stderr } = await exec(cmd, args, { cwd, maxBuffer: 16 * MiB });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: unknown; signal?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number' && e.signal == null) throw err; // the tool is missing
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

async function haveQemu(): Promise<boolean> {
  try {
    await exec('qemu-img', ['--version']);
    await exec('qemu-io', ['--version']);
    return true;
  } catch {
    return false;
  }
}

/** The bytes parseQcow2Header needs: the first cluster, at most 2 MiB. */
async function readHead(path: string): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(QCOW2_MAX_HEADER_BYTES);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

// qemu-img's JSON output, read field by field.
type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

async function qemuInfo(path: string): Promise<Json> {
  const r = await run('qemu-img', ['info', '--output=json', path]);
  if (r.code !== 0) throw new Error(`qemu-img info ${path}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

async function qemuCheck(t: Test, path: string, what: string): Promise<void> {
  const r = await run('qemu-img', ['check', '--output=json', path]);
  t.equal(r.code, 0, `${what}: qemu-img check exits 0 (${r.stderr.trim()})`);
  const report = JSON.parse(r.stdout) as Json;
  t.equal(report['check-errors'], 0, `${what}: no check errors`);
  t.equal(report.leaks ?? 0, 0, `${what}: no leaked clusters`);
  t.equal(report.corruptions ?? 0, 0, `${what}: no corruptions`);
}

function expectError(t: Test, fn: () => unknown, codes: string[], what: string): IslandError | undefined {
  try {
    fn();
  } catch (err) {
    t.ok(err instanceof IslandError && codes.includes(err.code), `${what}: ${codes.join('/')} (${String((err as Error).message)})`);
    return err instanceof IslandError ? err : undefined;
  }
  t.fail(`${what}: expected ${codes.join('/')}, got no error`);
  return undefined;
}

/** Golden bytes: the first 512 bytes of a new 1 MiB image with 64 KiB clusters. */
const GOLDEN_1M_HEADER = Buffer.from(
  [
    '514649fb', // magic "QFI\xfb"
    '00000003', // version 3
    '0000000000000000', // backing_file_offset: none
    '00000000', // backing_file_size
    '00000010', // cluster_bits 16
    '0000000000100000', // size 1 MiB
    '00000000', // crypt_method none
    '00000001', // l1_size 1
    '0000000000030000', // l1_table_offset: cluster 3
    '0000000000010000', // refcount_table_offset: cluster 1
    '00000001', // refcount_table_clusters
    '00000000', // nb_snapshots
    '0000000000000000', // snapshots_offset
    '0000000000000000', // incompatible_features
    '0000000000000000', // compatible_features (lazy refcounts off)
    '0000000000000000', // autoclear_features
    '00000004', // refcount_order 4 (16-bit)
    '00000070', // header_length 112
    '00', // compression_type zlib
    '00000000000000', // padding
    '6803f857', // feature name table extension
    '00000180', // 8 entries of 48 bytes
    '0000' + Buffer.from('dirty bit').toString('hex').padEnd(92, '0'),
    '0001' + Buffer.from('corrupt bit').toString('hex').padEnd(92, '0'),
    '0002' + Buffer.from('external data file').toString('hex').padEnd(92, '0'),
    '0003' + Buffer.from('compression type').toString('hex').padEnd(92, '0'),
    '0004' + Buffer.from('extended L2 entries').toString('hex').padEnd(92, '0'),
    '0100' + Buffer.from('lazy refcounts').toString('hex').padEnd(92, '0'),
    '0200' + Buffer.from('bitmaps').toString('hex').padEnd(92, '0'),
    '0201' + Buffer.from('raw external data').toString('hex').padEnd(92, '0'),
    '0000000000000000', // end of extensions
  ].join(''),
  'hex',
);

t.test('golden bytes of a small image', async (t) => {
  const img = createQcow2Image({ virtualSize: 1 * MiB });
  t.equal(GOLDEN_1M_HEADER.length, 512);
  t.same(img.subarray(0, 512).toString('hex'), GOLDEN_1M_HEADER.toString('hex'), 'header and extensions');
  t.ok(img.subarray(512, 64 * KiB).every((b) => b === 0), 'rest of cluster 0 is zero');
  t.equal(img.readBigUInt64BE(64 * KiB), 0x20000n, 'refcount table entry 0 points at cluster 2');
  t.same([0, 1, 2, 3, 4].map((i) => img.readUInt16BE(128 * KiB + 2 * i)), [1, 1, 1, 1, 0], 'clusters 0-3 have refcount 1');
  t.equal(img.length, 4 * 64 * KiB, 'four clusters: header, refcount table, refcount block, L1');
});

t.test('create options are validated', async (t) => {
  const bad: Array<[unknown, unknown, string]> = [
    [0, undefined, 'zero size'],
    [-512, undefined, 'negative size'],
    [1000, undefined, 'size not a multiple of 512'],
    [512.5, undefined, 'fractional size'],
    [Number.NaN, undefined, 'NaN size'],
    [Number.POSITIVE_INFINITY, undefined, 'infinite size'],
    ['1048576', undefined, 'size as a string'],
    [QCOW2_MAX_VIRTUAL_SIZE + 512, undefined, 'size past the 2 PiB limit'],
    [128 * GiB + 512, 512, 'size past the L1 limit for 512-byte clusters'],
    [8 * TiB + 512, 4096, 'size past the L1 limit for 4 KiB clusters'],
    [1 * MiB, 256, 'cluster size below 512'],
    [1 * MiB, 4 * MiB, 'cluster size above 2 MiB'],
    [1 * MiB, 3000, 'cluster size not a power of two'],
    [1 * MiB, 0, 'zero cluster size'],
    [1 * MiB, 65536.5, 'fractional cluster size'],
  ];
  for (const [virtualSize, clusterSize, what] of bad) {
    const opts = { virtualSize, clusterSize } as { virtualSize: number; clusterSize?: number };
    expectError(t, () => createQcow2Image(opts), ['INVALID_ARGUMENT'], what);
  }
  t.equal(qcow2MaxVirtualSize(512), 128 * GiB, '512-byte clusters: 128 GiB (32 MiB L1)');
  t.equal(qcow2MaxVirtualSize(4096), 8 * TiB, '4 KiB clusters: 8 TiB');
  t.equal(qcow2MaxVirtualSize(65536), 2 * PiB, '64 KiB clusters: 2 PiB');
  t.equal(qcow2MaxVirtualSize(2 * MiB), 2 * PiB, '2 MiB clusters: capped at 2 PiB');
});

/** Walk the refcount structures of an island image and check every cluster counts once. */
function checkRefcounts(t: Test, img: Buffer, h: Qcow2Header, what: string): void {
  const clusters = img.length / h.clusterSize;
  const perBlock = h.clusterSize / 2;
  let counted = 0;
  let bad = 0;
  for (let i = 0; i < (h.refcountTableClusters * h.clusterSize) / 8; i++) {
    const block = Number(img.readBigUInt64BE(h.refcountTableOffset + 8 * i));
    if (block === 0) continue;
    for (let j = 0; j < perBlock; j++) {
      const cluster = i * perBlock + j;
      const rc = img.readUInt16BE(block + 2 * j);
      if (rc !== (cluster < clusters ? 1 : 0)) bad++;
      if (rc) counted++;
    }
  }
  t.equal(bad, 0, `${what}: every cluster of the file has refcount 1, none past it`);
  t.equal(counted, clusters, `${what}: ${clusters} clusters counted`);
}

const ISLAND_CASES: Array<[virtualSize: number, clusterSize: number | undefined]> = [
  [512, 4096],
  [1 * MiB + 512, undefined],
  [1 * GiB, undefined],
  [10 * GiB, 512],
  [128 * GiB, 512], // the largest L1 table: several refcount blocks and table clusters
  [1 * TiB, 4096],
  [100 * GiB, 16 * KiB],
  [3 * GiB + 512, 256 * KiB],
  [2 * PiB, 64 * KiB],
  [2 * PiB, 2 * MiB],
];

t.test('island images parse back to what was asked', async (t) => {
  for (const [virtualSize, clusterSize] of ISLAND_CASES) {
    const what = `${virtualSize} bytes, ${clusterSize ?? 'default'} clusters`;
    const img = createQcow2Image({ virtualSize, clusterSize });
    const h = parseQcow2Header(img);
    t.match(
      h,
      { version: 3, virtualSize, clusterSize: clusterSize ?? 65536, dirty: false, corrupt: false, lazyRefcounts: false, nbSnapshots: 0 },
      what,
    );
    t.match(h, { backingFile: null, cryptMethod: 'none', compressionType: 'zlib', refcountOrder: 4, headerLength: 112 }, what);
    t.same(h.extensions.map((e) => e.type), [QCOW2_EXT_FEATURE_TABLE], `${what}: one feature table extension`);
    t.same(qcow2Warnings(h), [], `${what}: no warnings`);
    t.equal(img.length % h.clusterSize, 0, `${what}: cluster-aligned length`);
    t.ok(h.l1TableOffset + h.l1Size * 8 <= img.length, `${what}: L1 table inside the file`);
    checkRefcounts(t, img, h, what);
  }
});

const skipQemu = (await haveQemu()) ? false : 'qemu-img and qemu-io are not installed';

t.test('against qemu', { skip: skipQemu }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-qcow2-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const qemuImg = async (...args: string[]): Promise<void> => {
    const r = await run('qemu-img', args, dir);
    if (r.code !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stderr}`);
  };

  await t.test('island images pass qemu-img check and take writes', async (t) => {
    for (const [virtualSize, clusterSize] of ISLAND_CASES) {
      const cs = clusterSize ?? 65536;
      const what = `${virtualSize} bytes, ${cs}-byte clusters`;
      const path = join(dir, `island-${cs}-${virtualSize}.qcow2`);
      await writeFile(path, createQcow2Image({ virtualSize, clusterSize }));
      await qemuCheck(t, path, what);
      const info = await qemuInfo(path);
      t.equal(info['virtual-size'], virtualSize, `${what}: qemu sees the virtual size`);
      t.equal(info['cluster-size'], cs, `${what}: qemu sees the cluster size`);
      t.match(info['format-specific'].data, { compat: '1.1', 'lazy-refcounts': false, 'refcount-bits': 16, corrupt: false }, what);
      t.equal(info['dirty-flag'], false, `${what}: clean`);
      const len = Math.min(64 * KiB, virtualSize);
      for (const at of [0, virtualSize - len]) {
        const r = await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0xab ${at} ${len}`, '-c', `read -P 0xab ${at} ${len}`, path]);
        t.equal(r.code, 0, `${what}: qemu-io write and read at ${at} (${r.stderr.trim()})`);
        t.match(r.stdout, `read ${len}/${len} bytes`, `${what}: pattern read back`);
        t.notMatch(r.stdout + r.stderr, /fail/i, `${what}: no failure reported`);
      }
      await qemuCheck(t, path, `${what} after writes`);
      t.match(parseQcow2Header(await readHead(path)), { virtualSize, clusterSize: cs, dirty: false }, `${what}: header after writes`);
      await rm(path);
    }
  });

  await t.test('64 KiB and 2 MiB cluster images have the bytes qemu-img create writes', async (t) => {
    const cases: Array<[number, number]> = [
      [1 * MiB, 64 * KiB],
      [1 * GiB, 64 * KiB],
      [10 * TiB, 64 * KiB], // L1 table over several clusters
      [1 * GiB, 2 * MiB],
    ];
    for (const [virtualSize, clusterSize] of cases) {
      const path = join(dir, 'ref.qcow2');
      await qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${clusterSize}`, path, String(virtualSize));
      const ref = await readFile(path);
      const img = createQcow2Image({ virtualSize, clusterSize });
      const what = `${virtualSize} bytes, ${clusterSize}-byte clusters`;
      t.ok(img.length >= ref.length && img.length - ref.length < clusterSize, `${what}: island pads only the last L1 cluster`);
      t.ok(img.subarray(0, ref.length).equals(ref), `${what}: same bytes as qemu-img create`);
    }
  });

  // qemu-created images: [name, qemu-img create options, size, extra setup]
  type Setup = (path: string) => Promise<void>;
  const snapshot: Setup = async (p) => {
    await qemuImg('snapshot', '-c', 's1', p);
    await qemuImg('snapshot', '-c', 's2', p);
  };
  const snapshotDeleted: Setup = async (p) => {
    await qemuImg('snapshot', '-c', 's1', p);
    await qemuImg('snapshot', '-d', 's1', p);
  };
  const crash: Setup = async (p) => {
    const r = await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 64k', '-c', 'abort', p], dir);
    if (r.code === 0) throw new Error('qemu-io abort did not end the process');
  };
  await qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '64M');
  // [name, qemu-img create options, size, setup, facts expected besides what qemu-img info says]
  const QEMU_CASES: Array<[string, string[], string, Setup?, Record<string, unknown>?]> = [
    ['v3 default', [], '1G', undefined, { version: 3, headerLength: 112 }],
    ['v2 (compat=0.10)', ['-o', 'compat=0.10'], '1G', undefined, { version: 2, headerLength: 72, incompatibleFeatures: 0n }],
    ['lazy refcounts', ['-o', 'lazy_refcounts=on'], '1G', undefined, { lazyRefcounts: true, dirty: false }],
    ['4 KiB clusters', ['-o', 'cluster_size=4096'], '3G'],
    ['16 KiB clusters', ['-o', 'cluster_size=16384'], '1T'],
    ['256 KiB clusters', ['-o', 'cluster_size=262144'], '100G'],
    ['1 MiB clusters', ['-o', 'cluster_size=1M'], '5G'],
    ['2 MiB clusters', ['-o', 'cluster_size=2M'], '10T'],
    ['internal snapshots', [], '1G', snapshot, { nbSnapshots: 2 }],
    ['snapshot created then deleted', [], '1G', snapshotDeleted, { nbSnapshots: 0 }],
    ['zero size', [], '0', undefined, { virtualSize: 0, l1Size: 0 }],
    ['v2 internal snapshots', ['-o', 'compat=0.10'], '1G', snapshot, { version: 2, nbSnapshots: 2 }],
    ['backing file', ['-b', 'base.qcow2', '-F', 'qcow2'], '64M', undefined, { backingFile: { name: 'base.qcow2' }, backingFormat: 'qcow2' }],
    ['v2 backing file', ['-o', 'compat=0.10', '-b', 'base.qcow2', '-F', 'qcow2'], '64M', undefined, { version: 2, backingFile: { name: 'base.qcow2' } }],
    ['dirty after a crash', ['-o', 'lazy_refcounts=on'], '1G', crash, { dirty: true, lazyRefcounts: true }],
    ['extended L2', ['-o', 'extended_l2=on'], '1G', undefined, { extendedL2: true }],
    ['zstd compression', ['-o', 'compression_type=zstd'], '1G', undefined, { compressionType: 'zstd' }],
    ['1-bit refcounts', ['-o', 'refcount_bits=1'], '1G', undefined, { refcountOrder: 0 }],
    ['64-bit refcounts', ['-o', 'refcount_bits=64'], '1G', undefined, { refcountOrder: 6 }],
    ['odd size', [], '1000000000'],
    [
      'LUKS encryption',
      ['--object', 'secret,id=sec0,data=island', '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10'],
      '16M',
      undefined,
      { cryptMethod: 'luks' },
    ],
  ];
  const qemuHeads: Buffer[] = [];

  await t.test('headers of qemu images parse to what qemu-img info says', async (t) => {
    let n = 0;
    for (const [what, opts, size, setup, expected] of QEMU_CASES) {
      const path = join(dir, `qemu-${n++}.qcow2`);
      await qemuImg('create', '-q', '-f', 'qcow2', ...opts, path, size);
      if (setup) await setup(path);
      const info = await qemuInfo(path);
      const data = info['format-specific'].data;
      const head = await readHead(path);
      qemuHeads.push(head);
      const h = parseQcow2Header(head);
      if (expected) t.match(h, expected, `${what}: expected facts`);
      t.equal(h.virtualSize, info['virtual-size'], `${what}: virtual size`);
      t.equal(h.clusterSize, info['cluster-size'], `${what}: cluster size`);
      t.equal(h.version, data.compat === '0.10' ? 2 : 3, `${what}: version`);
      t.equal(h.lazyRefcounts, data['lazy-refcounts'] ?? false, `${what}: lazy refcounts`);
      t.equal(h.dirty, info['dirty-flag'] ?? false, `${what}: dirty flag`);
      t.equal(h.corrupt, data.corrupt ?? false, `${what}: corrupt flag`);
      t.equal(h.nbSnapshots, (info.snapshots ?? []).length, `${what}: snapshot count`);
      t.equal(h.refcountBits, data['refcount-bits'], `${what}: refcount bits`);
      t.equal(h.extendedL2, data['extended-l2'] ?? false, `${what}: extended L2`);
      t.equal(h.compressionType, data['compression-type'] ?? 'zlib', `${what}: compression type`);
      t.equal(h.cryptMethod !== 'none', info.encrypted ?? false, `${what}: encryption`);
      t.equal(h.backingFile?.name ?? null, info['backing-filename'] ?? null, `${what}: backing file`);
      t.equal(h.backingFormat, info['backing-filename-format'] ?? null, `${what}: backing format`);
      const warnings = qcow2Warnings(h).join('\n');
      for (const [on, word] of [
        [h.lazyRefcounts, 'lazy refcounts are on'],
        [h.dirty, 'dirty bit is set'],
        [h.nbSnapshots > 0, 'internal snapshot'],
        [h.backingFile !== null, 'backing file'],
        [h.cryptMethod !== 'none', 'encrypt'],
      ] as const) {
        t.equal(warnings.includes(word), on, `${what}: warning about ${word} iff it applies`);
      }
    }
  });

  await t.test('a set corrupt bit, poked into a real image, is reported like qemu does', async (t) => {
    const path = join(dir, 'poked.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', path, '64M');
    const img = await readFile(path);
    img.writeBigUInt64BE(QCOW2_INCOMPAT_CORRUPT, QCOW2_HDR_INCOMPATIBLE_FEATURES);
    await writeFile(path, img);
    const h = parseQcow2Header(await readHead(path));
    t.equal(h.corrupt, true);
    t.equal((await qemuInfo(path))['format-specific'].data.corrupt, true, 'qemu agrees');
    t.match(qcow2Warnings(h).join('\n'), 'corrupt bit');
  });

  await t.test('an unknown incompatible bit is refused, by name when the image names it', async (t) => {
    const path = join(dir, 'unknown.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', path, '64M');
    const img = await readFile(path);
    // Rename the feature table's first entry (incompatible bit 0) to describe bit 40.
    const table = parseQcow2Header(img).extensions.find((e) => e.kind === 'feature_table');
    const entry = table!.offset + 8;
    img.writeBigUInt64BE((1n << 5n) | (1n << 40n), QCOW2_HDR_INCOMPATIBLE_FEATURES);
    img[entry + 1] = 40;
    img.write('future feature\0\0\0\0', entry + 2, 'latin1');
    await writeFile(path, img);
    const err = expectError(t, () => parseQcow2Header(img), ['FORMAT_UNSUPPORTED'], 'unknown bits');
    t.match(err?.message, /bit 5\b.*bit 40 \("future feature"\)/, 'names both bits');
    t.same(err?.details.bits, [5, 40]);
    t.not((await run('qemu-img', ['info', path])).code, 0, 'qemu refuses it too');
  });

  await t.test('an external data file is refused', async (t) => {
    const path = join(dir, 'datafile.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'data.raw')}`, path, '64M');
    const head = await readHead(path);
    const err = expectError(t, () => parseQcow2Header(head), ['FORMAT_UNSUPPORTED'], 'external data file');
    t.match(err?.message, 'external data file');
  });

  await t.test('fuzzed qemu headers parse or fail cleanly', async (t) => {
    fuzz(t, qemuHeads, 0x51e7d00d, 30000);
  });
});

t.test('hostile headers get FORMAT_CORRUPT or FORMAT_UNSUPPORTED naming the field offset', async (t) => {
  const base = createQcow2Image({ virtualSize: 1 * GiB });
  const u32 = (off: number, v: number) => (b: Buffer) => b.writeUInt32BE(v, off);
  const u64 = (off: number, v: bigint) => (b: Buffer) => b.writeBigUInt64BE(v, off);
  const cases: Array<[string, (b: Buffer) => void, string, number]> = [
    ['bad magic', u32(QCOW2_HDR_MAGIC, 0x514649fa), 'FORMAT_CORRUPT', QCOW2_HDR_MAGIC],
    ['version 1', u32(QCOW2_HDR_VERSION, 1), 'FORMAT_UNSUPPORTED', QCOW2_HDR_VERSION],
    ['version 4', u32(QCOW2_HDR_VERSION, 4), 'FORMAT_UNSUPPORTED', QCOW2_HDR_VERSION],
    ['cluster_bits 8', u32(QCOW2_HDR_CLUSTER_BITS, 8), 'FORMAT_CORRUPT', QCOW2_HDR_CLUSTER_BITS],
    ['cluster_bits 22', u32(QCOW2_HDR_CLUSTER_BITS, 22), 'FORMAT_UNSUPPORTED', QCOW2_HDR_CLUSTER_BITS],
    ['cluster_bits 2^32-1', u32(QCOW2_HDR_CLUSTER_BITS, 0xffffffff), 'FORMAT_UNSUPPORTED', QCOW2_HDR_CLUSTER_BITS],
    ['header_length 96', u32(QCOW2_HDR_HEADER_LENGTH, 96), 'FORMAT_CORRUPT', QCOW2_HDR_HEADER_LENGTH],
    ['header_length 108', u32(QCOW2_HDR_HEADER_LENGTH, 108), 'FORMAT_CORRUPT', QCOW2_HDR_HEADER_LENGTH],
    ['header_length past the cluster', u32(QCOW2_HDR_HEADER_LENGTH, 65544), 'FORMAT_CORRUPT', QCOW2_HDR_HEADER_LENGTH],
    ['unknown incompatible bit', u64(QCOW2_HDR_INCOMPATIBLE_FEATURES, 1n << 63n), 'FORMAT_UNSUPPORTED', QCOW2_HDR_INCOMPATIBLE_FEATURES],
    ['external data file bit', u64(QCOW2_HDR_INCOMPATIBLE_FEATURES, 4n), 'FORMAT_UNSUPPORTED', QCOW2_HDR_INCOMPATIBLE_FEATURES],
    ['compression bit without a type', u64(QCOW2_HDR_INCOMPATIBLE_FEATURES, 8n), 'FORMAT_CORRUPT', QCOW2_HDR_COMPRESSION_TYPE],
    ['zstd without the compression bit', (b) => b.writeUInt8(1, QCOW2_HDR_COMPRESSION_TYPE), 'FORMAT_CORRUPT', QCOW2_HDR_COMPRESSION_TYPE],
    ['compression type 7', (b) => b.writeUInt8(7, QCOW2_HDR_COMPRESSION_TYPE), 'FORMAT_UNSUPPORTED', QCOW2_HDR_COMPRESSION_TYPE],
    ['refcount_order 7', u32(QCOW2_HDR_REFCOUNT_ORDER, 7), 'FORMAT_CORRUPT', QCOW2_HDR_REFCOUNT_ORDER],
    ['crypt_method 3', u32(QCOW2_HDR_CRYPT_METHOD, 3), 'FORMAT_UNSUPPORTED', QCOW2_HDR_CRYPT_METHOD],
    ['size 2^63', u64(QCOW2_HDR_SIZE, 1n << 63n), 'FORMAT_UNSUPPORTED', QCOW2_HDR_SIZE],
    ['l1_size 2^32-1', u32(QCOW2_HDR_L1_SIZE, 0xffffffff), 'FORMAT_CORRUPT', QCOW2_HDR_L1_SIZE],
    ['L1 too small for the size', u32(QCOW2_HDR_L1_SIZE, 1), 'FORMAT_CORRUPT', QCOW2_HDR_L1_SIZE],
    ['misaligned L1', u64(QCOW2_HDR_L1_TABLE_OFFSET, 0x30008n), 'FORMAT_CORRUPT', QCOW2_HDR_L1_TABLE_OFFSET],
    ['L1 over the header', u64(QCOW2_HDR_L1_TABLE_OFFSET, 0n), 'FORMAT_CORRUPT', QCOW2_HDR_L1_TABLE_OFFSET],
    ['L1 offset 2^64-65536', u64(QCOW2_HDR_L1_TABLE_OFFSET, (1n << 64n) - 65536n), 'FORMAT_CORRUPT', QCOW2_HDR_L1_TABLE_OFFSET],
    ['no refcount table', u32(QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS, 0), 'FORMAT_CORRUPT', QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS],
    ['huge refcount table', u32(QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS, 129), 'FORMAT_CORRUPT', QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS],
    ['misaligned refcount table', u64(QCOW2_HDR_REFCOUNT_TABLE_OFFSET, 0x10200n), 'FORMAT_CORRUPT', QCOW2_HDR_REFCOUNT_TABLE_OFFSET],
    ['refcount table over the header', u64(QCOW2_HDR_REFCOUNT_TABLE_OFFSET, 0n), 'FORMAT_CORRUPT', QCOW2_HDR_REFCOUNT_TABLE_OFFSET],
    ['too many snapshots', u32(QCOW2_HDR_NB_SNAPSHOTS, 65537), 'FORMAT_CORRUPT', QCOW2_HDR_NB_SNAPSHOTS],
    ['snapshots over the header', u32(QCOW2_HDR_NB_SNAPSHOTS, 1), 'FORMAT_CORRUPT', QCOW2_HDR_SNAPSHOTS_OFFSET],
    ['misaligned snapshot table', u64(QCOW2_HDR_SNAPSHOTS_OFFSET, 77n), 'FORMAT_CORRUPT', QCOW2_HDR_SNAPSHOTS_OFFSET],
    ['backing file past the cluster', u64(QCOW2_HDR_BACKING_FILE_OFFSET, 65537n), 'FORMAT_CORRUPT', QCOW2_HDR_BACKING_FILE_OFFSET],
    ['backing file over the header', u64(QCOW2_HDR_BACKING_FILE_OFFSET, 8n), 'FORMAT_CORRUPT', QCOW2_HDR_BACKING_FILE_OFFSET],
    [
      'backing file name too long',
      (b) => {
        b.writeBigUInt64BE(600n, QCOW2_HDR_BACKING_FILE_OFFSET);
        b.writeUInt32BE(1024, QCOW2_HDR_BACKING_FILE_SIZE);
      },
      'FORMAT_CORRUPT',
      QCOW2_HDR_BACKING_FILE_SIZE,
    ],
    ['extension longer than the cluster', u32(112 + 4, 0x7fffffff), 'FORMAT_CORRUPT', 112 + 4],
    [
      'extension crossing the backing file name',
      (b) => {
        b.writeBigUInt64BE(256n, QCOW2_HDR_BACKING_FILE_OFFSET);
        b.writeUInt32BE(4, QCOW2_HDR_BACKING_FILE_SIZE);
      },
      'FORMAT_CORRUPT',
      112 + 4,
    ],
    [
      'too many extensions',
      (b) => {
        for (let i = 0; i <= QCOW2_MAX_HEADER_EXTENSIONS; i++) {
          b.writeUInt32BE(0x1000 + i, 112 + 8 * i); // an unknown type
          b.writeUInt32BE(0, 112 + 8 * i + 4); // with no data
        }
      },
      'FORMAT_CORRUPT',
      112 + 8 * QCOW2_MAX_HEADER_EXTENSIONS,
    ],
    ['autoclear bits are not refused', u64(QCOW2_HDR_AUTOCLEAR_FEATURES, ~0n & ((1n << 64n) - 1n)), '', 0],
    ['compatible bits are not refused', u64(QCOW2_HDR_COMPATIBLE_FEATURES, (1n << 64n) - 1n), '', 0],
  ];
  for (const [what, poke, code, offset] of cases) {
    const b = Buffer.from(base);
    poke(b);
    if (code === '') {
      t.doesNotThrow(() => parseQcow2Header(b), what);
      continue;
    }
    const err = expectError(t, () => parseQcow2Header(b), [code], what);
    t.equal(err?.details.offset, offset, `${what}: names byte ${offset}`);
  }
  for (const len of [0, 3, 71, 72, 100, 111, 200, 511]) {
    const err = expectError(t, () => parseQcow2Header(base.subarray(0, len)), ['FORMAT_CORRUPT'], `truncated to ${len} bytes`);
    t.type(err?.details.offset, 'number', `truncated to ${len}: names an offset`);
  }
  const dirty = Buffer.from(base);
  dirty.writeBigUInt64BE(QCOW2_INCOMPAT_DIRTY, QCOW2_HDR_INCOMPATIBLE_FEATURES);
  t.equal(parseQcow2Header(dirty).dirty, true, 'dirty bit read');
  t.match(qcow2Warnings(parseQcow2Header(dirty)), [/dirty bit/], 'dirty bit warned about');
});

/** Seeded generator (src/util/random.ts) as a () => [0, 1) function. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

const FIELD_OFFSETS: Array<[number, 4 | 8]> = [
  [4, 4], [8, 8], [16, 4], [20, 4], [24, 8], [32, 4], [36, 4], [40, 8], [48, 8], [56, 4], [60, 4], [64, 8],
  [72, 8], [80, 8], [88, 8], [96, 4], [100, 4], [112, 4], [116, 4],
];
const INTERESTING = [0n, 1n, 7n, 8n, 9n, 21n, 22n, 72n, 104n, 112n, 512n, 65535n, 65536n, 0x7fffffffn, 0xffffffffn, 1n << 53n, 1n << 63n];

/** Mutate and truncate valid headers; each result must parse or fail with a format code. */
function fuzz(t: Test, bases: Buffer[], seed: number, cases: number): void {
  const rand = rng(seed);
  const pick = (n: number) => Math.floor(rand() * n);
  const failures: string[] = [];
  const outcomes: Record<string, number> = { parsed: 0, FORMAT_CORRUPT: 0, FORMAT_UNSUPPORTED: 0 };
  for (let i = 0; i < cases; i++) {
    const base = bases[pick(bases.length)]!;
    let b = Buffer.from(base.subarray(0, Math.min(base.length, 8192)));
    const mode = pick(5);
    if (mode === 0 || mode === 3) {
      for (let k = 1 + pick(8); k > 0; k--) b[pick(rand() < 0.8 ? Math.min(b.length, 1024) : b.length)] = pick(256);
    }
    if (mode === 1 || mode === 3) {
      const [off, width] = FIELD_OFFSETS[pick(FIELD_OFFSETS.length)]!;
      const v = rand() < 0.7 ? INTERESTING[pick(INTERESTING.length)]! : BigInt(pick(2 ** 32));
      if (width === 4) b.writeUInt32BE(Number(v & 0xffffffffn), off);
      else b.writeBigUInt64BE(v, off);
    }
    if (mode === 2 || mode === 3) b = b.subarray(0, pick(rand() < 0.8 ? 1024 : b.length + 1));
    if (mode === 4) for (let k = 4; k < Math.min(b.length, 512); k++) b[k] = pick(256);
    try {
      const h = parseQcow2Header(b);
      qcow2Warnings(h);
      if (h.clusterSize < 512 || h.clusterSize > 2 * MiB || h.l1Size > 4 * MiB || !Number.isSafeInteger(h.virtualSize)) {
        failures.push(`case ${i}: parsed out-of-range values`);
      }
      outcomes.parsed = (outcomes.parsed ?? 0) + 1;
    } catch (err) {
      const code = err instanceof IslandError ? err.code : String(err);
      if (code !== 'FORMAT_CORRUPT' && code !== 'FORMAT_UNSUPPORTED') failures.push(`case ${i}: ${String(err)}`);
      else if (typeof (err as IslandError).details.offset !== 'number') failures.push(`case ${i}: no offset in ${String(err)}`);
      else outcomes[code] = (outcomes[code] ?? 0) + 1;
    }
  }
  t.same(failures.slice(0, 10), [], `${cases} fuzzed headers: none crashed or escaped the format codes`);
  t.ok(outcomes.parsed! > cases / 20, `some mutants still parse (${JSON.stringify(outcomes)})`);
  t.ok(outcomes.FORMAT_CORRUPT! > cases / 20, 'many mutants are corrupt');
  t.ok(outcomes.FORMAT_UNSUPPORTED! > 0, 'some mutants are unsupported');
}

t.test('fuzzed island headers parse or fail cleanly', async (t) => {
  const bases = ISLAND_CASES.map(([virtualSize, clusterSize]) => createQcow2Image({ virtualSize, clusterSize }).subarray(0, 8192));
  fuzz(t, bases, 0x15a17d, 30000);
});
