/**
 * The QMP client and session against a real guest-less QEMU
 * (qemu-system-x86_64 -machine none -nodefaults -display none -qmp unix:PATH,server=on,wait=off).
 * Every QEMU started here is killed by pid in teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { IslandError } from '../../src/errors.js';
import { QmpClient } from '../../src/qmp/client.js';
import { QmpSession } from '../../src/qmp/session.js';
import type { QmpLogger } from '../../src/qmp/transport.js';
import { waitFor } from '../helpers/daemon.js';

process.on('unhandledRejection', (reason) => {
  t.fail(`unhandled rejection: ${String(reason)}`);
});

const QEMU = '/usr/bin/qemu-system-x86_64';

interface Tap {
  teardown(fn: () => unknown): void;
}

interface Qemu {
  child: ChildProcess;
  exited: Promise<void>;
  output(): string;
}

/** Start a guest-less QEMU serving QMP on `sock`; killed by pid in teardown. */
function startQemu(t: Tap, sock: string): Qemu {
  const child = spawn(QEMU, ['-machine', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      process.kill(child.pid, 'SIGKILL');
      await exited;
    }
  });
  return { child, exited, output: () => out };
}

async function killQemu(q: Qemu, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (q.child.pid !== undefined && q.child.exitCode === null && q.child.signalCode === null) process.kill(q.child.pid, signal);
  await q.exited;
}

async function tempDir(t: Tap): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'island-qmp-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function recordingLogger(): QmpLogger & { warns: string[]; debugs: string[] } {
  const warns: string[] = [];
  const debugs: string[] = [];
  return {
    warns,
    debugs,
    warn: (obj, msg) => warns.push(`${msg} ${JSON.stringify(obj)}`),
    debug: (obj, msg) => debugs.push(`${msg} ${JSON.stringify(obj)}`),
  };
}

/** A client on a fresh QEMU (connect retries while QEMU creates its socket). */
async function connected(t: Tap): Promise<{ client: QmpClient; qemu: Qemu; sock: string; log: ReturnType<typeof recordingLogger> }> {
  const sock = join(await tempDir(t), 'qmp.sock');
  const qemu = startQemu(t, sock);
  const log = recordingLogger();
  const client = await QmpClient.connect(sock, { retryConnect: true, logger: log });
  t.teardown(() => client.close());
  return { client, qemu, sock, log };
}

function codeAndReason(err: unknown): { code: unknown; reason: unknown } {
  const e = err as IslandError;
  return { code: e.code, reason: e.details?.['reason'] };
}

if (!existsSync(QEMU)) {
  t.plan(0, 'qemu-system-x86_64 is missing (scripts/install-deps.sh installs QEMU)');
} else {
  t.test('greeting and capabilities: the client is ready after connect', async (t) => {
    const { client } = await connected(t);
    t.ok(client.greeting, 'the greeting was read');
    t.ok((client.greeting?.version.major ?? 0) >= 7, `QEMU ${client.greeting?.version.major}.${client.greeting?.version.minor}`);
    t.ok(Array.isArray(client.greeting?.capabilities), 'capabilities are a list');
    const v = (await client.execute('query-version')) as { qemu: { major: number } };
    t.equal(v.qemu.major, client.greeting?.version.major, 'commands work after qmp_capabilities');
  });

  t.test('query-status, stop -> STOP and paused, cont -> RESUME and running', async (t) => {
    const { client } = await connected(t);
    t.same(await client.queryStatus(), { running: true, status: 'running' });
    const seen: string[] = [];
    client.on('event', (ev) => seen.push(ev.event));

    const stopped = client.waitForEvent('STOP');
    await client.stop();
    const stop = await stopped;
    t.equal(stop.event, 'STOP');
    t.ok(stop.timestamp.seconds > 0, 'events carry a timestamp');
    t.same(await client.queryStatus(), { running: false, status: 'paused' });
    await client.stop();
    t.same(await client.queryStatus(), { running: false, status: 'paused' }, 'a second stop is a no-op');

    const resumed = client.waitForEvent('RESUME');
    await client.cont();
    await resumed;
    t.same(await client.queryStatus(), { running: true, status: 'running' });
    t.same(seen, ['STOP', 'RESUME'], 'one STOP and one RESUME were delivered');
  });

  t.test('an unknown command fails with QMP_ERROR class CommandNotFound; the client stays usable', async (t) => {
    const { client } = await connected(t);
    const err = (await client.execute('no-such-command').catch((e: unknown) => e)) as IslandError;
    t.equal(err.code, 'QMP_ERROR');
    t.equal(err.details['class'], 'CommandNotFound');
    t.match(String(err.details['desc']), /no-such-command/);
    t.equal(err.details['command'], 'no-such-command');
    t.equal((await client.queryStatus()).running, true, 'still usable');
    const bad = (await client.execute('query-status', { bogus: 1 }).catch((e: unknown) => e)) as IslandError;
    t.equal(bad.code, 'QMP_ERROR', 'an argument error is QMP_ERROR too');
    t.equal(bad.details['class'], 'GenericError');
  });

  t.test('concurrent commands are matched by id, with events arriving in between', async (t) => {
    const { client } = await connected(t);
    const events: string[] = [];
    client.on('event', (ev) => events.push(ev.event));
    const kinds = ['query-status', 'query-version', 'query-name', 'no-such-command', 'stop', 'cont'] as const;
    const calls = Array.from({ length: 60 }, (_, i) => {
      const command = kinds[i % kinds.length] as string;
      return client.execute(command).then(
        (value) => ({ command, ok: true as const, value }),
        (err: unknown) => ({ command, ok: false as const, value: err }),
      );
    });
    t.equal(client.inFlight, 60, 'all sixty are in flight at once');
    const results = await Promise.all(calls);
    for (const r of results) {
      if (r.command === 'no-such-command') t.equal((r.value as IslandError).details?.['class'], 'CommandNotFound');
      else if (r.command === 'query-status') t.type((r.value as { running: unknown }).running, 'boolean');
      else if (r.command === 'query-version') t.ok((r.value as { qemu?: unknown }).qemu, 'query-version reply');
      else if (r.command === 'query-name') t.same(r.value, {}, 'query-name reply');
      else t.same(r.value, {}, `${r.command} reply`);
      if (r.command !== 'no-such-command') t.ok(r.ok, `${r.command} succeeded`);
    }
    t.equal(client.inFlight, 0);
    t.equal(events.filter((e) => e === 'STOP').length, 10, 'ten STOP events between the replies');
  });

  t.test('connect on demand: a session made before QEMU starts connects at its first command', async (t) => {
    const sock = join(await tempDir(t), 'late.sock');
    const session = new QmpSession(sock, { connectTimeoutMs: 10_000, timeoutMs: 10_000 });
    t.teardown(() => session.close());
    t.equal(session.connected, false, 'nothing happens at construction');
    const connects: unknown[] = [];
    session.on('connect', (g) => connects.push(g));
    const status = session.queryStatus(); // issued before QEMU exists
    startQemu(t, sock);
    t.same(await status, { running: true, status: 'running' }, 'the command waited for QEMU to listen');
    t.equal(session.connected, true);
    t.equal(connects.length, 1, 'one connect');
  });

  t.test('a session with nothing listening fails with QMP_ERROR unreachable within its bound', async (t) => {
    const sock = join(await tempDir(t), 'none.sock');
    const session = new QmpSession(sock, { connectTimeoutMs: 300 });
    t.teardown(() => session.close());
    const start = Date.now();
    const err = await session.queryStatus({ timeoutMs: 5_000 }).catch((e: unknown) => e);
    const took = Date.now() - start;
    t.same(codeAndReason(err), { code: 'QMP_ERROR', reason: 'unreachable' });
    t.equal((err as IslandError).details['errno'], 'ENOENT');
    t.ok(took >= 250 && took < 2_000, `gave up after the connect bound (${took} ms)`);
    const short = await session.queryStatus({ timeoutMs: 100 }).catch((e: unknown) => e);
    t.ok(['QMP_ERROR', 'QMP_TIMEOUT'].includes(String((short as IslandError).code)), 'a shorter command bound wins');
  });

  t.test('a session reconnects after QEMU restarts on the same socket path', async (t) => {
    const sock = join(await tempDir(t), 'restart.sock');
    const session = new QmpSession(sock, { connectTimeoutMs: 10_000 });
    t.teardown(() => session.close());
    const disconnects: IslandError[] = [];
    let connects = 0;
    session.on('disconnect', (e) => disconnects.push(e));
    session.on('connect', () => connects++);

    const first = startQemu(t, sock);
    await session.stop();
    t.same(await session.queryStatus(), { running: false, status: 'paused' }, 'first QEMU paused');
    await killQemu(first);
    await waitFor('the session to see the disconnect', () => disconnects.length === 1);
    t.equal(session.connected, false);
    t.equal(disconnects[0]?.code, 'QMP_ERROR');

    startQemu(t, sock);
    t.same(await session.queryStatus(), { running: true, status: 'running' }, 'the next command reached the new QEMU');
    t.equal(connects, 2, 'connected twice');

    // A clean quit, then a third QEMU: the same again.
    const shutdown = session.waitForEvent('SHUTDOWN');
    await session.quit();
    t.same((await shutdown).data, { guest: false, reason: 'host-qmp-quit' });
    await waitFor('the session to see the quit', () => disconnects.length === 2);
    startQemu(t, sock);
    t.equal((await session.queryStatus()).running, true);
    t.equal(connects, 3);
  });

  t.test('quit: SHUTDOWN event, and commands in flight end cleanly when the socket closes', async (t) => {
    const { client, qemu } = await connected(t);
    const shutdowns: unknown[] = [];
    client.on('shutdown', (info) => shutdowns.push(info));
    const closed = new Promise<IslandError>((resolve) => client.once('close', resolve));
    const shutdown = client.waitForEvent('SHUTDOWN');
    const quit = client.quit();
    // Sent behind quit: QEMU may answer them or close first. Either way, no hang.
    const after = Array.from({ length: 5 }, () => client.queryStatus().then(() => 'answered', (e: unknown) => e));
    await quit;
    t.same((await shutdown).data, { guest: false, reason: 'host-qmp-quit' });
    t.same(shutdowns, [{ guest: false, reason: 'host-qmp-quit' }], 'the typed shutdown event');
    for (const r of await Promise.all(after)) {
      if (r === 'answered') t.pass('answered before QEMU closed');
      else t.same(codeAndReason(r), { code: 'QMP_ERROR', reason: 'closed' }, 'failed with connection closed');
    }
    t.equal((await closed).code, 'QMP_ERROR', 'close event');
    t.equal(client.closed, true);
    await qemu.exited;
    const late = await client.queryStatus().catch((e: unknown) => e);
    t.same(codeAndReason(late), { code: 'QMP_ERROR', reason: 'closed' }, 'a command after close fails at once');
    t.equal((late as IslandError).details['sent'], false, 'and says it was never sent');
    await client.close();
    await client.close();
    t.pass('close twice');
  });

  t.test('a frozen QEMU: timeout, abort, late replies, then pending commands fail when it dies', async (t) => {
    const { client, qemu, log } = await connected(t);
    const pid = qemu.child.pid as number;
    process.kill(pid, 'SIGSTOP');
    const start = Date.now();
    const timedOut = await client.queryStatus({ timeoutMs: 200 }).catch((e: unknown) => e);
    const took = Date.now() - start;
    t.equal((timedOut as IslandError).code, 'QMP_TIMEOUT');
    t.ok(took >= 190 && took < 1_500, `timed out within the bound (${took} ms)`);

    const ac = new AbortController();
    const aborted = client.execute('query-name', undefined, { signal: ac.signal }).catch((e: unknown) => e);
    ac.abort(new Error('operator cancelled'));
    t.equal(((await aborted) as IslandError).code, 'ABORTED');
    const pre = await client.execute('query-name', undefined, { signal: ac.signal }).catch((e: unknown) => e);
    t.equal((pre as IslandError).code, 'ABORTED', 'an already aborted signal fails before sending');
    t.equal(client.inFlight, 0);

    process.kill(pid, 'SIGCONT');
    t.same(await client.queryStatus(), { running: true, status: 'running' }, 'usable again after the timeout');
    await waitFor('late replies to arrive', () => log.debugs.filter((d) => /late reply/.test(d)).length === 2, 5_000);
    t.same(log.warns, [], 'late replies to abandoned commands are not warnings');

    process.kill(pid, 'SIGSTOP');
    const pending = [client.queryStatus({ timeoutMs: 10_000 }), client.stop({ timeoutMs: 10_000 })].map((p) => p.catch((e: unknown) => e));
    await killQemu(qemu);
    for (const e of await Promise.all(pending)) {
      t.same(codeAndReason(e), { code: 'QMP_ERROR', reason: 'closed' }, `pending: ${(e as Error).message}`);
      t.equal((e as IslandError).details['sent'], true);
    }
    t.equal(client.closed, true);
  });
}
