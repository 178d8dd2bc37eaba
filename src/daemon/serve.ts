/**
 * `island serve`: the composition root. Builds the store (the embedded fs store under
 * the data directory), the repository, the service, the FUSE mount, the control API and
 * the optional metrics endpoint; reattaches the volumes attached before a stop or crash;
 * runs until SIGINT or SIGTERM.
 *
 * Shutdown: refused while a volume file is open (a VM would lose its disk), unless a
 * second signal forces it; then every volume is closed cleanly (state durable, the
 * clean-shutdown mark set), the socket removed and the mount unmounted.
 */
import type { Server } from 'node:http';
import { rm } from 'node:fs/promises';
import pino, { type Logger } from 'pino';
import { LOG_REDACT, type Config } from '../config.js';
import { codeOf, isTransient } from '../errors.js';
import type { FuseTransport } from '../fuse/native-server.js';
import { mountFuse } from '../fuse/transport.js';
import { Repository } from '../repo/repository.js';
import { loadConfiguredKey, openEncryption, openRegionStore } from '../crypto/open.js';
import { openStore } from '../store/open.js';
import { ChaosStore } from '../store/chaos.js';
import type { ObjectStore } from '../store/types.js';
import { startApi } from './api.js';
import { Metrics } from './metrics.js';
import { Service } from './service.js';
import { LocalDirectories } from '../volume/directories.js';
import { armCrashPoint } from '../util/crash.js';
import { sleep } from '../util/sleep.js';

export interface Daemon {
  readonly service: Service;
  readonly mount: FuseTransport;
  readonly log: Logger;
  stop(force?: boolean): Promise<void>;
}

export function makeLogger(c: Config): Logger {
  return pino({ level: c.logLevel, base: { host: c.hostId }, redact: LOG_REDACT });
}

/** How long a stop waits for RELEASE requests in flight before it counts a file as open. */
const RELEASE_GRACE_MS = 2000;
const RELEASE_POLL_MS = 20;

export async function startDaemon(c: Config, log: Logger = makeLogger(c)): Promise<Daemon> {
  // Start fully or not at all: each step that succeeded is undone, last first, when a later
  // one fails, so a failed start leaves no mount, socket, port or lock behind.
  armCrashPoint(c.crashAt);
  const undo: (() => Promise<unknown>)[] = [];
  const rollback = async (): Promise<void> => {
    for (const f of undo.reverse()) await f().catch((err: unknown) => log.warn({ err }, 'cleanup after a failed start'));
  };
  try {
    const lock = await new LocalDirectories(c.dataDir).lock();
    undo.push(() => lock.release());
    const metrics = new Metrics();
    // The port is taken before anything is served: a port in use stops the start here.
    const metricsServer = c.metricsPort === undefined ? undefined : await metrics.listen(c.metricsPort, c.metricsAddress);
    if (metricsServer) undo.push(() => new Promise((r) => metricsServer.close(r)));
    const chaos = c.storeFaultRate > 0 ? [(s: ObjectStore) => new ChaosStore(s, c.storeFaultRate, process.pid)] : [];
    const { store } = openStore(c.store, { onObserve: (o) => metrics.store(o), wrap: chaos });
    undo.push(() => store.close());
    // Encryption is decided before anything is written: no key, or another repository's key,
    // for an encrypted store (or a key for a store holding unencrypted data) stops the start.
    const enc = await openEncryption(store, c).catch(async (err: unknown) => {
      if (!isTransient(err)) throw err;
      // The store does not answer: the local volumes are served now (reads and writes need
      // no store); whether this key may use the store is decided at its first answer, and a
      // refusal then comes before anything is written (openRegionStore's gate).
      log.warn({ err, code: codeOf(err) }, 'the store cannot be reached to check its encryption; checked at its first use');
      const keyFile = await loadConfiguredKey(c);
      return { ...openRegionStore(store, keyFile), keyFile };
    });
    const repo = new Repository(enc.store, { host: c.hostId, region: c.region, frames: enc.frames });
    const service = new Service(c, repo, log, (name, backend) => {
      const r = openRegionStore(openStore(backend, { onObserve: (o) => metrics.store(o) }).store, enc.keyFile);
      return new Repository(r.store, { host: c.hostId, region: name, frames: r.frames });
    });
    undo.push(() => service.closeAll());
    // Registered before any attach contends (claim rounds need every contender listed);
    // a store that is down now is retried by the first attach.
    await repo.registerHost().catch((err: unknown) => log.warn({ err, code: codeOf(err) }, 'host not registered in the store yet; the first attach registers it'));
    await service.restore();
    const mount = await mountFuse(c.fuse, c.fuseThreads, {
      mountpoint: c.mount,
      table: { names: () => service.fileNames(), get: (n) => service.fileVolume(n), readOnly: (n) => service.isReadOnly(n) },
      spaceDir: c.dataDir,
      files: { uid: c.fileOwner, gid: c.fileGroup, mode: c.fileMode },
      onOp: (op, ms, bytes, error) => metrics.fuse(op, ms, bytes, error),
      onError: (op, path, err) => log.warn({ op, path, code: codeOf(err), err }, 'request failed'),
    }, log);
    undo.push(() => mount.unmount());
    service.openHandles = (n) => mount.openCount(n);
    service.onFilesChanged = () => mount.refresh();
    service.fuseStatus = () => mount.describe();
    // The native server answers requests on the native write path in C alone: metrics
    // read their counts from the volumes (metrics.ts).
    if (mount.transport === 'native') metrics.countNative(() => service.nativeVolumes());
    const api = await startApi(service, c.socket, log);
    undo.push(async () => {
      await new Promise((r) => api.close(r));
      await rm(c.socket, { force: true });
    });
    log.info({ mount: c.mount, fuse: mount.transport, writePath: c.writePath, socket: c.socket, store: store.description, attached: service.attached.size, metricsPort: c.metricsPort, metricsAddress: c.metricsAddress }, 'serving');
    let stopping: Promise<void> | undefined;
    const stop = (force = false): Promise<void> => {
      stopping ??= (async () => {
        const openNow = (): string[] => [...service.attached.keys()].filter((n) => mount.openCount(n) > 0);
        // close(2) returns before the kernel sends FUSE RELEASE: a file its last user just
        // closed may still count as open here for a moment. Wait that out before refusing.
        let open = openNow();
        for (const until = Date.now() + RELEASE_GRACE_MS; open.length && !force && Date.now() < until; open = openNow()) await sleep(RELEASE_POLL_MS);
        if (open.length && !force) {
          stopping = undefined;
          throw Object.assign(new Error(`volume files are open: ${open.join(', ')}`), { code: 'BUSY' });
        }
        await new Promise((r) => api.close(r));
        metricsServer?.close();
        await rm(c.socket, { force: true });
        await service.closeAll();
        await mount.unmount();
        await store.close();
        await lock.release();
        log.info('stopped');
      })();
      return stopping;
    };
    return { service, mount, log, stop };
  } catch (err) {
    await rollback();
    throw err;
  }
}

/** Run until a signal: the first SIGINT/SIGTERM stops unless files are open; a second forces. */
export async function serveForever(c: Config): Promise<void> {
  const d = await startDaemon(c);
  // A dead FUSE daemon takes every VM disk it serves with it: a bug in one request is
  // logged loudly and the daemon keeps serving the others.
  process.on('uncaughtException', (err) => d.log.error({ err }, 'uncaught exception (daemon keeps serving)'));
  process.on('unhandledRejection', (err) => d.log.error({ err }, 'unhandled rejection (daemon keeps serving)'));
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
