/**
 * A seal inside a quiet domain, through libvirt: the order that works is freeze, suspend,
 * seal, resume, thaw (libvirt refuses domfsfreeze on a paused domain).
 *
 *   1. domfsfreeze   the guest agent syncs and freezes the guest's file systems
 *   2. suspend       QEMU stops the vCPUs, drains in-flight I/O and flushes its qcow2 caches
 *   3. seal          island's O(1) seal of every volume the domain uses
 *   4. resume        sent on every path once suspend was sent (retried)
 *   5. domfsthaw     sent on every path once freeze was tried (it may have frozen some)
 *
 * The level a snapshot records is the one it really got:
 *
 *   frozen and suspended                    guest-frozen
 *   suspended (no agent answered, or flush) qemu-flushed
 *   domain paused already (by someone else) qemu-flushed (QEMU flushed when it stopped)
 *   domain not running                      crash
 *
 * `strict` (a level was asked for explicitly): anything below the level asked for fails the
 * snapshot instead of being recorded. libvirt not answering always fails it.
 */
import { IslandError, codeOf } from '../errors.js';
import type { Virsh } from './virsh.js';

export type Quiescence = 'crash' | 'qemu-flushed' | 'guest-frozen';

export interface QuiesceLogger {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

export interface Quiesced<T> {
  result: T;
  consistency: Quiescence;
  /** From suspend to resume, in whole milliseconds (null: the domain was not suspended by island). */
  pauseMs: number | null;
}

/** How many times resume and thaw are tried before the domain is left to the operator. */
const ATTEMPTS = 3;

export async function quiesced<T>(virsh: Virsh, domain: string, want: 'flush' | 'freeze', strict: boolean, log: QuiesceLogger, seal: () => Promise<T>): Promise<Quiesced<T>> {
  const state = await virsh.state(domain);
  if (state === 'paused') {
    if (strict && want === 'freeze') throw notRunning(domain, state, want);
    return { result: await seal(), consistency: 'qemu-flushed', pauseMs: null };
  }
  if (state !== 'running') {
    if (strict) throw notRunning(domain, state, want);
    log.warn({ domain, state }, 'the domain is not running: the snapshot is crash-consistent');
    return { result: await seal(), consistency: 'crash', pauseMs: null };
  }
  let frozen = false;
  let triedFreeze = false;
  try {
    if (want === 'freeze') {
      triedFreeze = true;
      try {
        const n = await virsh.fsFreeze(domain);
        frozen = true;
        log.info({ domain, filesystems: n }, 'guest filesystems frozen');
      } catch (err) {
        if (strict || codeOf(err) !== 'LIBVIRT_ERROR') throw err;
        log.warn({ domain, err, code: codeOf(err) }, 'the guest agent did not freeze the file systems: the snapshot is flushed only');
      }
    }
    await virsh.suspend(domain);
    const t0 = performance.now();
    let result: T;
    try {
      result = await seal();
    } finally {
      await retry(() => virsh.resume(domain), (err, attempt) => log.error({ domain, err, attempt }, 'resume failed: the domain may still be paused'));
    }
    return { result, consistency: frozen ? 'guest-frozen' : 'qemu-flushed', pauseMs: Math.ceil(performance.now() - t0) };
  } finally {
    if (triedFreeze) {
      await retry(
        () => virsh.fsThaw(domain),
        (err, attempt) => {
          // Without an agent there was nothing to thaw.
          if (frozen) log.error({ domain, err, attempt }, 'thaw failed: guest filesystems may still be frozen');
        },
        frozen ? ATTEMPTS : 1,
      );
    }
  }
}

function notRunning(domain: string, state: string, want: string): IslandError {
  return new IslandError('LIBVIRT_ERROR', `domain ${domain} is ${state}: a ${want} snapshot needs it running (a crash snapshot does not)`, { details: { domain, state, reason: 'not-running' } });
}

async function retry(fn: () => Promise<unknown>, onError: (err: unknown, attempt: number) => void, attempts = ATTEMPTS): Promise<void> {
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      await fn();
      return;
    } catch (err) {
      onError(err, attempt);
    }
  }
}
