/**
 * Which write path serves a volume: 'native' runs reads, writes, fsync, discard and truncate in
 * C (native/volume/, through NativeVolume); 'typescript' runs them in engine.ts, which stays as
 * the oracle the differential test compares the C path with. Both open the same local state
 * (setup.ts recovers it either way) and answer the same calls, so a volume closed by one can be
 * opened by the other.
 */
import { IslandError } from '../errors.js';
import { Volume } from './engine.js';
import { NativeVolume, nativeWritePathAvailable } from './native-volume.js';
import type { VolumeCreateOptions, VolumeOptions } from './setup.js';

export type WritePath = 'native' | 'typescript';
export type AnyVolume = Volume | NativeVolume;

function check(path: WritePath): void {
  if (path !== 'native' && path !== 'typescript') throw new IslandError('INVALID_ARGUMENT', `write path must be native or typescript: ${String(path)}`);
  if (path === 'native' && !nativeWritePathAvailable()) throw new IslandError('NATIVE_MISSING', 'the native write path needs the native addon: run scripts/build-native.sh');
}

/** Open (and recover) a volume's local state on the chosen write path. */
export async function openVolume(dir: string, opts: VolumeOptions & { writePath: WritePath }): Promise<AnyVolume> {
  const { writePath, ...rest } = opts;
  check(writePath);
  return writePath === 'native' ? NativeVolume.open(dir, rest) : Volume.open(dir, rest);
}

/** Create a volume's local state and open it on the chosen write path. */
export async function createVolume(dir: string, opts: VolumeCreateOptions & { writePath: WritePath }): Promise<AnyVolume> {
  const { writePath, ...rest } = opts;
  check(writePath);
  return writePath === 'native' ? NativeVolume.create(dir, rest) : Volume.create(dir, rest);
}
