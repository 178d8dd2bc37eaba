/**
 * qcow2 image headers: the one island writes for a new volume, and the facts it reads back.
 *
 * island keeps the image's bytes verbatim; it only needs the header to create an empty image
 * and to warn about features that make snapshots or restores costly. All qcow2 numbers are
 * big-endian. The header (docs/formats/qcow2.md has the prose):
 *
 *   Byte   0 -   3: magic "QFI\xfb"
 *          4 -   7: version (2 or 3)
 *          8 -  15: backing_file_offset (0: no backing file; else inside the first cluster)
 *         16 -  19: backing_file_size (at most 1023 bytes, not NUL-terminated)
 *         20 -  23: cluster_bits (cluster size = 1 << cluster_bits; 9..21)
 *         24 -  31: size (virtual size in bytes)
 *         32 -  35: crypt_method (0 none, 1 AES, 2 LUKS)
 *         36 -  39: l1_size (entries in the active L1 table)
 *         40 -  47: l1_table_offset (cluster-aligned)
 *         48 -  55: refcount_table_offset (cluster-aligned)
 *         56 -  59: refcount_table_clusters
 *         60 -  63: nb_snapshots (internal snapshots)
 *         64 -  71: snapshots_offset (cluster-aligned)
 *   Version 2 ends here (72 bytes). Version 3 continues:
 *         72 -  79: incompatible_features (bit 0 dirty, 1 corrupt, 2 external data file,
 *                   3 compression type, 4 extended L2 entries; unknown bits forbid opening)
 *         80 -  87: compatible_features (bit 0 lazy refcounts)
 *         88 -  95: autoclear_features (bit 0 bitmaps, 1 raw external data)
 *         96 -  99: refcount_order (refcount width = 1 << refcount_order bits; at most 6)
 *        100 - 103: header_length (>= 104, a multiple of 8)
 *              104: compression_type (0 zlib, 1 zstd), present when header_length > 104
 *        105 - 111: padding (zero)
 *
 * Header extensions follow the header (at byte 72 for version 2, header_length for version 3):
 *
 *   Byte   0 -   3: type (0 ends the list)
 *          4 -   7: length n of the data
 *          8 - 8+n: data, then zero padding to a multiple of 8
 *
 * The extensions end at the end marker, at backing_file_offset when there is a backing file,
 * or at the end of the first cluster. The backing file name follows them, in the first cluster.
 * A feature name table entry is 48 bytes: byte 0 feature type (0 incompatible, 1 compatible,
 * 2 autoclear), byte 1 bit number, bytes 2-47 name padded with zeros.
 *
 * Hostile input is normal input: every field is range-checked before it is used; truncation
 * and inconsistency give FORMAT_CORRUPT naming the byte offset; a valid image using something
 * island cannot keep (unknown incompatible features, an external data file, an unknown
 * compression or encryption method, a size beyond island's limit) gives FORMAT_UNSUPPORTED.
 */
import { IslandError } from '../errors.js';
import { Reader, Writer, corrupt, toSafeNumber } from './bytes.js';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const QCOW2_VERSION_2 = 2;
export const QCOW2_VERSION_3 = 3;

// Header field offsets.
export const QCOW2_HDR_MAGIC = 0;
export const QCOW2_HDR_VERSION = 4;
export const QCOW2_HDR_BACKING_FILE_OFFSET = 8;
export const QCOW2_HDR_BACKING_FILE_SIZE = 16;
export const QCOW2_HDR_CLUSTER_BITS = 20;
export const QCOW2_HDR_SIZE = 24;
export const QCOW2_HDR_CRYPT_METHOD = 32;
export const QCOW2_HDR_L1_SIZE = 36;
export const QCOW2_HDR_L1_TABLE_OFFSET = 40;
export const QCOW2_HDR_REFCOUNT_TABLE_OFFSET = 48;
export const QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS = 56;
export const QCOW2_HDR_NB_SNAPSHOTS = 60;
export const QCOW2_HDR_SNAPSHOTS_OFFSET = 64;
export const QCOW2_HDR_INCOMPATIBLE_FEATURES = 72;
export const QCOW2_HDR_COMPATIBLE_FEATURES = 80;
export const QCOW2_HDR_AUTOCLEAR_FEATURES = 88;
export const QCOW2_HDR_REFCOUNT_ORDER = 96;
export const QCOW2_HDR_HEADER_LENGTH = 100;
export const QCOW2_HDR_COMPRESSION_TYPE = 104;

/** Version 2 headers are exactly this long. */
export const QCOW2_V2_HEADER_LENGTH = 72;
/** Version 3 headers are at least this long (through header_length). */
export const QCOW2_V3_MIN_HEADER_LENGTH = 104;
/** The version 3 header island writes: through compression_type, padded to 8. */
export const QCOW2_V3_HEADER_LENGTH = 112;
/** header_length must be a multiple of this. */
export const QCOW2_HEADER_ALIGN = 8;

// Incompatible feature bits (an unknown one forbids opening the image).
export const QCOW2_INCOMPAT_DIRTY_BITNR = 0;
export const QCOW2_INCOMPAT_DIRTY = 1n << BigInt(QCOW2_INCOMPAT_DIRTY_BITNR);
export const QCOW2_INCOMPAT_CORRUPT_BITNR = 1;
export const QCOW2_INCOMPAT_CORRUPT = 1n << BigInt(QCOW2_INCOMPAT_CORRUPT_BITNR);
export const QCOW2_INCOMPAT_DATA_FILE_BITNR = 2;
export const QCOW2_INCOMPAT_DATA_FILE = 1n << BigInt(QCOW2_INCOMPAT_DATA_FILE_BITNR);
export const QCOW2_INCOMPAT_COMPRESSION_BITNR = 3;
export const QCOW2_INCOMPAT_COMPRESSION = 1n << BigInt(QCOW2_INCOMPAT_COMPRESSION_BITNR);
export const QCOW2_INCOMPAT_EXTL2_BITNR = 4;
export const QCOW2_INCOMPAT_EXTL2 = 1n << BigInt(QCOW2_INCOMPAT_EXTL2_BITNR);
/** Every incompatible feature bit the qcow2 specification defines. */
export const QCOW2_INCOMPAT_MASK =
  QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE | QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2;
/**
 * Known bits island still refuses: with an external data file the guest's data lives outside
 * the image, so a snapshot of the image's bytes would hold metadata only.
 */
export const QCOW2_INCOMPAT_REFUSED = QCOW2_INCOMPAT_DATA_FILE;

// Compatible feature bits (unknown ones may be ignored).
export const QCOW2_COMPAT_LAZY_REFCOUNTS_BITNR = 0;
export const QCOW2_COMPAT_LAZY_REFCOUNTS = 1n << BigInt(QCOW2_COMPAT_LAZY_REFCOUNTS_BITNR);
export const QCOW2_COMPAT_MASK = QCOW2_COMPAT_LAZY_REFCOUNTS;

// Autoclear feature bits (a writer that does not know one clears it).
export const QCOW2_AUTOCLEAR_BITMAPS_BITNR = 0;
export const QCOW2_AUTOCLEAR_BITMAPS = 1n << BigInt(QCOW2_AUTOCLEAR_BITMAPS_BITNR);
export const QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR = 1;
export const QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1n << BigInt(QCOW2_AUTOCLEAR_DATA_FILE_RAW_BITNR);
export const QCOW2_AUTOCLEAR_MASK = QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_DATA_FILE_RAW;

// crypt_method values.
export const QCOW2_CRYPT_NONE = 0;
export const QCOW2_CRYPT_AES = 1;
export const QCOW2_CRYPT_LUKS = 2;

// compression_type values.
export const QCOW2_COMPRESSION_ZLIB = 0;
export const QCOW2_COMPRESSION_ZSTD = 1;

// Header extension types and framing.
export const QCOW2_EXT_END = 0x00000000;
export const QCOW2_EXT_BACKING_FORMAT = 0xe2792aca;
export const QCOW2_EXT_FEATURE_TABLE = 0x6803f857;
export const QCOW2_EXT_BITMAPS = 0x23852875;
export const QCOW2_EXT_CRYPTO_HEADER = 0x0537be77;
export const QCOW2_EXT_DATA_FILE = 0x44415441;
// Offsets inside one extension.
export const QCOW2_EXT_TYPE = 0;
export const QCOW2_EXT_LENGTH = 4;
export const QCOW2_EXT_DATA = 8;
/** type (u32) + length (u32). */
export const QCOW2_EXT_HEADER_SIZE = QCOW2_EXT_DATA;
/** Extension data is padded to a multiple of this. */
export const QCOW2_EXT_ALIGN = 8;

// Feature name table entries.
export const QCOW2_FEATURE_ENTRY_SIZE = 48;
export const QCOW2_FEATURE_ENTRY_TYPE = 0;
export const QCOW2_FEATURE_ENTRY_BIT = 1;
export const QCOW2_FEATURE_ENTRY_NAME = 2;
export const QCOW2_FEATURE_NAME_LEN = 46;
export const QCOW2_FEATURE_TYPE_INCOMPAT = 0;
export const QCOW2_FEATURE_TYPE_COMPAT = 1;
export const QCOW2_FEATURE_TYPE_AUTOCLEAR = 2;

// Sizes and limits.
export const QCOW2_SECTOR_SIZE = 512;
/** 512-byte clusters: the smallest the specification allows. */
export const QCOW2_MIN_CLUSTER_BITS = 9;
/** 2 MiB clusters: QEMU cannot open images with larger ones. */
export const QCOW2_MAX_CLUSTER_BITS = 21;
/** Extended L2 entries split a cluster into 32 subclusters of at least 512 bytes: 16 KiB. */
export const QCOW2_EXTL2_MIN_CLUSTER_BITS = 14;
export const QCOW2_DEFAULT_CLUSTER_SIZE = 65536;
export const QCOW2_L1E_SIZE = 8;
export const QCOW2_L2E_SIZE = 8;
export const QCOW2_L2E_SIZE_EXTENDED = 16;
export const QCOW2_REFTABLE_ENTRY_SIZE = 8;
/** The refcount width island creates images with: 16 bits, what QEMU uses by default. */
export const QCOW2_REFCOUNT_ORDER = 4;
/** refcount_order may not exceed 6 (64-bit refcounts). */
export const QCOW2_MAX_REFCOUNT_ORDER = 6;
/**
 * A 32 MiB L1 table (4 Mi entries) is QEMU's limit: enough for 2 PiB at 64 KiB clusters,
 * 128 GiB at 512-byte clusters. QEMU refuses to open an image with a larger one.
 */
export const QCOW2_MAX_L1_BYTES = 32 * 1024 * 1024;
export const QCOW2_MAX_L1_SIZE = QCOW2_MAX_L1_BYTES / QCOW2_L1E_SIZE;
/** An 8 MiB refcount table is QEMU's limit: it covers what a maximal L1 table can address. */
export const QCOW2_MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
/** QEMU refuses images with more internal snapshots than this. */
export const QCOW2_MAX_SNAPSHOTS = 65536;
/** The specification limits the backing file name to 1023 bytes. */
export const QCOW2_MAX_BACKING_FILE_NAME = 1023;
/**
 * The specification defines five extension types, each at most once; 256 leaves room for
 * unknown future ones while bounding the list a hostile 2 MiB first cluster could produce
 * (262,144 empty extensions).
 */
export const QCOW2_MAX_HEADER_EXTENSIONS = 256;
/**
 * island's limit on the virtual size: 2 PiB, what QEMU can address with the default 64 KiB
 * clusters. It keeps every byte offset of a fully allocated image (data plus its metadata)
 * far below 2^53, so offsets stay exact JavaScript numbers.
 */
export const QCOW2_MAX_VIRTUAL_SIZE = 2 ** 51;
/** Everything parseQcow2Header reads lies in the first cluster, which is at most this long. */
export const QCOW2_MAX_HEADER_BYTES = 2 ** QCOW2_MAX_CLUSTER_BITS;

export type Qcow2CryptMethod = 'none' | 'aes' | 'luks';
export type Qcow2CompressionType = 'zlib' | 'zstd';
export type Qcow2ExtensionKind = 'backing_format' | 'feature_table' | 'bitmaps' | 'crypto_header' | 'data_file' | 'unknown';

export interface Qcow2Extension {
  /** The extension type as stored. */
  readonly type: number;
  /** The known name of the type, or 'unknown'. */
  readonly kind: Qcow2ExtensionKind;
  /** Byte offset of the extension (its type field) in the image. */
  readonly offset: number;
  /** The extension data, verbatim (a copy, without padding). */
  readonly data: Buffer;
}

export interface Qcow2BackingFile {
  readonly offset: number;
  readonly size: number;
  /** The name as stored, decoded as UTF-8. */
  readonly name: string;
}

export interface Qcow2Header {
  readonly version: 2 | 3;
  /** 72 for version 2; header_length for version 3. */
  readonly headerLength: number;
  readonly virtualSize: number;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly cryptMethod: Qcow2CryptMethod;
  readonly l1Size: number;
  readonly l1TableOffset: number;
  readonly refcountTableOffset: number;
  readonly refcountTableClusters: number;
  /** 4 for version 2. */
  readonly refcountOrder: number;
  readonly refcountBits: number;
  readonly nbSnapshots: number;
  readonly snapshotsOffset: number;
  readonly backingFile: Qcow2BackingFile | null;
  /** From the backing format extension, if present. */
  readonly backingFormat: string | null;
  /** 0n for version 2. */
  readonly incompatibleFeatures: bigint;
  readonly compatibleFeatures: bigint;
  readonly autoclearFeatures: bigint;
  /** Incompatible bit 0: refcounts may be inconsistent; QEMU repairs them on open. */
  readonly dirty: boolean;
  /** Incompatible bit 1: QEMU found an inconsistency; the image must not be written. */
  readonly corrupt: boolean;
  /** Incompatible bit 4: L2 entries carry subcluster bitmaps. */
  readonly extendedL2: boolean;
  /** Compatible bit 0: refcount updates are postponed (and the dirty bit used). */
  readonly lazyRefcounts: boolean;
  readonly compressionType: Qcow2CompressionType;
  readonly extensions: readonly Qcow2Extension[];
}

export interface Qcow2CreateOptions {
  /** Virtual size in bytes: > 0, a multiple of 512, at most qcow2MaxVirtualSize(clusterSize). */
  virtualSize: number;
  /** Power of two from 512 to 2 MiB; 64 KiB by default. */
  clusterSize?: number;
}

function unsupported(what: string, offset: number, details: Record<string, unknown> = {}): IslandError {
  return new IslandError('FORMAT_UNSUPPORTED', `${what} (at byte ${offset})`, { details: { ...details, offset } });
}

function invalid(message: string): IslandError {
  return new IslandError('INVALID_ARGUMENT', message);
}

function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** Bytes of guest data one L1 entry covers: a cluster-sized L2 table of cluster pointers. */
function bytesPerL1Entry(clusterSize: number, l2EntrySize: number): number {
  return clusterSize * (clusterSize / l2EntrySize);
}

/** The largest virtual size island creates with this cluster size (the L1 limit or 2 PiB). */
export function qcow2MaxVirtualSize(clusterSize: number): number {
  return Math.min(QCOW2_MAX_VIRTUAL_SIZE, QCOW2_MAX_L1_SIZE * bytesPerL1Entry(clusterSize, QCOW2_L2E_SIZE));
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
  const l1Size = Math.ceil(virtualSize / bytesPerL1Entry(clusterSize, QCOW2_L2E_SIZE));
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

const EXTENSION_KINDS: ReadonlyMap<number, Qcow2ExtensionKind> = new Map([
  [QCOW2_EXT_BACKING_FORMAT, 'backing_format'],
  [QCOW2_EXT_FEATURE_TABLE, 'feature_table'],
  [QCOW2_EXT_BITMAPS, 'bitmaps'],
  [QCOW2_EXT_CRYPTO_HEADER, 'crypto_header'],
  [QCOW2_EXT_DATA_FILE, 'data_file'],
]);

const COMPRESSION_TYPES: ReadonlyMap<number, Qcow2CompressionType> = new Map([
  [QCOW2_COMPRESSION_ZLIB, 'zlib'],
  [QCOW2_COMPRESSION_ZSTD, 'zstd'],
]);

const CRYPT_METHODS: ReadonlyMap<number, Qcow2CryptMethod> = new Map([
  [QCOW2_CRYPT_NONE, 'none'],
  [QCOW2_CRYPT_AES, 'aes'],
  [QCOW2_CRYPT_LUKS, 'luks'],
]);

/** One function names extension types; callers never compare type numbers themselves. */
export function qcow2ExtensionKind(type: number): Qcow2ExtensionKind {
  return EXTENSION_KINDS.get(type) ?? 'unknown';
}

function u32At(r: Reader, off: number, field: string): number {
  r.pos = off;
  return r.u32(field);
}

function u64At(r: Reader, off: number, field: string): bigint {
  r.pos = off;
  return r.u64(field);
}

/** A 64-bit offset that must fit a number, be cluster-aligned and not point into cluster 0. */
function tableOffsetAt(r: Reader, off: number, field: string, clusterSize: number, used: boolean): number {
  const v = toSafeNumber(u64At(r, off, field), field, off);
  if (v % clusterSize !== 0) throw corrupt(`${field} ${v} is not aligned to the ${clusterSize}-byte cluster`, off);
  if (used && v < clusterSize) throw corrupt(`${field} ${v} points into the header cluster`, off);
  return v;
}

/** A table of `bytes` bytes at `start` must end at a safe offset. */
function checkTableEnd(start: number, bytes: number, field: string, off: number): void {
  if (start + bytes > Number.MAX_SAFE_INTEGER) throw corrupt(`${field} ends past the largest supported offset`, off);
}

/** Read the header extensions from `start` up to `end` (exclusive), stopping at the end marker. */
function readExtensions(buf: Buffer, start: number, end: number): Qcow2Extension[] {
  const r = new Reader(buf);
  const out: Qcow2Extension[] = [];
  let off = start;
  while (off < end) {
    if (end - off < QCOW2_EXT_HEADER_SIZE) throw corrupt(`header extension at ${off} crosses the end of the extension area (${end})`, off);
    const type = u32At(r, off + QCOW2_EXT_TYPE, 'header extension type');
    const length = u32At(r, off + QCOW2_EXT_LENGTH, 'header extension length');
    if (type === QCOW2_EXT_END) return out;
    const dataAt = off + QCOW2_EXT_DATA;
    if (length > end - dataAt) throw corrupt(`header extension of ${length} bytes crosses the end of the extension area (${end})`, off + QCOW2_EXT_LENGTH);
    if (out.length >= QCOW2_MAX_HEADER_EXTENSIONS) throw corrupt(`more than ${QCOW2_MAX_HEADER_EXTENSIONS} header extensions`, off);
    r.pos = dataAt;
    const data = Buffer.from(r.bytes(length, 'header extension data'));
    out.push({ type, kind: qcow2ExtensionKind(type), offset: off, data });
    off = dataAt + alignUp(length, QCOW2_EXT_ALIGN);
  }
  return out;
}

/** Names the image itself gives its feature bits (for messages about unknown bits). */
function featureName(exts: readonly Qcow2Extension[], type: number, bit: number): string | null {
  for (const e of exts) {
    if (e.type !== QCOW2_EXT_FEATURE_TABLE) continue;
    for (let at = 0; at + QCOW2_FEATURE_ENTRY_SIZE <= e.data.length; at += QCOW2_FEATURE_ENTRY_SIZE) {
      if (e.data[at + QCOW2_FEATURE_ENTRY_TYPE] !== type || e.data[at + QCOW2_FEATURE_ENTRY_BIT] !== bit) continue;
      const raw = e.data.subarray(at + QCOW2_FEATURE_ENTRY_NAME, at + QCOW2_FEATURE_ENTRY_SIZE);
      const nul = raw.indexOf(0);
      return raw.subarray(0, nul < 0 ? raw.length : nul).toString('utf8');
    }
  }
  return null;
}

function bitsOf(mask: bigint): number[] {
  const bits: number[] = [];
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) bits.push(bit);
  return bits;
}

function describeBits(exts: readonly Qcow2Extension[], type: number, mask: bigint): string {
  return bitsOf(mask)
    .map((bit) => {
      const name = featureName(exts, type, bit);
      return name === null ? `bit ${bit}` : `bit ${bit} (${JSON.stringify(name)})`;
    })
    .join(', ');
}

/**
 * Parse and validate a qcow2 header (version 2 or 3) with its extensions and backing file name.
 * `buf` holds the start of the image; everything read lies in the first cluster, so
 * min(file length, QCOW2_MAX_HEADER_BYTES) bytes are always enough.
 */
export function parseQcow2Header(buf: Buffer): Qcow2Header {
  const r = new Reader(buf);
  r.need(QCOW2_V2_HEADER_LENGTH, 'qcow2 header');
  const magic = u32At(r, QCOW2_HDR_MAGIC, 'magic');
  if (magic !== QCOW2_MAGIC) throw corrupt(`not a qcow2 image: magic 0x${magic.toString(16).padStart(8, '0')}`, QCOW2_HDR_MAGIC);
  const version = u32At(r, QCOW2_HDR_VERSION, 'version');
  if (version !== QCOW2_VERSION_2 && version !== QCOW2_VERSION_3) throw unsupported(`unsupported qcow2 version ${version}`, QCOW2_HDR_VERSION, { version });

  const clusterBits = u32At(r, QCOW2_HDR_CLUSTER_BITS, 'cluster_bits');
  if (clusterBits < QCOW2_MIN_CLUSTER_BITS) throw corrupt(`cluster_bits ${clusterBits} is below ${QCOW2_MIN_CLUSTER_BITS}`, QCOW2_HDR_CLUSTER_BITS);
  if (clusterBits > QCOW2_MAX_CLUSTER_BITS) {
    throw unsupported(`cluster size 2^${clusterBits} exceeds 2 MiB`, QCOW2_HDR_CLUSTER_BITS, { clusterBits });
  }
  const clusterSize = 2 ** clusterBits;

  let headerLength = QCOW2_V2_HEADER_LENGTH;
  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = QCOW2_REFCOUNT_ORDER;
  let compression = QCOW2_COMPRESSION_ZLIB;
  if (version === QCOW2_VERSION_3) {
    r.pos = 0;
    r.need(QCOW2_V3_MIN_HEADER_LENGTH, 'qcow2 version 3 header');
    headerLength = u32At(r, QCOW2_HDR_HEADER_LENGTH, 'header_length');
    if (headerLength < QCOW2_V3_MIN_HEADER_LENGTH || headerLength % QCOW2_HEADER_ALIGN !== 0 || headerLength > clusterSize) {
      throw corrupt(`header_length ${headerLength} is not a multiple of 8 from 104 to the cluster size`, QCOW2_HDR_HEADER_LENGTH);
    }
    r.pos = 0;
    r.need(headerLength, 'qcow2 header (header_length)');
    incompatibleFeatures = u64At(r, QCOW2_HDR_INCOMPATIBLE_FEATURES, 'incompatible_features');
    compatibleFeatures = u64At(r, QCOW2_HDR_COMPATIBLE_FEATURES, 'compatible_features');
    autoclearFeatures = u64At(r, QCOW2_HDR_AUTOCLEAR_FEATURES, 'autoclear_features');
    refcountOrder = u32At(r, QCOW2_HDR_REFCOUNT_ORDER, 'refcount_order');
    if (headerLength > QCOW2_HDR_COMPRESSION_TYPE) {
      r.pos = QCOW2_HDR_COMPRESSION_TYPE;
      compression = r.u8('compression_type');
    }
  }

  // Backing file name and the end of the extension area.
  const backingOffsetBig = u64At(r, QCOW2_HDR_BACKING_FILE_OFFSET, 'backing_file_offset');
  if (backingOffsetBig > BigInt(clusterSize)) throw corrupt(`backing_file_offset ${backingOffsetBig} is outside the header cluster`, QCOW2_HDR_BACKING_FILE_OFFSET);
  const backingOffset = Number(backingOffsetBig);
  if (backingOffset !== 0 && backingOffset < headerLength) throw corrupt(`backing_file_offset ${backingOffset} overlaps the header`, QCOW2_HDR_BACKING_FILE_OFFSET);
  const extensions = readExtensions(buf, headerLength, backingOffset !== 0 ? backingOffset : clusterSize);

  // Features before anything else: an unknown incompatible bit may change any field's meaning.
  const unknownIncompat = incompatibleFeatures & ~QCOW2_INCOMPAT_MASK;
  if (unknownIncompat !== 0n) {
    const bits = describeBits(extensions, QCOW2_FEATURE_TYPE_INCOMPAT, unknownIncompat);
    throw unsupported(`unknown qcow2 incompatible features: ${bits}`, QCOW2_HDR_INCOMPATIBLE_FEATURES, { bits: bitsOf(unknownIncompat) });
  }
  if (incompatibleFeatures & QCOW2_INCOMPAT_REFUSED) {
    throw unsupported('qcow2 external data file: the guest data lives outside the image, which island cannot snapshot', QCOW2_HDR_INCOMPATIBLE_FEATURES, {
      bits: bitsOf(incompatibleFeatures & QCOW2_INCOMPAT_REFUSED),
    });
  }
  const extendedL2 = (incompatibleFeatures & QCOW2_INCOMPAT_EXTL2) !== 0n;
  if (extendedL2 && clusterBits < QCOW2_EXTL2_MIN_CLUSTER_BITS) {
    throw corrupt(`extended L2 entries need clusters of at least 16 KiB, not ${clusterSize} bytes`, QCOW2_HDR_INCOMPATIBLE_FEATURES);
  }
  const compressionType = COMPRESSION_TYPES.get(compression);
  if (compressionType === undefined) throw unsupported(`unknown qcow2 compression type ${compression}`, QCOW2_HDR_COMPRESSION_TYPE, { compression });
  if ((compression !== QCOW2_COMPRESSION_ZLIB) !== ((incompatibleFeatures & QCOW2_INCOMPAT_COMPRESSION) !== 0n)) {
    throw corrupt(`compression type ${compressionType} disagrees with the compression type feature bit`, QCOW2_HDR_COMPRESSION_TYPE);
  }
  if (refcountOrder > QCOW2_MAX_REFCOUNT_ORDER) throw corrupt(`refcount_order ${refcountOrder} exceeds ${QCOW2_MAX_REFCOUNT_ORDER}`, QCOW2_HDR_REFCOUNT_ORDER);

  const cryptRaw = u32At(r, QCOW2_HDR_CRYPT_METHOD, 'crypt_method');
  const cryptMethod = CRYPT_METHODS.get(cryptRaw);
  if (cryptMethod === undefined) throw unsupported(`unknown qcow2 encryption method ${cryptRaw}`, QCOW2_HDR_CRYPT_METHOD, { cryptMethod: cryptRaw });

  const sizeBig = u64At(r, QCOW2_HDR_SIZE, 'size');
  if (sizeBig > BigInt(QCOW2_MAX_VIRTUAL_SIZE)) {
    throw unsupported(`virtual size ${sizeBig} exceeds island's limit of ${QCOW2_MAX_VIRTUAL_SIZE}`, QCOW2_HDR_SIZE, { virtualSize: String(sizeBig) });
  }
  const virtualSize = Number(sizeBig);

  // Active L1 table: bounded, cluster-aligned, large enough for the virtual size.
  const l1Size = u32At(r, QCOW2_HDR_L1_SIZE, 'l1_size');
  if (l1Size > QCOW2_MAX_L1_SIZE) throw corrupt(`l1_size ${l1Size} exceeds ${QCOW2_MAX_L1_SIZE} entries (a 32 MiB L1 table)`, QCOW2_HDR_L1_SIZE);
  const l1Needed = Math.ceil(virtualSize / bytesPerL1Entry(clusterSize, extendedL2 ? QCOW2_L2E_SIZE_EXTENDED : QCOW2_L2E_SIZE));
  if (l1Size < l1Needed) throw corrupt(`l1_size ${l1Size} is too small for virtual size ${virtualSize} (needs ${l1Needed})`, QCOW2_HDR_L1_SIZE);
  const l1TableOffset = tableOffsetAt(r, QCOW2_HDR_L1_TABLE_OFFSET, 'l1_table_offset', clusterSize, l1Size > 0);
  checkTableEnd(l1TableOffset, l1Size * QCOW2_L1E_SIZE, 'L1 table', QCOW2_HDR_L1_TABLE_OFFSET);

  // Refcount table: present, bounded, cluster-aligned.
  const refcountTableClusters = u32At(r, QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS, 'refcount_table_clusters');
  if (refcountTableClusters === 0) throw corrupt('the image has no refcount table', QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS);
  if (refcountTableClusters > QCOW2_MAX_REFTABLE_BYTES / clusterSize) {
    throw corrupt(`refcount_table_clusters ${refcountTableClusters} exceeds an 8 MiB refcount table`, QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS);
  }
  const refcountTableOffset = tableOffsetAt(r, QCOW2_HDR_REFCOUNT_TABLE_OFFSET, 'refcount_table_offset', clusterSize, true);
  checkTableEnd(refcountTableOffset, refcountTableClusters * clusterSize, 'refcount table', QCOW2_HDR_REFCOUNT_TABLE_OFFSET);

  // Internal snapshot table: bounded count, cluster-aligned.
  const nbSnapshots = u32At(r, QCOW2_HDR_NB_SNAPSHOTS, 'nb_snapshots');
  if (nbSnapshots > QCOW2_MAX_SNAPSHOTS) throw corrupt(`nb_snapshots ${nbSnapshots} exceeds ${QCOW2_MAX_SNAPSHOTS}`, QCOW2_HDR_NB_SNAPSHOTS);
  const snapshotsOffset = tableOffsetAt(r, QCOW2_HDR_SNAPSHOTS_OFFSET, 'snapshots_offset', clusterSize, nbSnapshots > 0);

  let backingFile: Qcow2BackingFile | null = null;
  if (backingOffset !== 0) {
    const size = u32At(r, QCOW2_HDR_BACKING_FILE_SIZE, 'backing_file_size');
    if (size > Math.min(QCOW2_MAX_BACKING_FILE_NAME, clusterSize - backingOffset)) {
      throw corrupt(`backing_file_size ${size} exceeds ${QCOW2_MAX_BACKING_FILE_NAME} bytes or the header cluster`, QCOW2_HDR_BACKING_FILE_SIZE);
    }
    r.pos = backingOffset;
    const name = r.bytes(size, 'backing file name').toString('utf8');
    backingFile = { offset: backingOffset, size, name };
  }
  const backingFormatExt = extensions.find((e) => e.type === QCOW2_EXT_BACKING_FORMAT);

  return {
    version,
    headerLength,
    virtualSize,
    clusterBits,
    clusterSize,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    refcountOrder,
    refcountBits: 2 ** refcountOrder,
    nbSnapshots,
    snapshotsOffset,
    backingFile,
    backingFormat: backingFormatExt === undefined ? null : backingFormatExt.data.toString('utf8'),
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    dirty: (incompatibleFeatures & QCOW2_INCOMPAT_DIRTY) !== 0n,
    corrupt: (incompatibleFeatures & QCOW2_INCOMPAT_CORRUPT) !== 0n,
    extendedL2,
    lazyRefcounts: (compatibleFeatures & QCOW2_COMPAT_LAZY_REFCOUNTS) !== 0n,
    compressionType,
    extensions,
  };
}

/** What in a parsed header hurts island's snapshots or restores, one sentence each. */
export function qcow2Warnings(h: Qcow2Header): string[] {
  const out: string[] = [];
  if (h.lazyRefcounts) {
    out.push('lazy refcounts are on: an image snapshotted while in use carries the dirty bit, and QEMU repairs a restored copy by reading every metadata cluster');
  }
  if (h.dirty) {
    out.push('the dirty bit is set: refcounts may be inconsistent, and QEMU repairs them on open by reading every L1 and L2 table (on a restore, fetching every metadata cluster)');
  }
  if (h.corrupt) {
    out.push('the corrupt bit is set: QEMU found an inconsistency and opens the image read-only until `qemu-img check -r` repairs it');
  }
  if (h.nbSnapshots > 0) {
    out.push(`${h.nbSnapshots} internal snapshot(s): their clusters (and any saved VM state) stay in the image, so every island snapshot uploads and keeps them`);
  }
  if (h.backingFile !== null) {
    const name = JSON.stringify(h.backingFile.name);
    out.push(`backing file ${name}: island snapshots this image alone; the backing file is in no snapshot and must exist wherever the volume is restored`);
  }
  if (h.cryptMethod === 'aes') {
    out.push('the image is encrypted with qcow2 AES-CBC, which QEMU system emulators refuse to open; island stores its ciphertext, so equal content is never deduplicated');
  } else if (h.cryptMethod === 'luks') {
    out.push('the image is LUKS-encrypted: island stores its ciphertext, so equal content is never deduplicated and compression does not pay');
  }
  return out;
}
