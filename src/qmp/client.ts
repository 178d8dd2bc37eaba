/**
 * One QMP connection to a QEMU process over a unix socket.
 *
 * Handshake: read the greeting (checked to be {"QMP": {...}}), send qmp_capabilities.
 * Commands carry a numeric id; replies are matched by id, never by order, because QEMU may
 * send events (STOP, RESUME, SHUTDOWN...) before the reply of the command that caused them.
 *
 * Everything the peer sends is untrusted. The rules (docs/qmp.md):
 *  - a line longer than `maxLineBytes`, or a first message that is not a greeting, is a
 *    protocol error: the connection is closed and every pending command fails (QMP_ERROR);
 *  - a malformed reply whose id names a pending command fails that command (QMP_ERROR);
 *  - anything else malformed (not JSON, wrong shape, unknown id, no id) is logged and
 *    dropped; after MAX_BAD_MESSAGES of them the connection is closed as a protocol error;
 *  - an error reply becomes QMP_ERROR with details.class and details.desc.
 * No 'error' event is ever emitted, and a throwing listener is logged, not propagated: nothing
 * that arrives on the socket can crash the process.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { IslandError } from '../errors.js';
import { type CommandOptions, type EventWaitOptions, contVm, queryStatus, quitVm, stopVm, waitForEvent } from './commands.js';
import { LineReader } from './lines.js';
import { excerpt, parseLine, replyError, shutdownInfo, type QmpEvent, type QmpGreeting, type QmpMessage, type QmpShutdown, type QmpStatus } from './protocol.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, Waiter, checkTimeout, connectUnix, emitEach, silentLogger, type QmpLogger } from './transport.js';

/** Malformed messages tolerated on one connection before it is dropped: QEMU sends none. */
export const MAX_BAD_MESSAGES = 32;
/** Commands in flight on one connection; island sends a handful at a time. */
export const MAX_PENDING = 256;
/** Ids of timed-out or aborted commands remembered, so their late replies are not "unknown". */
const ABANDONED_IDS_KEPT = 256;

export interface QmpClientOptions {
  /** Bound for connect + greeting + qmp_capabilities (default 5 s). */
  connectTimeoutMs?: number;
  /** Default bound of each command (default 5 s); each call may pass its own. */
  timeoutMs?: number;
  /** Longest accepted line (default 1 MiB). */
  maxLineBytes?: number;
  /** Keep trying while the socket is missing or refuses, until the connect bound. */
  retryConnect?: boolean;
  logger?: QmpLogger;
  /** Aborts the connect. */
  signal?: AbortSignal;
}

export interface QmpClientEvents {
  /** Every well-formed event, in arrival order. */
  event: [QmpEvent];
  /** QEMU is shutting down (quit, guest power-off, signal). Also delivered as 'event'. */
  shutdown: [QmpShutdown, QmpEvent];
  /** The connection is gone; the error says why. Emitted once. */
  close: [IslandError];
}

interface Pending {
  command: string;
  waiter: Waiter<unknown>;
}

type State = 'greeting' | 'ready' | 'closed';

export class QmpClient extends EventEmitter<QmpClientEvents> {
  /** The greeting QEMU sent (version, capabilities). */
  greeting: QmpGreeting | undefined;
  private state: State = 'greeting';
  private readonly reader: LineReader;
  private readonly log: QmpLogger;
  private readonly timeoutMs: number;
  private readonly pending = new Map<number, Pending>();
  private readonly abandoned = new Set<number>();
  private nextId = 1;
  private badMessages = 0;
  private corked = false;
  private greetingWaiter: Waiter<QmpGreeting> | undefined;
  private readonly socketClosed: Promise<void>;
  private socketError: Error | undefined;

  private constructor(readonly path: string, private readonly sock: Socket, checked: { reader: LineReader; timeoutMs: number }, opts: QmpClientOptions) {
    super();
    this.reader = checked.reader;
    this.timeoutMs = checked.timeoutMs;
    this.log = opts.logger ?? silentLogger;
    this.socketClosed = new Promise((resolve) => sock.once('close', () => resolve()));
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => (this.socketError ??= err));
    sock.on('close', () => {
      const why = this.socketError ? `the connection failed: ${this.socketError.message}` : 'QEMU closed the connection';
      this.shutdown(new IslandError('QMP_ERROR', why, { cause: this.socketError, details: { path, reason: 'closed' } }));
    });
  }

  /**
   * Connect, read the greeting and negotiate capabilities, all within `connectTimeoutMs`.
   * Fails with QMP_ERROR (nothing listens: details.reason "unreachable"; not QMP: "protocol"),
   * QMP_TIMEOUT or ABORTED; nothing is left open on failure.
   */
  static async connect(path: string, opts: QmpClientOptions = {}): Promise<QmpClient> {
    // Options are checked before anything is opened.
    const connectMs = checkTimeout('connectTimeoutMs', opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    const checked = {
      reader: new LineReader(opts.maxLineBytes === undefined ? {} : { maxLineBytes: opts.maxLineBytes }),
      timeoutMs: checkTimeout('timeoutMs', opts.timeoutMs ?? DEFAULT_TIMEOUT_MS),
    };
    const deadline = Date.now() + connectMs;
    const sock = await connectUnix(path, { deadline, signal: opts.signal, retry: opts.retryConnect ?? false });
    const client = new QmpClient(path, sock, checked, opts);
    try {
      await client.handshake(deadline, opts.signal);
    } catch (err) {
      client.shutdown(err instanceof IslandError ? err : new IslandError('QMP_ERROR', String(err), { cause: err, details: { path } }));
      await client.socketClosed;
      throw err;
    }
    return client;
  }

  private async handshake(deadline: number, signal: AbortSignal | undefined): Promise<void> {
    const w = new Waiter<QmpGreeting>({
      ms: Math.max(1, deadline - Date.now()),
      signal,
      what: `connect ${this.path}`,
      timeoutError: () => new IslandError('QMP_TIMEOUT', `no QMP greeting on ${this.path} in time`, { details: { path: this.path, reason: 'greeting' } }),
    });
    this.greetingWaiter = w;
    // The greeting may already be here if data arrived with the connect.
    if (this.greeting) w.resolve(this.greeting);
    if (this.state === 'closed') w.reject(this.closeError('connect'));
    await w.promise;
    this.greetingWaiter = undefined;
    const opts: CommandOptions = { timeoutMs: Math.max(1, deadline - Date.now()) };
    if (signal) opts.signal = signal;
    await this.execute('qmp_capabilities', undefined, opts);
  }

  /** True once the connection is gone (closed by either side). */
  get closed(): boolean {
    return this.state === 'closed';
  }

  /** Commands sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Run a command. Resolves with its `return` value; rejects with QMP_ERROR (error reply,
   * malformed reply, connection closed: details.reason), QMP_TIMEOUT or ABORTED.
   */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: CommandOptions = {}): Promise<T> {
    if (typeof command !== 'string' || command.length === 0) throw new IslandError('INVALID_ARGUMENT', 'a QMP command needs a name');
    const ms = checkTimeout('timeoutMs', opts.timeoutMs ?? this.timeoutMs);
    if (this.state === 'closed') throw this.closeError(command, false);
    if (this.pending.size >= MAX_PENDING) throw new IslandError('QMP_ERROR', `${command}: ${MAX_PENDING} commands already in flight`, { details: { command, path: this.path, reason: 'busy' } });
    const id = this.nextId++;
    let line: string;
    try {
      line = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
    } catch (err) {
      throw new IslandError('INVALID_ARGUMENT', `${command}: arguments are not JSON: ${(err as Error).message}`, { cause: err });
    }
    const waiter = new Waiter<unknown>({
      ms,
      signal: opts.signal,
      what: command,
      timeoutError: () => new IslandError('QMP_TIMEOUT', `${command}: no reply within ${ms} ms`, { details: { command, timeoutMs: ms, path: this.path } }),
      onEnd: (end) => {
        this.pending.delete(id);
        if (end === 'timeout' || end === 'aborted') this.forget(id);
      },
    });
    if (waiter.settled) return waiter.promise as Promise<T>; // aborted before sending
    this.pending.set(id, { command, waiter });
    this.send(`${line}\n`);
    return waiter.promise as Promise<T>;
  }

  /**
   * Commands issued in the same tick leave in one write. Besides saving system calls, this
   * keeps a burst such as `quit` plus queries from meeting a socket QEMU closed between two
   * writes: a failed write destroys the socket and with it any events not yet read.
   */
  private send(text: string): void {
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      process.nextTick(() => {
        this.corked = false;
        if (!this.sock.destroyed) this.sock.uncork();
      });
    }
    this.sock.write(text);
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

  /** Wait for the next event `name`; arm it before the command that causes it. */
  waitForEvent(name: string, opts?: EventWaitOptions): Promise<QmpEvent> {
    return waitForEvent((onEvent, onEnd) => {
      if (this.state === 'closed') {
        queueMicrotask(() => onEnd(this.closeError(`wait for ${name}`, false)));
        return () => {};
      }
      this.on('event', onEvent);
      this.on('close', onEnd);
      return () => {
        this.off('event', onEvent);
        this.off('close', onEnd);
      };
    }, name, opts);
  }

  /** Close the connection; pending commands fail with QMP_ERROR. Safe to call twice. */
  async close(): Promise<void> {
    this.shutdown(new IslandError('QMP_ERROR', 'connection closed by island', { details: { path: this.path, reason: 'closed' } }));
    await this.socketClosed;
  }

  private forget(id: number): void {
    this.abandoned.add(id);
    if (this.abandoned.size > ABANDONED_IDS_KEPT) {
      const oldest = this.abandoned.values().next().value;
      if (oldest !== undefined) this.abandoned.delete(oldest);
    }
  }

  private closeError(command: string, sent = true): IslandError {
    return new IslandError('QMP_ERROR', `${command}: connection closed`, { details: { command, path: this.path, reason: 'closed', sent } });
  }

  private shutdown(reason: IslandError): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.reader.reset();
    for (const p of [...this.pending.values()]) {
      p.waiter.reject(new IslandError('QMP_ERROR', `${p.command}: connection closed (${reason.message})`, {
        cause: reason,
        details: { command: p.command, path: this.path, reason: 'closed', sent: true },
      }));
    }
    this.pending.clear();
    this.greetingWaiter?.reject(reason);
    this.sock.destroy();
    this.emitSafely('close', reason);
  }

  private protocolError(what: string, extra: Record<string, unknown> = {}): void {
    this.log.warn({ path: this.path, ...extra }, `qmp: ${what}; closing the connection`);
    this.shutdown(new IslandError('QMP_ERROR', `QMP protocol error on ${this.path}: ${what}`, { details: { path: this.path, reason: 'protocol', ...extra } }));
  }

  private onData(chunk: Buffer): void {
    for (const item of this.reader.push(chunk)) {
      if (this.state === 'closed') return;
      if (item.kind === 'overlong') this.protocolError(`a line longer than ${this.reader.maxLineBytes} bytes`, { bytes: item.bytes });
      else if (item.kind === 'line') this.onMessage(parseLine(item.text), item.text);
    }
  }

  private onMessage(msg: QmpMessage, text: string): void {
    if (this.state === 'greeting') {
      if (msg.kind !== 'greeting') {
        this.protocolError('the peer did not start with a QMP greeting', { line: excerpt(text), why: msg.kind === 'invalid' ? msg.reason : `got ${msg.kind}` });
        return;
      }
      this.greeting = msg.greeting;
      this.state = 'ready';
      this.greetingWaiter?.resolve(msg.greeting);
      return;
    }
    switch (msg.kind) {
      case 'event': {
        this.emitSafely('event', msg.event);
        const info = shutdownInfo(msg.event);
        if (info) this.emitSafely('shutdown', info, msg.event);
        return;
      }
      case 'return':
      case 'error': {
        const p = this.claim(msg.id, text);
        if (!p) return;
        if (msg.kind === 'return') p.waiter.resolve(msg.value);
        else p.waiter.reject(replyError(p.command, msg.errorClass, msg.desc, { path: this.path }));
        return;
      }
      case 'invalid': {
        const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
        if (p) {
          p.waiter.reject(new IslandError('QMP_ERROR', `${p.command}: malformed reply (${msg.reason})`, { details: { command: p.command, path: this.path, reason: 'malformed', line: excerpt(text) } }));
        }
        this.bad(msg.reason, text);
        return;
      }
      case 'greeting':
        this.bad('a second greeting', text);
        return;
    }
  }

  /** The pending command a reply belongs to, or undefined (logged) when there is none. */
  private claim(id: number | string | undefined, text: string): Pending | undefined {
    if (id === undefined) {
      this.bad('a reply without id', text);
      return undefined;
    }
    const p = typeof id === 'number' ? this.pending.get(id) : undefined;
    if (p) return p;
    if (typeof id === 'number' && this.abandoned.delete(id)) {
      this.log.debug({ path: this.path, id }, 'qmp: late reply to a command that timed out or was aborted');
      return undefined;
    }
    this.bad('a reply with an unknown id', text);
    return undefined;
  }

  private bad(reason: string, text: string): void {
    this.badMessages++;
    if (this.badMessages > MAX_BAD_MESSAGES) {
      this.protocolError(`more than ${MAX_BAD_MESSAGES} malformed messages`, { last: reason });
      return;
    }
    this.log.warn({ path: this.path, reason, line: excerpt(text) }, 'qmp: ignored a malformed message');
  }

  private emitSafely<K extends keyof QmpClientEvents>(name: K, ...args: QmpClientEvents[K]): void {
    emitEach(this, name, args, (err) => this.log.warn({ path: this.path, event: name, err: String(err) }, 'qmp: an event listener threw'));
  }
}
