/**
 * Which FUSE server serves the mount (config `fuse`, ISLAND_FUSE): island's native server
 * (native-server.ts) by default, the fuse-native adapter (adapter.ts) when asked for, or when
 * the native server cannot start and the choice is "auto" (no addon built, no /dev/fuse, a
 * mount(2) refused); the log says which serves and why. "native" insists: its failure fails
 * the start.
 */
import type { FuseChoice } from '../config.js';
import { codeOf } from '../errors.js';
import { FuseMount, type FuseMountOptions } from './adapter.js';
import { NativeFuseMount, type FuseTransport } from './native-server.js';

/** The few log calls this needs (pino's Logger has them). */
export interface TransportLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** Mount with the chosen server; resolves to the one that serves. */
export async function mountFuse(choice: FuseChoice, threads: number, opts: FuseMountOptions, log: TransportLog): Promise<FuseTransport> {
  if (choice !== 'fuse-native') {
    try {
      const m = new NativeFuseMount({
        ...opts,
        threads,
        onLog: (level, msg) => log[level]({ transport: 'native' }, `native FUSE server: ${msg}`),
      });
      await m.mount();
      log.info({ transport: 'native', threads, mount: opts.mountpoint }, 'FUSE transport: native server (native/fuse)');
      return m;
    } catch (err) {
      if (choice === 'native') throw err;
      log.warn({ err, code: codeOf(err), transport: 'fuse-native' }, `the native FUSE server cannot start (${(err as Error).message}); serving with fuse-native instead`);
    }
  }
  const m = new FuseMount(opts);
  await m.mount();
  log.info({ transport: 'fuse-native', mount: opts.mountpoint }, `FUSE transport: fuse-native (libfuse2)${choice === 'fuse-native' ? ', as configured' : ''}`);
  return m;
}
