/**
 * The qcow2 header layout: byte offsets, feature bits, limits and the types island reads it
 * into (qcow2.ts creates headers, qcow2-parse.ts reads them).
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

/** Bytes of guest data one L1 entry covers: a cluster-sized L2 table of cluster pointers. */
export function qcow2BytesPerL1Entry(clusterSize: number, l2EntrySize: number): number {
  return clusterSize * (clusterSize / l2EntrySize);
}

/** The largest virtual size island creates with this cluster size (the L1 limit or 2 PiB). */
export function qcow2MaxVirtualSize(clusterSize: number): number {
  return Math.min(QCOW2_MAX_VIRTUAL_SIZE, QCOW2_MAX_L1_SIZE * qcow2BytesPerL1Entry(clusterSize, QCOW2_L2E_SIZE));
}
