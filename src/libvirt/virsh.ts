/**
 * libvirt, through its own command line client: `virsh -c URI <command> --domain DOM ...`.
 *
 * Why virsh rather than a binding: Debian ships it with libvirt itself (libvirt-clients), so
 * it is there wherever libvirtd is; there is no native module to build against each Node
 * version (the maintained Node bindings are C++ addons tied to one ABI); and its exit
 * status (0 or 1) and its `error: ...` lines have been stable across libvirt releases. Each
 * command is one short process (about 15 ms here); the lifecycle watch (events.ts) is one
 * long-running `virsh event`.
 *
 * Every call runs virsh with an argument array (never a shell), the domain passed as the
 * value of `--domain` (a name starting with "-" is never taken for an option), LC_ALL=C
 * (messages are matched in English), and a timeout. Failures become island errors with
 * stable codes:
 *
 *   DOMAIN_NOT_FOUND      libvirt has no domain of that name
 *   LIBVIRT_UNAVAILABLE   virsh is missing, or libvirtd does not answer on the URI (transient)
 *   LIBVIRT_TIMEOUT       virsh did not finish within its bound (transient)
 *   LIBVIRT_ERROR         libvirt refused the command; details.reason says why when known:
 *                         "agent" (no guest agent answers), "not-running" (the domain is shut
 *                         off or not in a state for it)
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { IslandError } from '../errors.js';

/** One virsh command: connecting to a local libvirtd and answering takes milliseconds. */
export const VIRSH_TIMEOUT_MS = 30_000;
/**
 * domfsfreeze waits for the guest agent to sync and freeze every file system: a guest with
 * a lot of dirty page cache takes seconds. libvirt's own agent timeout is shorter, so this
 * only catches a libvirtd that hangs.
 */
export const FREEZE_TIMEOUT_MS = 120_000;
/** A libvirt domain name: island bounds it (libvirt itself takes any string without '/'). */
const DOMAIN_NAME = /^[^/\0\n\r]{1,200}$/;
/** Bound on what one virsh call may print (a domain's block list is a few lines). */
const MAX_OUTPUT = 1024 * 1024;

export type DomainState = 'running' | 'paused' | 'shut off' | 'shutdown' | 'crashed' | 'pmsuspended' | 'idle' | 'blocked' | 'unknown';

export interface VirshOptions {
  timeoutMs?: number;
}

/** A domain name as given by a caller, checked (never interpreted by a shell anyway). */
export function parseDomainName(v: unknown): string {
  if (typeof v !== 'string' || !DOMAIN_NAME.test(v)) {
    throw new IslandError('INVALID_ARGUMENT', `a libvirt domain name must be 1 to 200 characters without "/" or line breaks, got ${JSON.stringify(String(v)).slice(0, 80)}`);
  }
  return v;
}

/** The last `error: ...` line virsh printed, without the prefix. */
function errorLine(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  const errs = lines.filter((l) => l.startsWith('error: ')).map((l) => l.slice('error: '.length));
  return (errs.length ? errs.join('; ') : lines.join('; ')).slice(0, 500);
}

/** The stable code of a failed virsh call, from its messages. */
export function classify(message: string): { code: 'DOMAIN_NOT_FOUND' | 'LIBVIRT_UNAVAILABLE' | 'LIBVIRT_ERROR'; reason?: 'agent' | 'not-running' } {
  if (/failed to get domain|Domain not found|no domain with matching name/i.test(message)) return { code: 'DOMAIN_NOT_FOUND' };
  if (/failed to connect to the hypervisor|Failed to connect socket|no connection driver available|End of file while reading data|Cannot recv data|unable to connect to server/i.test(message)) {
    return { code: 'LIBVIRT_UNAVAILABLE' };
  }
  // Before the agent: a freeze of a paused domain says "Unable to freeze filesystems" too.
  if (/domain is not running|is already paused|is not paused/i.test(message)) return { code: 'LIBVIRT_ERROR', reason: 'not-running' };
  if (/guest agent|agent is not (connected|responding|configured)|Unable to freeze filesystems|Unable to thaw/i.test(message)) return { code: 'LIBVIRT_ERROR', reason: 'agent' };
  return { code: 'LIBVIRT_ERROR' };
}

export class Virsh {
  constructor(readonly uri: string) {}

  /** Run `virsh -c URI ...args`; its standard output, or an island error. */
  run(args: string[], opts: VirshOptions = {}): Promise<string> {
    const timeout = opts.timeoutMs ?? VIRSH_TIMEOUT_MS;
    // Not -q: it also drops the messages that say what a command did ("Froze 1 filesystem(s)").
    const argv = ['-c', this.uri, ...args];
    return new Promise((done, fail) => {
      execFile('virsh', argv, { timeout, killSignal: 'SIGKILL', maxBuffer: MAX_OUTPUT, env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
        if (!err) return done(String(stdout));
        const command = args[0] ?? '';
        const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null };
        if (e.code === 'ENOENT') {
          return fail(new IslandError('LIBVIRT_UNAVAILABLE', 'virsh is not installed (island talks to libvirt through it: Debian package libvirt-clients)', { cause: err, details: { command } }));
        }
        if (e.killed || e.signal === 'SIGKILL') {
          return fail(new IslandError('LIBVIRT_TIMEOUT', `virsh ${command} did not finish within ${timeout} ms (libvirtd on ${this.uri} hangs?)`, { cause: err, details: { command, uri: this.uri } }));
        }
        const why = errorLine(String(stderr)) || e.message;
        const { code, reason } = classify(why);
        fail(new IslandError(code, `virsh ${command}: ${why}`, { cause: err, details: { command, uri: this.uri, ...(reason ? { reason } : {}) } }));
      });
    });
  }

  /** The domain's state (`domstate`). */
  async state(domain: string): Promise<DomainState> {
    const out = (await this.run(['domstate', '--domain', domain])).trim();
    const known: DomainState[] = ['running', 'paused', 'shut off', 'shutdown', 'crashed', 'pmsuspended', 'idle', 'blocked'];
    return known.find((s) => out === s || out.startsWith(`${s} `)) ?? (out === 'in shutdown' ? 'shutdown' : 'unknown');
  }

  /**
   * The files the domain's disks use (`domblklist --details`: type, device, target, source),
   * as absolute paths. A running domain answers from its live definition, a stopped one from
   * its persistent one.
   */
  async diskFiles(domain: string): Promise<string[]> {
    const out = await this.run(['domblklist', '--domain', domain, '--details']);
    const files: string[] = [];
    for (const line of out.split('\n')) {
      // "file  disk  vda  /run/island/mnt/web1.qcow2" (the header and rule lines are not
      // file disks); the source may hold spaces.
      const m = /^\s*(\S+)\s+(\S+)\s+(\S+)\s+(.+?)\s*$/.exec(line);
      if (!m || m[1] !== 'file' || m[4] === '-') continue;
      files.push(resolve(m[4] as string));
    }
    return files;
  }

  /**
   * Refuse a domain that does not exist (DOMAIN_NOT_FOUND) or whose disks do not use `file`
   * (DOMAIN_NOT_USING_VOLUME): snapshots would quiesce, and a resize grow, some other VM.
   */
  async checkUses(domain: string, file: string): Promise<void> {
    const files = await this.diskFiles(domain);
    if (files.includes(resolve(file))) return;
    throw new IslandError('DOMAIN_NOT_USING_VOLUME', `libvirt domain ${domain} has no disk on ${file} (its file disks: ${files.length ? files.join(', ').slice(0, 400) : 'none'}); define the domain with that disk first`, {
      details: { domain, file, disks: files.slice(0, 16) },
    });
  }

  /** Freeze the guest's file systems through libvirt's guest agent; how many it froze. */
  async fsFreeze(domain: string): Promise<number> {
    const out = await this.run(['domfsfreeze', '--domain', domain], { timeoutMs: FREEZE_TIMEOUT_MS });
    return Number(/Froze (\d+) filesystem/.exec(out)?.[1] ?? 0);
  }

  async fsThaw(domain: string): Promise<number> {
    const out = await this.run(['domfsthaw', '--domain', domain], { timeoutMs: FREEZE_TIMEOUT_MS });
    return Number(/Thawed (\d+) filesystem/.exec(out)?.[1] ?? 0);
  }

  /** Pause the domain's vCPUs (QEMU's stop: it drains I/O and flushes its caches). */
  async suspend(domain: string): Promise<void> {
    await this.run(['suspend', '--domain', domain]);
  }

  async resume(domain: string): Promise<void> {
    await this.run(['resume', '--domain', domain]);
  }

  /** Grow the disk whose source is `file` to `size` bytes in the running domain. */
  async blockResize(domain: string, file: string, size: number): Promise<void> {
    await this.run(['blockresize', '--domain', domain, '--path', file, '--size', `${size}B`], { timeoutMs: 120_000 });
  }
}
