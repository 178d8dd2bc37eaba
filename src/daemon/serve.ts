/**
 * `island serve`: mount the FUSE file system and serve the volumes whose local state
 * is in the data directory (<dataDir>/volumes/<name>/), until SIGINT or SIGTERM.
 *
 * Shutdown: refused while a volume file is open (a VM would lose its disk), unless a
 * second signal forces it; then every volume is closed cleanly (state durable, the
 * clean-shutdown mark set) and the mount is removed.
 */
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { volumesDir, type Config } from '../config.js';
import { codeOf } from '../errors.js';
import { FuseMount, type VolumeTable } from '../fuse/adapter.js';
import { Volume } from '../volume/engine.js';

export interface Daemon {
  readonly volumes: Map<string, Volume>;
  readonly mount: FuseMount;
  readonly log: Logger;
  stop(force?: boolean): Promise<void>;
}

export function makeLogger(c: Config): Logger {
  return pino({ level: c.logLevel, base: { host: c.hostId }, redact: ['*.secretAccessKey', '*.sessionToken', '*.credentials'] });
}

export async function startDaemon(c: Config, log: Logger = makeLogger(c)): Promise<Daemon> {
  const dir = volumesDir(c);
  await mkdir(dir, { recursive: true });
  const volumes = new Map<string, Volume>();
  for (const name of (await readdir(dir)).sort()) {
    const vlog = log.child({ volume: name });
    try {
      const vol = await Volume.open(join(dir, name), {
        logger: vlog,
      });
      volumes.set(name, vol);
      vlog.info({ length: vol.length, recovery: vol.recovery }, 'volume opened');
    } catch (err) {
      // One damaged volume must not take the others down.
      vlog.error({ err, code: codeOf(err) }, 'volume cannot be opened; not served');
    }
  }
  const table: VolumeTable = { names: () => [...volumes.keys()], get: (n) => volumes.get(n) };
  const mount = new FuseMount({
    mountpoint: c.mount,
    table,
    spaceDir: c.dataDir,
    onError: (op, path, err) => log.warn({ op, path, code: codeOf(err), err }, 'request failed'),
  });
  await mount.mount();
  log.info({ mount: c.mount, volumes: volumes.size }, 'serving');
  let stopping: Promise<void> | undefined;
  const stop = (force = false): Promise<void> => {
    stopping ??= (async () => {
      const open = [...volumes.keys()].filter((n) => mount.openCount(n) > 0);
      if (open.length && !force) {
        stopping = undefined;
        throw Object.assign(new Error(`volume files are open: ${open.join(', ')}`), { code: 'BUSY' });
      }
      for (const [name, vol] of volumes) {
        await vol.close().catch((err: unknown) => log.error({ volume: name, err }, 'volume close failed'));
      }
      await mount.unmount();
      log.info('stopped');
    })();
    return stopping;
  };
  return { volumes, mount, log, stop };
}

/** Run until a signal: the first SIGINT/SIGTERM stops unless files are open; a second forces. */
export async function serveForever(c: Config): Promise<void> {
  const d = await startDaemon(c);
  let signals = 0;
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string): void => {
      signals++;
      d.stop(signals > 1).then(resolve, (err: unknown) => {
        d.log.warn({ signal: sig, err: (err as Error).message }, 'shutdown refused: volume files are open; send the signal again to force');
      });
    };
    process.on('SIGINT', () => onSignal('SIGINT'));
    process.on('SIGTERM', () => onSignal('SIGTERM'));
  });
}
