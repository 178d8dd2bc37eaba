/**
 * What native/volume/addon.c exports to TypeScript (its top comment has the semantics), typed,
 * and the constants shared with the C side: file and operation numbers of the operation log,
 * fallocate modes, event kinds. Only native-volume.ts uses it.
 */
import { constants as osConstants } from 'node:os';
import { IslandError } from '../errors.js';
import { nativeAddonObject } from './native.js';

/** File numbers of the addon (ISLV_FILE_* in native/volume/oplog.h). */
export const NATIVE_FILES = ['image', 'dirty.0', 'dirty.1', 'intent', 'present', 'sidelog'] as const;
/** Operation kinds of the addon's log (ISLV_OP_*). */
export const NATIVE_OPS = ['', 'page', 'sync', 'write', 'punch', 'truncate'] as const;

export interface NativeOp {
  file: (typeof NATIVE_FILES)[number] | 'state';
  op: (typeof NATIVE_OPS)[number] | 'record';
  a: number;
  b: number;
  /** With opLogData: the bytes written (a page write, an image write, the state record). */
  data?: Buffer | null;
}

/** Falloc modes (island_io.h). */
export const FALLOC_KEEP_SIZE = 0x01;
export const FALLOC_PUNCH_HOLE = 0x02;
export const FALLOC_ZERO_RANGE = 0x10;

export type Handle = object;
export interface RecordInfo {
  epoch: number;
  completedEpoch: number;
  recordableIntentEpoch: number;
  imageLength: number;
  baseLength: number;
  syncedPages: [number, number, number, number];
}
/** A bitmap as its allocated pages: indices, and BITMAP_PAYLOAD_BYTES of payload each. */
export interface BitmapPages {
  pages: Float64Array;
  data: Buffer;
}

export interface VolumeAddon {
  volumeOpen(cfg: object, onMiss: (c0: number, c1: number, reading: boolean) => void, onEvent: (kind: number, a: number, msg: string) => void): Promise<Handle>;
  volumeLoadGens(h: Handle, file: number, page: number, g0: number, g1: number): void;
  volumeLoadSynced(h: Handle, file: number, pages: number): void;
  volumeLoadBits(h: Handle, which: number, page: number, payload: Uint8Array, unsaved: boolean): void;
  volumeRead(h: Handle, buf: Uint8Array, off: number): Promise<number>;
  volumeWrite(h: Handle, buf: Uint8Array, off: number): Promise<number>;
  volumeFsync(h: Handle): Promise<void>;
  volumeFallocate(h: Handle, mode: number, off: number, len: number): Promise<void>;
  volumeTruncate(h: Handle, size: number): Promise<void>;
  volumeSize(h: Handle): number;
  volumeSeal(h: Handle): Promise<{ epoch: number; length: number; clusters: number }>;
  volumeSealedPages(h: Handle, epoch: number): BitmapPages;
  volumeReadSealed(h: Handle, epoch: number, c: number, buf: Uint8Array): Promise<number>;
  volumeMarkUploaded(h: Handle, epoch: number, c: number): number;
  volumeComplete(h: Handle, epoch: number): Promise<void>;
  volumeAbandon(h: Handle, epoch: number): Promise<void>;
  volumePersist(h: Handle): Promise<void>;
  volumeSyncPresent(h: Handle): Promise<void>;
  volumeNewIntentEpoch(h: Handle): Promise<number>;
  volumeIntentRecorded(h: Handle, epoch: number): void;
  volumeMarkAllDirty(h: Handle): Promise<void>;
  volumeInstall(h: Handle, c: number, buf: Uint8Array): Promise<void>;
  volumeFetchFailed(h: Handle, c0: number, c1: number, errno: number): void;
  volumeIsPresent(h: Handle, c: number): boolean;
  volumeIsDirty(h: Handle, c: number): boolean;
  volumeDirtyPages(h: Handle): BitmapPages;
  volumeRecordInfo(h: Handle): RecordInfo;
  volumeStats(h: Handle): Record<string, number>;
  volumeTakeOps(h: Handle): { ops: Float64Array; data: Array<Buffer | null> };
  volumeClose(h: Handle): Promise<boolean>;
  volumeRelease(h: Handle): void;
}

export const EVENT_SEAL_ABANDONED = 1;
export const EVENT_STATE = 2;
export const E = osConstants.errno;

export function volumeAddon(): VolumeAddon {
  const a = nativeAddonObject() as Partial<VolumeAddon>;
  if (typeof a.volumeOpen !== 'function') throw new IslandError('NATIVE_MISSING', 'island native addon has no volume write path: run scripts/build-native.sh');
  return a as VolumeAddon;
}

/** True when the addon with the native write path is built. */
export function nativeWritePathAvailable(): boolean {
  try {
    volumeAddon();
    return true;
  } catch {
    return false;
  }
}

export function errnoOf(err: unknown): number | undefined {
  const n = (err as { errno?: unknown } | null)?.errno;
  return typeof n === 'number' ? n : undefined;
}
