/**
 * A real Linux guest for tests: scripts/guest-image.sh builds, once and cached, a Debian cloud
 * kernel and a busybox initramfs whose /init runs one step (write or verify) on /dev/vda;
 * bootGuest runs it under qemu-system-x86_64 -accel tcg (KVM is not usable on the test hosts)
 * on a qcow2 file, its serial console in a file, optionally with a control port the test
 * writes to and qemu-guest-agent's channel. QEMU is stopped by pid in teardown.
 * When the image cannot be built (no network, no Debian mirror) the caller skips with the
 * reason, unless ISLAND_REQUIRE_SWIFT=1 (as in CI), where that is a failure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { run, waitFor } from './daemon.js';

const SCRIPT = resolve(import.meta.dirname, '../../scripts/guest-image.sh');
/** Fetching the kernel and packing the initramfs takes ~15 s; allow a slow mirror. */
const BUILD_TIMEOUT_MS = 300_000;

interface Tap {
  teardown(fn: () => unknown): void;
}

export interface GuestImage {
  kernel: string;
  initrd: string;
  /** qemu-guest-agent is in the initramfs (freeze snapshots can be tested). */
  agent: boolean;
}

export type GuestImageOrReason = { image: GuestImage } | { skip: string };

/** Build (or reuse) the guest image in $ISLAND_GUEST_DIR, by default a directory under tmpdir. */
export async function useGuestImage(): Promise<GuestImageOrReason> {
  const dir = process.env.ISLAND_GUEST_DIR ?? join(tmpdir(), 'island-guest');
  let reason: string | undefined;
  if (!existsSync('/usr/bin/qemu-system-x86_64')) reason = 'qemu-system-x86_64 is not installed (run scripts/install-deps.sh)';
  else {
    try {
      await run('bash', [SCRIPT, dir], { timeout: BUILD_TIMEOUT_MS });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      // apt-get's own errors and the script's verdict; its warnings only add noise.
      const lines = (e.stderr ?? '').split('\n').filter((l) => /^(E:|guest-image:)/.test(l));
      reason = `scripts/guest-image.sh could not build the guest (kernel and packages are fetched with apt-get download): ${lines.length ? lines.join('; ') : e.message.trim()}`;
    }
  }
  if (reason) {
    if (process.env.ISLAND_REQUIRE_SWIFT === '1') throw new Error(reason);
    return { skip: reason };
  }
  const agent = (await readFile(join(dir, 'agent'), 'utf8')).trim() === 'yes';
  return { image: { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.gz'), agent } };
}

export interface GuestOptions {
  image: GuestImage;
  /** The qcow2 file the guest sees as /dev/vda. */
  file: string;
  step: 'write' | 'verify';
  /** Where the serial console goes. */
  console: string;
  /** QEMU's QMP socket (island connects to it). */
  qmp?: string;
  /** The host end of the guest agent's channel (island connects to it). */
  qga?: string;
  /** The host end of the guest's control port (org.island.control): see Guest.send. */
  control?: string;
  /** More island.KEY=VALUE settings for the guest's /init (files, mib, churn). */
  args?: Record<string, string | number>;
}

export class Guest {
  stderr = '';
  readonly exited: Promise<number | null>;

  private control: Socket | undefined;

  private constructor(readonly child: ChildProcess, readonly consolePath: string, private readonly controlPath: string | undefined) {
    this.exited = new Promise((r) => child.once('exit', (code) => r(code)));
    child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
  }

  static boot(t: Tap, o: GuestOptions): Guest {
    const append = ['console=ttyS0', 'panic=-1', 'quiet', `island.step=${o.step}`, ...Object.entries(o.args ?? {}).map(([k, v]) => `island.${k}=${v}`)];
    const args = [
      '-accel', 'tcg', '-machine', 'q35', '-cpu', 'max', '-m', '256', '-no-reboot', '-nodefaults', '-display', 'none',
      '-kernel', o.image.kernel, '-initrd', o.image.initrd, '-append', append.join(' '),
      '-blockdev', `driver=file,filename=${o.file},node-name=f0,aio=threads,cache.direct=on`,
      '-blockdev', 'driver=qcow2,file=f0,node-name=d0',
      '-device', 'virtio-blk-pci,drive=d0,werror=stop,rerror=stop',
      '-serial', `file:${o.console}`,
      ...(o.qmp ? ['-qmp', `unix:${o.qmp},server=on,wait=off`] : []),
      ...(o.qga || o.control ? ['-device', 'virtio-serial'] : []),
      ...(o.qga ? ['-chardev', `socket,path=${o.qga},server=on,wait=off,id=qga0`, '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0'] : []),
      ...(o.control ? ['-chardev', `socket,path=${o.control},server=on,wait=off,id=ctl0`, '-device', 'virtserialport,chardev=ctl0,name=org.island.control'] : []),
    ];
    const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const g = new Guest(child, o.console, o.control);
    t.teardown(() => g.kill());
    return g;
  }

  /**
   * Write a line to the guest's control port ("stop" ends the write step's rewriting). The
   * connection stays open until QEMU exits: QEMU drops what a closed connection left unread.
   */
  async send(line: string): Promise<void> {
    const path = this.controlPath;
    if (!path) throw new Error('the guest was booted without a control port');
    if (!this.control) {
      await waitFor('the guest control socket', async () => {
        if (this.child.exitCode !== null) throw new Error('QEMU exited');
        this.control = await new Promise<Socket | undefined>((r) => {
          const s = createConnection(path);
          s.once('error', () => r(undefined));
          s.once('connect', () => r(s));
        });
        return this.control !== undefined;
      });
      void this.exited.then(() => this.control?.destroy());
    }
    this.control?.write(`${line}\n`);
  }

  async console(): Promise<string> {
    return readFile(this.consolePath, 'utf8').catch(() => '');
  }

  /** Wait for a console line matching re; fails early, with the console, if QEMU exits first. */
  async waitConsole(re: RegExp, ms: number): Promise<RegExpMatchArray> {
    let m: RegExpMatchArray | null = null;
    let exited = false;
    void this.exited.then(() => (exited = true));
    try {
      await waitFor(`${re} on the guest console`, async () => {
        m = (await this.console()).match(re);
        if (!m && exited) throw new Error(`QEMU exited (${this.child.exitCode}) before ${re}`);
        return m !== null;
      }, ms);
    } catch (err) {
      throw new Error(`${(err as Error).message}; console:\n${await this.console()}\nqemu: ${this.stderr}`, { cause: err });
    }
    return m as unknown as RegExpMatchArray;
  }

  /** Wait for QEMU to exit (the guest powers off); its exit code. */
  async waitExit(ms: number): Promise<number | null> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the guest did not power off within ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } catch (err) {
      throw new Error(`${(err as Error).message}; console:\n${await this.console()}\nqemu: ${this.stderr}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  kill(): void {
    this.control?.destroy();
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** The "island: sum HASH  NAME" lines of a console, sorted. */
export function sums(console: string): string[] {
  return console.split('\n').filter((l) => l.startsWith('island: sum ')).map((l) => l.trim()).sort();
}
