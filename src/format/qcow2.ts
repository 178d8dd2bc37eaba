/**
 * qcow2 image headers: the one island writes for a new volume, and the facts it reads back.
 * The layout (byte table, constants, types) is in qcow2-layout.ts, reading in qcow2-parse.ts;
 * this module creates headers and is the one the rest of island imports.
 */
import { IslandError } from '../errors.js';
import { Writer } from './bytes.js';
import {
  QCOW2_AUTOCLEAR_BITMAPS_BITNR,
  QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR,
  QCOW2_COMPAT_LAZY_REFCOUNTS_BITNR,
  QCOW2_COMPRESSION_ZLIB,
  QCOW2_CRYPT_NONE,
  QCOW2_DEFAULT_CLUSTER_SIZE,
  QCOW2_EXT_END,
  QCOW2_EXT_FEATURE_TABLE,
  QCOW2_FEATURE_ENTRY_SIZE,
  QCOW2_FEATURE_NAME_LEN,
  QCOW2_FEATURE_TYPE_AUTOCLEAR,
  QCOW2_FEATURE_TYPE_COMPAT,
  QCOW2_FEATURE_TYPE_INCOMPAT,
  QCOW2_HDR_COMPRESSION_TYPE,
  QCOW2_INCOMPAT_COMPRESSION_BITNR,
  QCOW2_INCOMPAT_CORRUPT_BITNR,
  QCOW2_INCOMPAT_DATA_FILE_BITNR,
  QCOW2_INCOMPAT_DIRTY_BITNR,
  QCOW2_INCOMPAT_EXTL2_BITNR,
  QCOW2_L1E_SIZE,
  QCOW2_L2E_SIZE,
  QCOW2_MAGIC,
  QCOW2_MAX_CLUSTER_BITS,
  QCOW2_MIN_CLUSTER_BITS,
  QCOW2_REFCOUNT_ORDER,
  QCOW2_REFTABLE_ENTRY_SIZE,
  QCOW2_SECTOR_SIZE,
  QCOW2_V3_HEADER_LENGTH,
  QCOW2_VERSION_3,
  type Qcow2CreateOptions,
  qcow2BytesPerL1Entry,
  qcow2MaxVirtualSize,
} from './qcow2-layout.js';

export * from './qcow2-layout.js';
export { parseQcow2Header, qcow2ExtensionKind, qcow2Warnings } from './qcow2-parse.js';

function invalid(message: string): IslandError {
  return new IslandError('INVALID_ARGUMENT', message);
}

/** Check create options (as the catalog should before recording a volume); returns them filled. */
export function validateQcow2CreateOptions(opts: Qcow2CreateOptions): Required<Qcow2CreateOptions> {
  const clusterSize = opts.clusterSize ?? QCOW2_DEFAULT_CLUSTER_SIZE;
  const powerOfTwo = Number.isSafeInteger(clusterSize) && clusterSize > 0 && (clusterSize & (clusterSize - 1)) === 0;
  if (!powerOfTwo || clusterSize < 2 ** QCOW2_MIN_CLUSTER_BITS || clusterSize > 2 ** QCOW2_MAX_CLUSTER_BITS) {
    throw invalid(`qcow2 cluster size must be a power of two from 512 to 2 MiB: ${String(clusterSize)}`);
  }
  const { virtualSize } = opts;
  if (!Number.isSafeInteger(virtualSize) || virtualSize <= 0 || virtualSize % QCOW2_SECTOR_SIZE !== 0) {
    throw invalid(`virtual size must be a positive multiple of ${QCOW2_SECTOR_SIZE} bytes: ${String(virtualSize)}`);
  }
  const max = qcow2MaxVirtualSize(clusterSize);
  if (virtualSize > max) {
    throw invalid(`virtual size ${virtualSize} exceeds ${max}, the limit for ${clusterSize}-byte clusters`);
  }
  return { virtualSize, clusterSize };
}

/** The feature name table island writes: every bit the specification names. */
const FEATURE_NAMES: ReadonlyArray<readonly [type: number, bit: number, name: string]> = [
  [QCOW2_FEATURE_TYPE_INCOMPAT, QCOW2_INCOMPAT_DIRTY_BITNR, 'dirty bit'],
  [QCOW2_FEATURE_TYPE_INCOMPAT, QCOW2_INCOMPAT_CORRUPT_BITNR, 'corrupt bit'],
  [QCOW2_FEATURE_TYPE_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE_BITNR, 'external data file'],
  [QCOW2_FEATURE_TYPE_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION_BITNR, 'compression type'],
  [QCOW2_FEATURE_TYPE_INCOMPAT, QCOW2_INCOMPAT_EXTL2_BITNR, 'extended L2 entries'],
  [QCOW2_FEATURE_TYPE_COMPAT, QCOW2_COMPAT_LAZY_REFCOUNTS_BITNR, 'lazy refcounts'],
  [QCOW2_FEATURE_TYPE_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS_BITNR, 'bitmaps'],
  [QCOW2_FEATURE_TYPE_AUTOCLEAR, QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR, 'raw external data'],
];

/**
 * The bytes of a new, empty version 3 image: header and extensions in cluster 0, then the
 * refcount table, the refcount blocks and the (all zero) L1 table, each cluster-aligned. Every
 * one of these clusters has refcount 1 and nothing else is allocated, so `qemu-img check`
 * finds neither errors nor leaks. The result is cluster-aligned; everything after the refcount
 * blocks is zero, so a caller may write only up to that point and extend the file sparsely.
 */
export function createQcow2Image(opts: Qcow2CreateOptions): Buffer {
  const { virtualSize, clusterSize } = validateQcow2CreateOptions(opts);
  const clusterBits = Math.log2(clusterSize);
  const l1Size = Math.ceil(virtualSize / qcow2BytesPerL1Entry(clusterSize, QCOW2_L2E_SIZE));
  const l1Clusters = Math.ceil((l1Size * QCOW2_L1E_SIZE) / clusterSize);
  const refcountsPerBlock = (clusterSize * 8) / 2 ** QCOW2_REFCOUNT_ORDER; // 8 bits a byte
  const blocksPerTableCluster = clusterSize / QCOW2_REFTABLE_ENTRY_SIZE;

  // The refcount structures count themselves: grow them until they cover every cluster.
  let tableClusters = 1;
  let blocks = 1;
  for (;;) {
    const total = 1 + tableClusters + blocks + l1Clusters;
    const needBlocks = Math.ceil(total / refcountsPerBlock);
    const needTable = Math.ceil(needBlocks / blocksPerTableCluster);
    if (needBlocks === blocks && needTable === tableClusters) break;
    blocks = Math.max(blocks, needBlocks);
    tableClusters = Math.max(tableClusters, needTable);
  }
  const totalClusters = 1 + tableClusters + blocks + l1Clusters;
  const tableOffset = clusterSize;
  const firstBlockOffset = tableOffset + tableClusters * clusterSize;
  const l1Offset = firstBlockOffset + blocks * clusterSize;
  const fileLength = totalClusters * clusterSize;

  const w = new Writer(fileLength);
  w.u32(QCOW2_MAGIC).u32(QCOW2_VERSION_3);
  w.u64(0).u32(0); // backing_file_offset, backing_file_size
  w.u32(clusterBits).u64(virtualSize).u32(QCOW2_CRYPT_NONE);
  w.u32(l1Size).u64(l1Offset);
  w.u64(tableOffset).u32(tableClusters);
  w.u32(0).u64(0); // nb_snapshots, snapshots_offset
  w.u64(0).u64(0).u64(0); // incompatible, compatible (lazy refcounts off), autoclear features
  w.u32(QCOW2_REFCOUNT_ORDER).u32(QCOW2_V3_HEADER_LENGTH);
  w.u8(QCOW2_COMPRESSION_ZLIB).zeros(QCOW2_V3_HEADER_LENGTH - QCOW2_HDR_COMPRESSION_TYPE - 1);
  if (w.pos !== QCOW2_V3_HEADER_LENGTH) throw new IslandError('INTERNAL', `qcow2 header written as ${w.pos} bytes`);

  w.u32(QCOW2_EXT_FEATURE_TABLE).u32(FEATURE_NAMES.length * QCOW2_FEATURE_ENTRY_SIZE);
  for (const [type, bit, name] of FEATURE_NAMES) {
    const nameBytes = Buffer.from(name, 'latin1');
    w.u8(type).u8(bit).bytes(nameBytes).zeros(QCOW2_FEATURE_NAME_LEN - nameBytes.length);
  }
  w.u32(QCOW2_EXT_END).u32(0);
  // 112 + 8 + 8 * 48 + 8 = 512 bytes: the header fits the smallest cluster.
  if (w.pos > clusterSize) throw new IslandError('INTERNAL', `qcow2 header area of ${w.pos} bytes exceeds the cluster`);
  w.zeros(tableOffset - w.pos);

  for (let i = 0; i < blocks; i++) w.u64(firstBlockOffset + i * clusterSize);
  w.zeros(firstBlockOffset - w.pos);
  for (let i = 0; i < totalClusters; i++) w.u16(1); // each cluster used once; 16-bit refcounts (order 4)
  w.zeros(fileLength - w.pos); // rest of the refcount blocks, then the empty L1 table
  return w.finish();
}
