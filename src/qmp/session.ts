/**
 * A QMP session bound to a socket path rather than to one connection.
 *
 * It connects on demand: the first command connects (QEMU may start after the volume is
 * attached), waiting up to `connectTimeoutMs` for something to listen. When the connection
 * drops (QEMU quit, crashed or restarted), nothing happens until the next command, which
 * connects again. A command is never sent twice: one in flight when the connection drops
 * fails with QMP_ERROR (details.reason "closed"), since QEMU may or may not have run it.
 * Events that happen while no connection is open are not seen.
 */
import { EventEmitter } from 'node:events';
import { IslandError } from '../errors.js';
import { QmpClient, type QmpClientOptions } from './client.js';
import { type CommandOptions, type EventWaitOptions, contVm, queryStatus, quitVm, stopVm, waitForEvent } from './commands.js';
import type { QmpEvent, QmpGreeting, QmpShutdown, QmpStatus } from './protocol.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, Waiter, checkTimeout, emitEach, silentLogger, type QmpLogger } from './transport.js';

export type QmpSessionOptions = Omit<QmpClientOptions, 'signal'>;

export interface QmpSessionEvents {
  event: [QmpEvent];
  shutdown: [QmpShutdown, QmpEvent];
  /** A connection was made (first one or a reconnect). */
  connect: [QmpGreeting | undefined];
  /** The current connection is gone; the next command reconnects. */
  disconnect: [IslandError];
}

export class QmpSession extends EventEmitter<QmpSessionEvents> {
  private client: QmpClient | undefined;
  private connecting: Promise<QmpClient> | undefined;
  private readonly stopConnecting = new AbortController();
  private isClosed = false;
  private readonly timeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly log: QmpLogger;

  constructor(readonly path: string, private readonly opts: QmpSessionOptions = {}) {
    super();
    this.log = opts.logger ?? silentLogger;
    this.timeoutMs = checkTimeout('timeoutMs', opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.connectTimeoutMs = checkTimeout('connectTimeoutMs', opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
  }

  /** True while a connection is open. */
  get connected(): boolean {
    return this.client !== undefined && !this.client.closed;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * Run a command, connecting first if needed. `timeoutMs` bounds the whole call, connect
   * included. A connect that fails first reports its own error (QMP_ERROR "unreachable" when
   * nothing listens within `connectTimeoutMs`).
   */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: CommandOptions = {}): Promise<T> {
    const ms = checkTimeout('timeoutMs', opts.timeoutMs ?? this.timeoutMs);
    const deadline = Date.now() + ms;
    const client = await this.ensure(command, deadline, opts.signal);
    const rest: CommandOptions = { timeoutMs: Math.max(1, deadline - Date.now()) };
    if (opts.signal) rest.signal = opts.signal;
    return client.execute<T>(command, args, rest);
  }

  /** Connect now if not connected (optional: commands connect on demand). */
  async connect(opts: CommandOptions = {}): Promise<void> {
    const ms = checkTimeout('timeoutMs', opts.timeoutMs ?? this.connectTimeoutMs);
    await this.ensure('connect', Date.now() + ms, opts.signal);
  }

  stop(opts?: CommandOptions): Promise<void> {
    return stopVm(this, opts);
  }

  cont(opts?: CommandOptions): Promise<void> {
    return contVm(this, opts);
  }

  queryStatus(opts?: CommandOptions): Promise<QmpStatus> {
    return queryStatus(this, opts);
  }

  quit(opts?: CommandOptions): Promise<void> {
    return quitVm(this, opts);
  }

  /** Wait for the next event `name`; a disconnect ends the wait with QMP_ERROR. */
  waitForEvent(name: string, opts?: EventWaitOptions): Promise<QmpEvent> {
    return waitForEvent((onEvent, onEnd) => {
      if (this.isClosed) {
        queueMicrotask(() => onEnd(this.closedError(`wait for ${name}`)));
        return () => {};
      }
      this.on('event', onEvent);
      this.on('disconnect', onEnd);
      return () => {
        this.off('event', onEvent);
        this.off('disconnect', onEnd);
      };
    }, name, opts);
  }

  /** Close the session and its connection; later commands fail. Safe to call twice. */
  async close(): Promise<void> {
    if (!this.isClosed) {
      this.isClosed = true;
      this.stopConnecting.abort();
    }
    const pending = this.connecting;
    if (pending) await pending.catch(() => undefined);
    await this.client?.close();
  }

  private closedError(command: string): IslandError {
    return new IslandError('QMP_ERROR', `${command}: the QMP session is closed`, { details: { command, path: this.path, reason: 'closed', sent: false } });
  }

  /** The open connection, or a new one; concurrent callers share one connect attempt. */
  private async ensure(command: string, deadline: number, signal: AbortSignal | undefined): Promise<QmpClient> {
    if (this.isClosed) throw this.closedError(command);
    if (this.client && !this.client.closed) return this.client;
    // The attempt belongs to the session, not to one caller: a caller that gives up does
    // not cancel it for the others. It is bounded by the connect timeout and by the
    // deadline of the caller that started it.
    this.connecting ??= this.open(Math.min(deadline, Date.now() + this.connectTimeoutMs));
    const attempt = this.connecting;
    const w = new Waiter<QmpClient>({
      ms: Math.max(1, deadline - Date.now()),
      signal,
      what: command,
      timeoutError: () => new IslandError('QMP_TIMEOUT', `${command}: not connected to ${this.path} in time`, { details: { command, path: this.path, reason: 'connect' } }),
    });
    attempt.then((c) => w.resolve(c), (err: unknown) => w.reject(err));
    return w.promise;
  }

  private async open(deadline: number): Promise<QmpClient> {
    const opts: QmpClientOptions = {
      ...this.opts,
      connectTimeoutMs: Math.max(1, deadline - Date.now()),
      retryConnect: this.opts.retryConnect ?? true,
      signal: this.stopConnecting.signal,
    };
    try {
      const client = await QmpClient.connect(this.path, opts);
      if (this.isClosed) {
        await client.close();
        throw this.closedError('connect');
      }
      this.adopt(client);
      return client;
    } catch (err) {
      throw this.isClosed ? this.closedError('connect') : err;
    } finally {
      this.connecting = undefined;
    }
  }

  private adopt(client: QmpClient): void {
    this.client = client;
    client.on('event', (ev) => this.emitSafely('event', ev));
    client.on('shutdown', (info, ev) => this.emitSafely('shutdown', info, ev));
    client.once('close', (reason) => {
      if (this.client === client) this.client = undefined;
      this.log.debug({ path: this.path, reason: reason.message }, 'qmp: disconnected');
      this.emitSafely('disconnect', reason);
    });
    this.log.debug({ path: this.path }, 'qmp: connected');
    this.emitSafely('connect', client.greeting);
  }

  private emitSafely<K extends keyof QmpSessionEvents>(name: K, ...args: QmpSessionEvents[K]): void {
    emitEach(this, name, args, (err) => this.log.warn({ path: this.path, event: name, err: String(err) }, 'qmp: an event listener threw'));
  }
}
