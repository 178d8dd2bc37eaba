/**
 * The typed QMP commands and event waits island uses, written once over anything that can
 * execute a command (one connection, `QmpClient`, or a reconnecting `QmpSession`).
 */
import { IslandError, codeOf } from '../errors.js';
import { excerpt, parseStatus, type QmpEvent, type QmpStatus } from './protocol.js';
import { DEFAULT_TIMEOUT_MS, Waiter, checkTimeout } from './transport.js';

export interface CommandOptions {
  /** Bound from the call to the reply (default 5 s). Past it: QMP_TIMEOUT. */
  timeoutMs?: number;
  /** Stop waiting: ABORTED. QEMU may still run a command already sent. */
  signal?: AbortSignal;
}

export interface QmpExecutor {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: CommandOptions): Promise<T>;
}

/** Pause the VM (drains I/O, writes QEMU's cached metadata). A second stop is a no-op. */
export async function stopVm(q: QmpExecutor, opts?: CommandOptions): Promise<void> {
  await q.execute('stop', undefined, opts);
}

/** Resume the VM. */
export async function contVm(q: QmpExecutor, opts?: CommandOptions): Promise<void> {
  await q.execute('cont', undefined, opts);
}

/** The run state; `running` is false when paused. */
export async function queryStatus(q: QmpExecutor, opts?: CommandOptions): Promise<QmpStatus> {
  const value = await q.execute('query-status', undefined, opts);
  const status = parseStatus(value);
  if (!status) {
    throw new IslandError('QMP_ERROR', 'query-status: malformed reply', { details: { command: 'query-status', reason: 'malformed', reply: excerpt(JSON.stringify(value) ?? String(value)) } });
  }
  return status;
}

/**
 * Ask QEMU to exit. QEMU may close the connection before its reply arrives; that counts as
 * success, since the command was delivered and the peer went away as asked.
 */
export async function quitVm(q: QmpExecutor, opts?: CommandOptions): Promise<void> {
  try {
    await q.execute('quit', undefined, opts);
  } catch (err) {
    const closed = codeOf(err) === 'QMP_ERROR' && (err as IslandError).details?.['reason'] === 'closed' && (err as IslandError).details?.['sent'] === true;
    if (!closed) throw err;
  }
}

export interface EventWaitOptions extends CommandOptions {
  /** Only an event this accepts ends the wait. */
  filter?: (ev: QmpEvent) => boolean;
}

/** Listen for events until `unsubscribe`; `onEnd` is called if the source goes away first. */
export type EventSubscribe = (onEvent: (ev: QmpEvent) => void, onEnd: (err: IslandError) => void) => () => void;

/**
 * Wait for the next event called `name`. Arm it BEFORE sending the command that causes it:
 * QEMU may send the event before the command's reply.
 */
export function waitForEvent(subscribe: EventSubscribe, name: string, opts: EventWaitOptions = {}): Promise<QmpEvent> {
  const ms = checkTimeout('timeoutMs', opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  let unsubscribe: (() => void) | undefined;
  const w = new Waiter<QmpEvent>({
    ms,
    signal: opts.signal,
    what: `wait for ${name}`,
    timeoutError: () => new IslandError('QMP_TIMEOUT', `no ${name} event within ${ms} ms`, { details: { event: name, timeoutMs: ms } }),
    onEnd: () => unsubscribe?.(),
  });
  if (w.settled) return w.promise;
  unsubscribe = subscribe(
    (ev) => {
      if (ev.event !== name) return;
      if (opts.filter && !opts.filter(ev)) return;
      w.resolve(ev);
    },
    (err) => w.reject(new IslandError('QMP_ERROR', `wait for ${name}: ${err.message}`, { cause: err, details: { event: name, reason: 'closed' } })),
  );
  return w.promise;
}
