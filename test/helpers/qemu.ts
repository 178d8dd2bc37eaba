/**
 * A guest-less QEMU for tests: qemu-system-x86_64 -machine none with a QMP socket and a
 * qcow2 image opened through -blockdev (aio=threads, as island recommends). Guest-style
 * writes go through QEMU's own qcow2 driver with human-monitor-command "qemu-io".
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { waitFor } from './daemon.js';

export class TestQemu {
  private sock: Socket | undefined;
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<number, (v: { return?: unknown; error?: { desc: string } }) => void>();
  readonly events: string[] = [];
  output = '';

  private constructor(readonly child: ChildProcess, readonly qmpPath: string) {}

  /** `islandQmp`: a second QMP socket for island (a QMP socket serves one client at a time). */
  static async start(dir: string, file: string, opts: { directIo: boolean; islandQmp?: string }): Promise<TestQemu> {
    const qmpPath = join(dir, `qmp-${Date.now()}.sock`);
    const child = spawn('qemu-system-x86_64', [
      '-machine', 'none', '-nodefaults', '-display', 'none',
      '-qmp', `unix:${qmpPath},server=on,wait=off`,
      ...(opts.islandQmp ? ['-qmp', `unix:${opts.islandQmp},server=on,wait=off`] : []),
      '-blockdev', `driver=file,filename=${file},node-name=f0,cache.direct=${opts.directIo ? 'on' : 'off'},aio=threads`,
      '-blockdev', 'driver=qcow2,file=f0,node-name=d0',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    const q = new TestQemu(child, qmpPath);
    child.stdout?.on('data', (d: Buffer) => (q.output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (q.output += d.toString()));
    await waitFor('QEMU QMP socket', async () => {
      if (child.exitCode !== null) throw new Error(`qemu exited: ${q.output}`);
      return q.connect().then(() => true, () => false);
    });
    await q.cmd('qmp_capabilities');
    return q;
  }

  private connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = createConnection(this.qmpPath);
      s.once('error', reject);
      s.once('connect', () => {
        this.sock = s;
        s.on('data', (d) => this.onData(d.toString()));
        resolve();
      });
    });
  }

  private onData(text: string): void {
    this.buf += text;
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as { id?: number; event?: string; return?: unknown; error?: { desc: string } };
      if (msg.event) this.events.push(msg.event);
      if (typeof msg.id === 'number') {
        this.pending.get(msg.id)?.(msg);
        this.pending.delete(msg.id);
      }
    }
  }

  async cmd(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = this.nextId++;
    const reply = new Promise<{ return?: unknown; error?: { desc: string } }>((r) => this.pending.set(id, r));
    this.sock?.write(JSON.stringify({ execute, arguments: args, id }) + '\n');
    const r = await reply;
    if (r.error) throw new Error(`${execute}: ${r.error.desc}`);
    return r.return;
  }

  /** Run a qemu-io command on the qcow2 node inside QEMU (output lands in `output`). */
  async qemuIo(command: string): Promise<void> {
    await this.cmd('human-monitor-command', { 'command-line': `qemu-io d0 "${command}"` });
  }

  async quit(): Promise<void> {
    const done = new Promise((r) => this.child.once('exit', r));
    await this.cmd('quit').catch(() => undefined);
    await done;
    this.sock?.destroy();
  }

  kill(): void {
    this.child.kill('SIGKILL');
    this.sock?.destroy();
  }
}
