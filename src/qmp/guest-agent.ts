/**
 * A client for the QEMU guest agent (qemu-ga) inside the VM, reached through the host end
 * of its virtio-serial port: a unix socket served by QEMU
 * (-chardev socket,path=P,server=on,wait=off,id=qga0
 *  -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0).
 *
 * The protocol is QMP's JSON lines without a greeting, capabilities, ids or events, and it
 * has no way to tell which request a reply answers. island therefore:
 *  - runs one command at a time (a queue), each call bounded by its own timeout;
 *  - resynchronises before the first command on a connection and after any timeout, abort or
 *    malformed reply: it sends the byte 0xFF (which resets the agent's JSON parser) followed by
 *    {"execute":"guest-sync-delimited","arguments":{"id":<random>}}; the agent answers with
 *    0xFF then {"return":<id>}. Everything before the 0xFF is stale and dropped, and replies
 *    after it are ignored until the one carrying island's id (qemu-ga-ref, guest-sync-delimited).
 * The agent may not run at all (no agent in the guest, guest booting): the connect succeeds
 * (QEMU holds the socket) and the sync times out with QMP_TIMEOUT.
 */
import { randomInt } from 'node:crypto';
import type { Socket } from 'node:net';
import { IslandError } from '../errors.js';
import { type CommandOptions } from './commands.js';
import { LineReader, QGA_SENTINEL } from './lines.js';
import { excerpt, parseLine, replyError } from './protocol.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, Waiter, checkTimeout, connectUnix, silentLogger, type QmpLogger } from './transport.js';

/** Freezing syncs every guest filesystem first: allow far longer than an ordinary command. */
export const DEFAULT_FREEZE_TIMEOUT_MS = 30_000;
/** Sync ids are random in [1, 2^31): an int for any agent version, unlikely to repeat. */
const SYNC_ID_LIMIT = 2 ** 31;
/** Calls waiting behind the one in flight. */
export const MAX_QUEUED = 64;

export type FsfreezeStatus = 'thawed' | 'frozen';

export interface GuestAgentOptions {
  /** Default bound of each call, queueing, connect and resync included (default 5 s). */
  timeoutMs?: number;
  /** Default bound of fsfreezeFreeze (default 30 s). */
  freezeTimeoutMs?: number;
  /** Bound of the connect step (default 5 s, never past the call's own bound). */
  connectTimeoutMs?: number;
  maxLineBytes?: number;
  logger?: QmpLogger;
}

interface Call {
  command: string;
  args: Record<string, unknown> | undefined;
  deadline: number;
  signal: AbortSignal | undefined;
  waiter: Waiter<unknown>;
}

/** What the reader is waiting for on behalf of the call in flight. */
type Expect = { kind: 'sync'; id: number; sawSentinel: boolean } | { kind: 'reply'; command: string };

interface Exchange {
  call: Call;
  expect: Expect;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export class GuestAgent {
  private sock: Socket | undefined;
  private socketClosed: Promise<void> = Promise.resolve();
  private readonly reader: LineReader;
  private readonly log: QmpLogger;
  private readonly timeoutMs: number;
  private readonly freezeTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private synced = false;
  private current: Exchange | undefined;
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;
  private isClosed = false;

  constructor(readonly path: string, opts: GuestAgentOptions = {}) {
    this.reader = new LineReader({ sentinel: true, ...(opts.maxLineBytes === undefined ? {} : { maxLineBytes: opts.maxLineBytes }) });
    this.log = opts.logger ?? silentLogger;
    this.timeoutMs = checkTimeout('timeoutMs', opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.freezeTimeoutMs = checkTimeout('freezeTimeoutMs', opts.freezeTimeoutMs ?? DEFAULT_FREEZE_TIMEOUT_MS);
    this.connectTimeoutMs = checkTimeout('connectTimeoutMs', opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * Run an agent command. Rejects with QMP_ERROR (error reply: details.class/desc; malformed
   * reply; connection closed), QMP_TIMEOUT or ABORTED.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: CommandOptions = {}): Promise<T> {
    if (typeof command !== 'string' || command.length === 0) return Promise.reject(new IslandError('INVALID_ARGUMENT', 'an agent command needs a name'));
    let ms: number;
    try {
      ms = checkTimeout('timeoutMs', opts.timeoutMs ?? this.timeoutMs);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.isClosed) return Promise.reject(this.closedError(command, false));
    if (this.queued >= MAX_QUEUED) {
      return Promise.reject(new IslandError('QMP_ERROR', `${command}: ${MAX_QUEUED} agent commands already queued`, { details: { command, path: this.path, reason: 'busy' } }));
    }
    const call: Call = {
      command,
      args,
      deadline: Date.now() + ms,
      signal: opts.signal,
      waiter: new Waiter<unknown>({
        ms,
        signal: opts.signal,
        what: `guest agent ${command}`,
        timeoutError: () => new IslandError('QMP_TIMEOUT', `guest agent ${command}: no reply within ${ms} ms`, { details: { command, timeoutMs: ms, path: this.path, agent: true } }),
        onEnd: (end) => this.onCallEnd(call, end),
      }),
    };
    this.queued++;
    this.tail = this.tail.then(() => this.run(call));
    return call.waiter.promise as Promise<T>;
  }

  /** Resynchronise now (normally automatic). */
  async sync(opts: CommandOptions = {}): Promise<void> {
    this.synced = false;
    await this.execute('guest-ping', undefined, opts);
  }

  /** Freeze the guest filesystems; resolves with how many were frozen. Thaw after a timeout too. */
  async fsfreezeFreeze(opts: CommandOptions = {}): Promise<number> {
    const n = await this.execute('guest-fsfreeze-freeze', undefined, { ...opts, timeoutMs: opts.timeoutMs ?? this.freezeTimeoutMs });
    return this.checked('guest-fsfreeze-freeze', n, isCount);
  }

  /** Thaw the guest filesystems; resolves with how many were thawed. */
  async fsfreezeThaw(opts?: CommandOptions): Promise<number> {
    const n = await this.execute('guest-fsfreeze-thaw', undefined, opts);
    return this.checked('guest-fsfreeze-thaw', n, isCount);
  }

  async fsfreezeStatus(opts?: CommandOptions): Promise<FsfreezeStatus> {
    const s = await this.execute('guest-fsfreeze-status', undefined, opts);
    return this.checked('guest-fsfreeze-status', s, (v): v is FsfreezeStatus => v === 'thawed' || v === 'frozen');
  }

  /** Close the connection; the call in flight and queued calls fail with QMP_ERROR. Safe twice. */
  async close(): Promise<void> {
    if (!this.isClosed) {
      this.isClosed = true;
      this.fail(this.closedError(this.current?.call.command ?? 'close', true));
      this.sock?.destroy();
    }
    await this.socketClosed;
  }

  private checked<T>(command: string, value: unknown, ok: (v: unknown) => v is T): T {
    if (ok(value)) return value;
    this.synced = false;
    throw new IslandError('QMP_ERROR', `guest agent ${command}: malformed reply`, { details: { command, path: this.path, reason: 'malformed', agent: true, reply: excerpt(JSON.stringify(value) ?? String(value)) } });
  }

  private closedError(command: string, sent: boolean): IslandError {
    return new IslandError('QMP_ERROR', `guest agent ${command}: connection closed`, { details: { command, path: this.path, reason: 'closed', sent, agent: true } });
  }

  private onCallEnd(call: Call, end: string): void {
    this.queued--;
    if (end === 'timeout' || end === 'aborted') {
      // The agent may still answer: its reply must not be taken for the next command's.
      this.synced = false;
      if (this.current?.call === call) {
        const ex = this.current;
        this.current = undefined;
        ex.reject(new IslandError('ABORTED', 'superseded'));
      }
    }
  }

  /** One call, when its turn comes. Never rejects: the outcome goes to the call's waiter. */
  private async run(call: Call): Promise<void> {
    if (call.waiter.settled) return;
    try {
      if (this.isClosed) throw this.closedError(call.command, false);
      const sock = this.sock ?? (await this.open(call));
      if (!this.synced) {
        const id = randomInt(1, SYNC_ID_LIMIT);
        const request = JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } });
        await this.exchange(sock, call, { kind: 'sync', id, sawSentinel: false }, Buffer.concat([Buffer.of(QGA_SENTINEL), Buffer.from(`${request}\n`)]));
        this.synced = true;
      }
      const request = JSON.stringify(call.args === undefined ? { execute: call.command } : { execute: call.command, arguments: call.args });
      call.waiter.resolve(await this.exchange(sock, call, { kind: 'reply', command: call.command }, Buffer.from(`${request}\n`)));
    } catch (err) {
      call.waiter.reject(err);
    }
  }

  private async open(call: Call): Promise<Socket> {
    const deadline = Math.min(call.deadline, Date.now() + this.connectTimeoutMs);
    const sock = await connectUnix(this.path, { deadline, signal: call.signal, retry: false });
    if (this.isClosed) {
      sock.destroy();
      throw this.closedError(call.command, false);
    }
    this.sock = sock;
    this.synced = false;
    this.reader.reset();
    this.socketClosed = new Promise((resolve) => sock.once('close', () => resolve()));
    let socketError: Error | undefined;
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => (socketError ??= err));
    sock.on('close', () => {
      if (this.sock === sock) this.sock = undefined;
      this.synced = false;
      this.reader.reset();
      const why = socketError ? `: ${socketError.message}` : '';
      const err = this.closedError(this.current?.call.command ?? 'agent', true);
      err.message += why;
      this.fail(err);
    });
    return sock;
  }

  private exchange(sock: Socket, call: Call, expect: Expect, bytes: Buffer): Promise<unknown> {
    if (call.waiter.settled) return Promise.reject(new IslandError('ABORTED', 'superseded'));
    return new Promise((resolve, reject) => {
      this.current = { call, expect, resolve, reject };
      sock.write(bytes);
    });
  }

  /** End the exchange in flight with an error. */
  private fail(err: IslandError): void {
    this.synced = false;
    const ex = this.current;
    this.current = undefined;
    ex?.reject(err);
  }

  private onData(chunk: Buffer): void {
    for (const item of this.reader.push(chunk)) {
      const ex = this.current;
      if (item.kind === 'sentinel') {
        if (ex?.expect.kind === 'sync') ex.expect.sawSentinel = true;
        else if (ex) this.fail(this.protocolError(ex, 'a sync delimiter (0xFF) instead of a reply'));
        else this.log.debug({ path: this.path }, 'qga: stray sync delimiter');
      } else if (item.kind === 'overlong') {
        if (ex) this.fail(this.protocolError(ex, `a line longer than ${this.reader.maxLineBytes} bytes`));
        else this.log.warn({ path: this.path, bytes: item.bytes }, 'qga: dropped an overlong line');
        this.synced = false;
      } else if (!ex) {
        // Most likely the late reply of a call that timed out; the next call resyncs.
        this.synced = false;
        this.log.debug({ path: this.path, line: excerpt(item.text) }, 'qga: dropped a line nobody waits for');
      } else if (ex.expect.kind === 'sync') {
        this.onSyncLine(ex, ex.expect, item.text);
      } else {
        this.onReplyLine(ex, item.text);
      }
    }
  }

  private onSyncLine(ex: Exchange, expect: Extract<Expect, { kind: 'sync' }>, text: string): void {
    const msg = expect.sawSentinel ? parseLine(text) : undefined;
    if (msg?.kind === 'return' && msg.value === expect.id) {
      this.current = undefined;
      ex.resolve(undefined);
      return;
    }
    // Stale output from before the sync (or another client's sync): ignored, as specified.
    this.log.debug({ path: this.path, line: excerpt(text), sentinel: expect.sawSentinel }, 'qga: dropped stale data while resynchronising');
  }

  private onReplyLine(ex: Exchange, text: string): void {
    const msg = parseLine(text);
    const command = ex.call.command;
    if (msg.kind === 'return') {
      this.current = undefined;
      ex.resolve(msg.value);
    } else if (msg.kind === 'error') {
      this.current = undefined;
      ex.reject(replyError(command, msg.errorClass, msg.desc, { path: this.path, agent: true }, `guest agent ${command}`));
    } else {
      const why = msg.kind === 'invalid' ? msg.reason : `an unexpected ${msg.kind}`;
      this.log.warn({ path: this.path, command, reason: why, line: excerpt(text) }, 'qga: malformed reply');
      this.fail(this.protocolError(ex, why, text));
    }
  }

  private protocolError(ex: Exchange, what: string, text?: string): IslandError {
    const details: Record<string, unknown> = { command: ex.call.command, path: this.path, reason: ex.expect.kind === 'sync' ? 'protocol' : 'malformed', agent: true };
    if (text !== undefined) details['line'] = excerpt(text);
    return new IslandError('QMP_ERROR', `guest agent ${ex.call.command}: ${what}`, { details });
  }
}
