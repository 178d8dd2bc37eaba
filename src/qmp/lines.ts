/**
 * Bounded line framing for QMP and the guest agent.
 *
 * Both protocols send one JSON document per line ("\r\n" from QEMU, "\n" from the agent).
 * The reader works on bytes, never on decoded text, so that:
 *  - a line is bounded in bytes before it is decoded or parsed: a peer that never sends a
 *    newline cannot make island buffer without limit;
 *  - the guest agent's 0xFF sentinel (not valid UTF-8) can be recognised in the byte stream.
 *
 * The reader never throws on input. It reports each complete line, and at most one
 * `overlong` per run of bytes past the bound (the bytes are dropped up to the next newline,
 * so the caller may choose to continue; QMP closes the connection instead).
 */
import { IslandError } from '../errors.js';

/** 1 MiB: the largest QMP reply island asks for (query-block on many nodes) is a few KiB. */
export const DEFAULT_MAX_LINE_BYTES = 1024 * 1024;

/** The byte the guest agent puts before a guest-sync-delimited reply (and a client before a request). */
export const QGA_SENTINEL = 0xff;

const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;

export type LineItem =
  | { kind: 'line'; text: string }
  /** A line grew past the bound; its bytes are dropped up to the next newline. */
  | { kind: 'overlong'; bytes: number }
  /** The sentinel byte arrived: any partial line before it was dropped. */
  | { kind: 'sentinel'; droppedBytes: number };

export interface LineReaderOptions {
  maxLineBytes?: number;
  /** Treat 0xFF as a reset marker (guest agent). Without it 0xFF is ordinary line content. */
  sentinel?: boolean;
}

export class LineReader {
  readonly maxLineBytes: number;
  private readonly sentinel: boolean;
  private parts: Buffer[] = [];
  private partBytes = 0;
  /** Inside an overlong line: drop bytes until the next newline. */
  private skipping = false;
  private skippedBytes = 0;

  constructor(opts: LineReaderOptions = {}) {
    const max = opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    if (!Number.isSafeInteger(max) || max < 1) throw new IslandError('INVALID_ARGUMENT', `maxLineBytes must be a positive integer, got ${max}`);
    this.maxLineBytes = max;
    this.sentinel = opts.sentinel ?? false;
  }

  /** Bytes held for an unfinished line. */
  get pendingBytes(): number {
    return this.partBytes;
  }

  /** Forget any partial line (after a reconnect or a resynchronisation). */
  reset(): void {
    this.parts = [];
    this.partBytes = 0;
    this.skipping = false;
    this.skippedBytes = 0;
  }

  /** Feed a chunk; returns the items it completes, in order. */
  push(chunk: Buffer): LineItem[] {
    const out: LineItem[] = [];
    let start = 0;
    while (start < chunk.length) {
      const end = this.nextBoundary(chunk, start);
      if (end < 0) {
        this.append(chunk.subarray(start), out);
        break;
      }
      this.append(chunk.subarray(start, end), out);
      if (chunk[end] === NEWLINE) this.finishLine(out);
      else {
        out.push({ kind: 'sentinel', droppedBytes: this.partBytes + this.skippedBytes });
        this.reset();
      }
      start = end + 1;
    }
    return out;
  }

  private nextBoundary(chunk: Buffer, from: number): number {
    const nl = chunk.indexOf(NEWLINE, from);
    if (!this.sentinel) return nl;
    const ff = chunk.indexOf(QGA_SENTINEL, from);
    if (ff < 0) return nl;
    return nl < 0 ? ff : Math.min(nl, ff);
  }

  private append(bytes: Buffer, out: LineItem[]): void {
    if (bytes.length === 0) return;
    if (this.skipping) {
      this.skippedBytes += bytes.length;
      return;
    }
    if (this.partBytes + bytes.length > this.maxLineBytes) {
      out.push({ kind: 'overlong', bytes: this.partBytes + bytes.length });
      this.skippedBytes = this.partBytes + bytes.length;
      this.parts = [];
      this.partBytes = 0;
      this.skipping = true;
      return;
    }
    // Copy: the socket may reuse its chunk buffers.
    this.parts.push(Buffer.from(bytes));
    this.partBytes += bytes.length;
  }

  private finishLine(out: LineItem[]): void {
    if (this.skipping) {
      this.skipping = false;
      this.skippedBytes = 0;
      return;
    }
    let line = this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.partBytes);
    this.parts = [];
    this.partBytes = 0;
    if (line.length > 0 && line[line.length - 1] === CARRIAGE_RETURN) line = line.subarray(0, line.length - 1);
    const text = line.toString('utf8').trim();
    if (text.length > 0) out.push({ kind: 'line', text });
  }
}
