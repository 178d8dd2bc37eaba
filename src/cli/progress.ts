/**
 * Progress of long CLI operations, on stderr (stdout stays the command's result):
 * a bar redrawn in place on a terminal, plain lines otherwise (at most one every
 * PLAIN_EVERY_MS, plus the last), so logs from cron or systemd stay readable.
 *
 *   snapshot vm1  [##########----------]  50%  512 MiB / 1.0 GiB  31 MiB/s  ETA 0:16
 */
import { humanSize } from '../format/names.js';

const WIDTH = 20;
const TTY_EVERY_MS = 100;
const PLAIN_EVERY_MS = 5_000;

export interface ProgressSample {
  done: number;
  total: number;
  /** Whether done/total are bytes (sizes and a rate are shown) or items. */
  bytes?: boolean;
  /** A short note after the figures ("waiting for the store"). */
  note?: string;
}

export interface ProgressOptions {
  stream?: NodeJS.WriteStream;
  /** Draw a bar in place (default: stream.isTTY). */
  tty?: boolean;
  now?: () => number;
}

function clock(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** One line of progress: label, bar, percent, amounts, rate and ETA. */
export function progressLine(label: string, s: ProgressSample, elapsedMs: number, tty: boolean): string {
  const frac = s.total > 0 ? Math.min(1, s.done / s.total) : 0;
  const pct = `${Math.floor(frac * 100)}%`.padStart(4);
  const amount = s.bytes ? `${humanSize(s.done)} / ${humanSize(s.total)}` : `${s.done} / ${s.total}`;
  const rate = elapsedMs > 0 ? (s.done * 1000) / elapsedMs : 0;
  const rateText = s.bytes ? `${humanSize(Math.round(rate))}/s` : `${rate.toFixed(1)}/s`;
  const eta = rate > 0 && s.total > s.done ? `  ETA ${clock((s.total - s.done) / rate)}` : '';
  const bar = tty ? `  [${'#'.repeat(Math.round(frac * WIDTH)).padEnd(WIDTH, '-')}]` : '';
  return `${label}${bar}  ${pct}  ${amount}  ${rateText}${eta}${s.note ? `  (${s.note})` : ''}`;
}

export class Progress {
  private readonly stream: NodeJS.WriteStream;
  private readonly tty: boolean;
  private readonly now: () => number;
  private readonly start: number;
  private last = -Infinity;
  private drawn = false;
  private sample: ProgressSample | undefined;

  constructor(
    private readonly label: string,
    opts: ProgressOptions = {},
  ) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = opts.tty ?? this.stream.isTTY === true;
    this.now = opts.now ?? Date.now;
    this.start = this.now();
  }

  update(s: ProgressSample): void {
    this.sample = s;
    const t = this.now();
    if (t - this.last < (this.tty ? TTY_EVERY_MS : PLAIN_EVERY_MS)) return;
    this.last = t;
    this.draw();
  }

  private draw(): void {
    if (!this.sample) return;
    const line = progressLine(this.label, this.sample, this.now() - this.start, this.tty);
    this.stream.write(this.tty ? `\r\x1b[K${line}` : `${line}\n`);
    this.drawn = true;
  }

  /** Draw the final state and end the line. */
  finish(): void {
    if (this.sample && (this.tty || this.last !== this.now())) this.draw();
    if (this.tty && this.drawn) this.stream.write('\n');
  }
}

/**
 * Run `work` while polling `poll` for progress (null: nothing to show yet). The bar is
 * finished however `work` ends; a failing poll only skips a frame.
 */
export async function withProgress<T>(label: string, work: Promise<T>, poll: () => Promise<ProgressSample | null>, opts: ProgressOptions & { everyMs?: number } = {}): Promise<T> {
  const bar = new Progress(label, opts);
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      const s = await poll().catch(() => null);
      if (s && !stop) bar.update(s);
      await new Promise((r) => setTimeout(r, opts.everyMs ?? 250));
    }
  })();
  try {
    const result = await work;
    const last = await poll().catch(() => null);
    if (last) bar.update(last);
    return result;
  } finally {
    stop = true;
    await loop;
    bar.finish();
  }
}
