/**
 * A domain's lifecycle, followed through `virsh event --domain DOM --event lifecycle --loop`:
 * one long-running virsh per watched domain, whose lines look like
 *
 *   event 'lifecycle' for domain 'web1': Stopped Shutdown
 *
 * Why events rather than polling domstate: the final snapshot follows the shutdown at once
 * (no interval to choose between load and delay), and the event says why the domain stopped
 * (Shutdown: QEMU closed its images cleanly; Destroyed, Crashed, Failed: it may not have),
 * which a transient domain that vanished on shutdown cannot be asked afterwards.
 *
 * When the watching virsh exits (libvirtd restarted, say), it is started again after a pause,
 * and the domain's state is asked once: a domain that was running and is now gone or shut off
 * stopped while nobody watched, and is reported as stopped with reason "unwatched".
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { codeOf } from '../errors.js';
import type { QuiesceLogger } from './quiesce.js';
import type { Virsh } from './virsh.js';

/**
 * Pause before a watch that ended is started again (libvirtd restarting takes seconds),
 * doubled while each try ends within STABLE_MS (a transient domain that is gone: virsh event
 * fails at once), up to RESTART_MAX_MS.
 */
const RESTART_DELAY_MS = 2_000;
const RESTART_MAX_MS = 60_000;
const STABLE_MS = 10_000;
/** Bound on one line of virsh's output (a lifecycle line is under 200 bytes plus the name). */
const MAX_LINE = 4096;
const LIFECYCLE = /^(?:\S+ \S+: )?event 'lifecycle' for domain '(.*)': (\S+)(?: (.*))?$/;

export interface LifecycleEvents {
  /** The domain stopped; reason is libvirt's detail (Shutdown, Destroyed, Crashed, ...). */
  stopped: [reason: string];
  /** Any lifecycle event (Started, Suspended, Resumed, Stopped...). */
  lifecycle: [event: string, detail: string];
}

export class LifecycleWatch extends EventEmitter<LifecycleEvents> {
  private child: ChildProcess | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The domain ran when last seen (a stop while unwatched is reported only then). */
  private running = false;
  private delayMs = RESTART_DELAY_MS;

  constructor(
    private readonly virsh: Virsh,
    readonly domain: string,
    private readonly log: QuiesceLogger,
  ) {
    super();
  }

  start(): void {
    if (this.closed || this.child) return;
    const child = spawn('virsh', ['-q', '-c', this.virsh.uri, 'event', '--domain', this.domain, '--event', 'lifecycle', '--loop'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    this.child = child;
    const started = Date.now();
    let buf = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        this.line(buf.slice(0, nl).trim());
        buf = buf.slice(nl + 1);
      }
      if (buf.length > MAX_LINE) buf = '';
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-MAX_LINE)));
    child.once('error', (err) => this.log.warn({ domain: this.domain, err }, 'cannot run virsh event'));
    child.once('close', (code) => {
      this.child = undefined;
      if (this.closed) return;
      this.delayMs = Date.now() - started >= STABLE_MS ? RESTART_DELAY_MS : Math.min(RESTART_MAX_MS, this.delayMs * 2);
      this.log.warn({ domain: this.domain, code, stderr: stderr.trim().slice(0, 300), retryInMs: this.delayMs }, 'the lifecycle watch of a domain ended; starting it again');
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.start();
        void this.checkMissed();
      }, this.delayMs);
    });
    // Whether it runs now: a stop missed while the watch was down is reported against this.
    void this.virsh.state(this.domain).then(
      (s) => (this.running = s === 'running' || s === 'paused'),
      () => undefined,
    );
  }

  private line(text: string): void {
    const m = LIFECYCLE.exec(text);
    if (!m || m[1] !== this.domain) return;
    const event = m[2] as string;
    const detail = m[3] ?? '';
    this.emit('lifecycle', event, detail);
    if (event === 'Started' || event === 'Resumed') this.running = true;
    if (event === 'Stopped') {
      this.running = false;
      this.emit('stopped', detail);
    }
  }

  /** After a restart of the watch: did the domain stop while nobody watched? */
  private async checkMissed(): Promise<void> {
    if (!this.running) return;
    try {
      const s = await this.virsh.state(this.domain);
      if (s === 'running' || s === 'paused') return;
    } catch (err) {
      if (codeOf(err) !== 'DOMAIN_NOT_FOUND') return;
    }
    if (this.closed || !this.running) return;
    this.running = false;
    this.emit('stopped', 'unwatched');
  }

  /** Stop watching (may be called twice). */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  }
}
