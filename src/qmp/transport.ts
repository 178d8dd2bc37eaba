/**
 * What the QMP and guest-agent clients share: the logger they accept, a waiter that settles
 * once (reply, timeout or abort, whichever comes first) and a bounded unix-socket connect.
 */
import type { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { IslandError } from '../errors.js';
import { sleep } from '../util/sleep.js';

/** The subset of a (pino) child logger this adapter uses. */
export interface QmpLogger {
  warn(obj: Record<string, unknown>, msg: string): void;
  debug(obj: Record<string, unknown>, msg: string): void;
}

export const silentLogger: QmpLogger = { warn() {}, debug() {} };

/** Default bound for one command, from the call to its reply. stop/cont take ~3 ms. */
export const DEFAULT_TIMEOUT_MS = 5_000;
/** Default bound for connect + greeting + qmp_capabilities (and for waiting for QEMU to listen). */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
/** Retry delays while nothing listens on the socket yet: short first, QEMU starts in ~50 ms. */
const CONNECT_RETRY_FIRST_MS = 20;
const CONNECT_RETRY_MAX_MS = 250;

export function checkTimeout(name: string, ms: number): number {
  if (!Number.isFinite(ms) || ms <= 0) throw new IslandError('INVALID_ARGUMENT', `${name} must be a positive number of milliseconds, got ${ms}`);
  return ms;
}

export function abortError(what: string, signal: AbortSignal): IslandError {
  return new IslandError('ABORTED', `${what}: aborted`, { cause: signal.reason });
}

export type WaiterEnd = 'resolved' | 'rejected' | 'timeout' | 'aborted';

/**
 * A promise that settles exactly once: by `resolve`/`reject`, by its timer, or by the abort
 * signal. `onEnd` runs once after it settles, to drop the owner's bookkeeping.
 */
export class Waiter<T> {
  readonly promise: Promise<T>;
  private settle!: { resolve: (v: T) => void; reject: (e: unknown) => void };
  private timer: NodeJS.Timeout | undefined;
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort: (() => void) | undefined;
  private readonly onEnd: ((end: WaiterEnd) => void) | undefined;
  private done = false;

  constructor(opts: {
    ms: number;
    signal?: AbortSignal | undefined;
    timeoutError: () => IslandError;
    what: string;
    onEnd?: (end: WaiterEnd) => void;
  }) {
    this.promise = new Promise<T>((resolve, reject) => (this.settle = { resolve, reject }));
    this.onEnd = opts.onEnd;
    this.signal = opts.signal;
    if (opts.signal?.aborted) {
      this.finish('aborted', abortError(opts.what, opts.signal));
      return;
    }
    this.timer = setTimeout(() => this.finish('timeout', opts.timeoutError()), opts.ms);
    if (opts.signal) {
      const signal = opts.signal;
      this.onAbort = () => this.finish('aborted', abortError(opts.what, signal));
      signal.addEventListener('abort', this.onAbort, { once: true });
    }
  }

  get settled(): boolean {
    return this.done;
  }

  resolve(v: T): boolean {
    return this.finish('resolved', undefined, v);
  }

  reject(err: unknown): boolean {
    return this.finish('rejected', err);
  }

  private finish(end: WaiterEnd, err: unknown, value?: T): boolean {
    if (this.done) return false;
    this.done = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.onAbort) this.signal?.removeEventListener('abort', this.onAbort);
    if (end === 'resolved') this.settle.resolve(value as T);
    else this.settle.reject(err);
    this.onEnd?.(end);
    return true;
  }
}

/**
 * Call every listener of `name`, each on its own: one that throws is reported to `onThrow`
 * and does not keep the others from running (EventEmitter.emit stops at the first throw).
 */
export function emitEach(emitter: object, name: string, args: readonly unknown[], onThrow: (err: unknown) => void): void {
  const plain = emitter as unknown as EventEmitter;
  // rawListeners: calling a once() wrapper also removes it.
  for (const listener of plain.rawListeners(name)) {
    try {
      (listener as (...a: unknown[]) => unknown).apply(emitter, [...args]);
    } catch (err) {
      onThrow(err);
    }
  }
}

/** Errors that mean "nothing listens there (yet)": worth another try while QEMU starts. */
const NOT_LISTENING = new Set(['ENOENT', 'ECONNREFUSED']);

export interface ConnectOptions {
  /** Epoch ms after which the attempt gives up. */
  deadline: number;
  signal?: AbortSignal | undefined;
  /** Keep trying while the socket is missing or refuses, until the deadline. */
  retry: boolean;
}

function unreachable(path: string, errno: string, cause: unknown): IslandError {
  return new IslandError('QMP_ERROR', `nothing listens on ${path} (${errno})`, { cause, details: { path, reason: 'unreachable', errno } });
}

/** One connect attempt, bounded by the deadline and the signal. */
function attempt(path: string, opts: ConnectOptions): Promise<Socket> {
  const sock = createConnection(path);
  // The handlers are attached before the waiter exists: it may settle in its constructor.
  let w: Waiter<Socket> | undefined;
  const onConnect = () => w?.resolve(sock);
  const onError = (err: NodeJS.ErrnoException) => w?.reject(err);
  sock.once('connect', onConnect);
  sock.once('error', onError);
  w = new Waiter<Socket>({
    ms: Math.max(1, opts.deadline - Date.now()),
    signal: opts.signal,
    what: `connect ${path}`,
    timeoutError: () => new IslandError('QMP_TIMEOUT', `connect ${path}: no answer in time`, { details: { path, reason: 'connect' } }),
    onEnd: (end) => {
      sock.off('connect', onConnect);
      sock.off('error', onError);
      if (end !== 'resolved') {
        // A late error from a socket given up on must not become an uncaught 'error' event.
        sock.on('error', () => {});
        sock.destroy();
      }
    },
  });
  return w.promise;
}

function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return sleep(ms, signal, { resolveOnAbort: true });
}

/**
 * Connect to a unix socket. With `retry`, a missing or refusing socket is tried again with a
 * short backoff until the deadline (QEMU may still be starting); the last refusal is then
 * reported as QMP_ERROR (details.reason "unreachable"), a connect that hangs as QMP_TIMEOUT.
 */
export async function connectUnix(path: string, opts: ConnectOptions): Promise<Socket> {
  let wait = CONNECT_RETRY_FIRST_MS;
  for (;;) {
    if (opts.signal?.aborted) throw abortError(`connect ${path}`, opts.signal);
    try {
      return await attempt(path, opts);
    } catch (err) {
      if (err instanceof IslandError) throw err;
      const errno = String((err as NodeJS.ErrnoException).code ?? 'EIO');
      const left = opts.deadline - Date.now();
      if (!opts.retry || !NOT_LISTENING.has(errno) || left <= 0) throw unreachable(path, errno, err);
      await delay(Math.min(wait, left), opts.signal);
      if (Date.now() >= opts.deadline) throw unreachable(path, errno, err);
      wait = Math.min(wait * 2, CONNECT_RETRY_MAX_MS);
    }
  }
}
