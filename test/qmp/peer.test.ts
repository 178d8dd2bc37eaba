/**
 * The QMP client against fake peers: unix socket servers in this test that speak (or break)
 * the protocol on purpose. They stand in for a QEMU that hangs or misbehaves, which a real
 * QEMU cannot be made to do on demand; the normal protocol is tested against a real QEMU in
 * client.test.ts. Every bad input must end as a clear error or a warning, never a crash or an
 * unhandled rejection.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { IslandError } from '../../src/errors.js';
import { MAX_BAD_MESSAGES, QmpClient } from '../../src/qmp/client.js';
import { QmpSession } from '../../src/qmp/session.js';
import type { QmpLogger } from '../../src/qmp/transport.js';
import { Rng } from '../../src/util/random.js';
import { waitFor } from '../helpers/daemon.js';

process.on('unhandledRejection', (reason) => {
  t.fail(`unhandled rejection: ${String(reason)}`);
});

interface Tap {
  teardown(fn: () => unknown): void;
}

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}';
const TS = '"timestamp": {"seconds": 1700000000, "microseconds": 1}';

/** One accepted connection, as the fake peer sees it. */
class Peer {
  private buf = '';
  private readonly lines: string[] = [];
  private waiting: ((line: string) => void) | undefined;
  readonly closed: Promise<void>;

  constructor(readonly sock: Socket) {
    this.closed = new Promise((resolve) => sock.once('close', () => resolve()));
    sock.on('error', () => {});
    sock.on('data', (d: Buffer) => {
      this.buf += d.toString('latin1');
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const w = this.waiting;
        this.waiting = undefined;
        if (w) w(line);
        else this.lines.push(line);
      }
    });
  }

  /** The next line the client sent. */
  nextLine(): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve) => (this.waiting = resolve));
  }

  /** The next command the client sent, parsed. */
  async nextCommand(): Promise<{ execute: string; id: number; arguments?: unknown }> {
    return JSON.parse(await this.nextLine()) as { execute: string; id: number };
  }

  send(data: string | Buffer): void {
    this.sock.write(typeof data === 'string' ? `${data}\r\n` : data);
  }

  /** Greeting, then the reply to qmp_capabilities. */
  async handshake(): Promise<void> {
    this.send(GREETING);
    const cmd = await this.nextCommand();
    this.send(JSON.stringify({ return: {}, id: cmd.id }));
  }
}

/** A unix socket server whose every connection is handed to `onPeer`; closed in teardown. */
async function fakeServer(t: Tap, onPeer: (peer: Peer) => unknown): Promise<{ path: string; peers: Peer[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'island-qmp-peer-'));
  const path = join(dir, 'qmp.sock');
  const peers: Peer[] = [];
  const server = createServer((sock) => {
    const p = new Peer(sock);
    peers.push(p);
    void Promise.resolve(onPeer(p)).catch(() => undefined);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.teardown(async () => {
    for (const p of peers) p.sock.destroy();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });
  return { path, peers };
}

function recordingLogger(): QmpLogger & { warns: string[]; debugs: string[] } {
  const warns: string[] = [];
  const debugs: string[] = [];
  return { warns, debugs, warn: (o, m) => warns.push(`${m} ${JSON.stringify(o)}`), debug: (o, m) => debugs.push(`${m} ${JSON.stringify(o)}`) };
}

async function failure(p: Promise<unknown>): Promise<IslandError> {
  return p.then(
    () => {
      throw new Error('expected a failure');
    },
    (e: unknown) => e as IslandError,
  );
}

t.test('timeout when the peer never answers: QMP_TIMEOUT within the bound, client still usable and closable', async (t) => {
  const { path, peers } = await fakeServer(t, (p) => p.handshake());
  const log = recordingLogger();
  const client = await QmpClient.connect(path, { timeoutMs: 250, logger: log });
  t.teardown(() => client.close());
  const start = Date.now();
  const err = await failure(client.queryStatus());
  const took = Date.now() - start;
  t.equal(err.code, 'QMP_TIMEOUT', 'the default bound applies');
  t.equal(err.details['command'], 'query-status');
  t.ok(took >= 240 && took < 1_500, `within the bound (${took} ms)`);
  t.equal(client.closed, false, 'a timeout does not close the connection');

  const peer = peers[0] as Peer;
  const sent = await peer.nextCommand();
  t.equal(sent.execute, 'query-status');
  const second = client.execute('query-name', undefined, { timeoutMs: 2_000 });
  const cmd = await peer.nextCommand();
  peer.send(JSON.stringify({ return: { status: 'running', running: true }, id: sent.id })); // late
  peer.send(JSON.stringify({ return: { name: 'x' }, id: cmd.id }));
  t.same(await second, { name: 'x' }, 'the client works after a timeout; the late reply went to nobody');
  t.same(log.warns, [], 'a late reply is not a warning');
  t.match(log.debugs.join('\n'), /late reply/);

  const hanging = failure(client.execute('query-status', undefined, { timeoutMs: 60_000 }));
  const closeStart = Date.now();
  await client.close();
  await client.close();
  t.ok(Date.now() - closeStart < 1_000, 'close does not wait for hanging commands');
  const e = await hanging;
  t.same([e.code, e.details['reason']], ['QMP_ERROR', 'closed'], 'the hanging command fails on close');
  await peer.closed;
  t.pass('the peer saw the connection close');
});

t.test('a peer that never greets: QMP_TIMEOUT at the connect bound; abort ends a connect early', async (t) => {
  const { path, peers } = await fakeServer(t, () => undefined);
  const start = Date.now();
  const err = await failure(QmpClient.connect(path, { connectTimeoutMs: 300 }));
  t.same([err.code, err.details['reason']], ['QMP_TIMEOUT', 'greeting']);
  t.ok(Date.now() - start < 1_500, 'within the bound');
  await peers[0]?.closed;
  t.pass('the half-open connection was closed');

  const ac = new AbortController();
  const pending = failure(QmpClient.connect(path, { connectTimeoutMs: 10_000, signal: ac.signal }));
  await waitFor('the second connection', () => peers.length === 2);
  ac.abort();
  t.equal((await pending).code, 'ABORTED');
  await peers[1]?.closed;
});

t.test('a greeting that is not QMP is a protocol error and closes the connection', async (t) => {
  const bad = ['{"hello": 1}', 'not json at all', '{"QMP": 5}', '{"QMP": {"version": {}, "capabilities": []}}', '[1, 2, 3]', '{"return": {}}', '{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": "oob"}}'];
  let which = 0;
  const { path, peers } = await fakeServer(t, (p) => p.send(bad[which++] as string));
  for (const line of bad) {
    const log = recordingLogger();
    const err = await failure(QmpClient.connect(path, { logger: log }));
    t.same([err.code, err.details['reason']], ['QMP_ERROR', 'protocol'], `rejected: ${line}`);
    t.match(err.message, /QMP greeting/);
    await peers[peers.length - 1]?.closed;
  }
  t.equal(peers.length, bad.length);
});

t.test('garbage lines, wrong-shaped JSON, unknown ids and bad events are logged and dropped', async (t) => {
  const { path, peers } = await fakeServer(t, (p) => p.handshake());
  const log = recordingLogger();
  const client = await QmpClient.connect(path, { logger: log });
  t.teardown(() => client.close());
  const events: string[] = [];
  client.on('event', (ev) => events.push(ev.event));
  const peer = peers[0] as Peer;
  const reply = client.execute('query-name');
  const { id } = await peer.nextCommand();
  const junk: (string | Buffer)[] = [
    'garbage',
    '{"unterminated": ',
    '42',
    '"a string"',
    'null',
    '[{"return": {}, "id": 2}]',
    '{"foo": "bar"}',
    '{"return": {}}', // no id
    '{"return": {}, "id": 999}', // unknown id
    `{"return": {}, "id": "${id}"}`, // right number, wrong type
    '{"return": {}, "id": {"nested": true}}',
    '{"error": {"class": "GenericError", "desc": "x"}}', // error without id
    `{"event": "STOP"}`, // no timestamp
    `{"event": 5, ${TS}}`,
    `{"event": "STOP", "data": [1], ${TS}}`,
    GREETING, // a second greeting
    `${'['.repeat(100_000)}${']'.repeat(100_000)}`,
    Buffer.from([0xff, 0xfe, 0x7b, 0x0d, 0x0a]), // not UTF-8
  ];
  for (const j of junk) peer.send(j);
  peer.send(`{"event": "RESUME", ${TS}}`);
  peer.send(JSON.stringify({ return: { name: 'ok' }, id }));
  t.same(await reply, { name: 'ok' }, 'the real reply still arrives');
  t.same(events, ['RESUME'], 'only the well-formed event is delivered');
  t.equal(log.warns.length, junk.length, 'one warning per bad message');
  t.match(log.warns.join('\n'), /unknown id/);
  t.equal(client.closed, false, 'still connected');
  t.ok(log.warns.every((w) => w.length < 1_000), 'warnings quote only an excerpt of the line');
});

t.test('a malformed reply to a pending command fails that command with QMP_ERROR', async (t) => {
  const { path, peers } = await fakeServer(t, (p) => p.handshake());
  const client = await QmpClient.connect(path, { logger: recordingLogger() });
  t.teardown(() => client.close());
  const peer = peers[0] as Peer;
  const a = failure(client.execute('query-name'));
  const b = failure(client.queryStatus());
  const c = failure(client.execute('query-version'));
  const ids = [(await peer.nextCommand()).id, (await peer.nextCommand()).id, (await peer.nextCommand()).id];
  peer.send(JSON.stringify({ error: 'boom', id: ids[0] }));
  peer.send(JSON.stringify({ return: { running: 'yes' }, id: ids[1] }));
  peer.send(JSON.stringify({ error: { class: 'DeviceNotFound', desc: `Device 'd9' not found ${'x'.repeat(5_000)}` }, id: ids[2] }));
  const ea = await a;
  t.same([ea.code, ea.details['reason']], ['QMP_ERROR', 'malformed'], 'an error member of the wrong shape');
  const eb = await b;
  t.same([eb.code, eb.details['reason']], ['QMP_ERROR', 'malformed'], 'a query-status result of the wrong shape');
  const ec = await c;
  t.same([ec.code, ec.details['class']], ['QMP_ERROR', 'DeviceNotFound'], 'an error reply keeps its class');
  t.ok(String(ec.details['desc']).length < 300, 'and an excerpt of its desc');
});

t.test('an overlong line is a protocol error that closes the connection', async (t) => {
  const { path, peers } = await fakeServer(t, (p) => p.handshake());
  const log = recordingLogger();
  const client = await QmpClient.connect(path, { logger: log, maxLineBytes: 64 * 1024 });
  const closed = new Promise<IslandError>((resolve) => client.once('close', resolve));
  const peer = peers[0] as Peer;

  const fits = client.execute('query-name');
  const first = await peer.nextCommand();
  peer.send(JSON.stringify({ return: { name: 'y'.repeat(60 * 1024) }, id: first.id }));
  t.equal(((await fits) as { name: string }).name.length, 60 * 1024, 'a line under the bound is accepted');

  const pending = failure(client.execute('query-name'));
  await peer.nextCommand();
  for (let i = 0; i < 4; i++) peer.send(Buffer.alloc(25 * 1024, 0x78)); // 100 KiB, no newline
  const err = await pending;
  t.same([err.code, err.details['reason']], ['QMP_ERROR', 'closed']);
  t.match(err.message, /longer than 65536 bytes/);
  const why = await closed;
  t.equal(why.details['reason'], 'protocol', 'the close event says protocol error');
  await peer.closed;
  t.equal(client.closed, true);
  await client.close();
});

t.test('the default bound is 1 MiB per line', async (t) => {
  const { path, peers } = await fakeServer(t, (p) => p.handshake());
  const client = await QmpClient.connect(path, { logger: recordingLogger() });
  const pending = failure(client.execute('query-name'));
  const peer = peers[0] as Peer;
  const { id } = await peer.nextCommand();
  peer.send(JSON.stringify({ return: { name: 'z'.repeat(1024 * 1024 + 1) }, id }));
  const err = await pending;
  t.match(err.message, /longer than 1048576 bytes/);
  await client.close();
});

t.test(`more than ${MAX_BAD_MESSAGES} malformed messages close the connection`, async (t) => {
  const { path, peers } = await fakeServer(t, (p) => p.handshake());
  const log = recordingLogger();
  const client = await QmpClient.connect(path, { logger: log });
  const closed = new Promise<IslandError>((resolve) => client.once('close', resolve));
  for (let i = 0; i <= MAX_BAD_MESSAGES; i++) peers[0]?.send(`junk ${i}`);
  const why = await closed;
  t.same([why.code, why.details['reason']], ['QMP_ERROR', 'protocol']);
  t.match(why.message, /malformed messages/);
  t.equal(log.warns.length, MAX_BAD_MESSAGES + 1, 'each was logged, then the close');
  await client.close();
});

t.test('a throwing event listener is logged and does not break the client', async (t) => {
  const { path, peers } = await fakeServer(t, (p) => p.handshake());
  const log = recordingLogger();
  const client = await QmpClient.connect(path, { logger: log });
  t.teardown(() => client.close());
  client.on('event', () => {
    throw new Error('listener bug');
  });
  const peer = peers[0] as Peer;
  const stopped = client.waitForEvent('STOP');
  const cmd = client.stop();
  const { id } = await peer.nextCommand();
  peer.send(`{"event": "STOP", ${TS}}`);
  peer.send(JSON.stringify({ return: {}, id }));
  await cmd;
  await stopped;
  t.match(log.warns.join('\n'), /listener threw/);
  t.equal(client.closed, false);
});

t.test('the peer closing mid-command fails it; a session reconnects at the next command', async (t) => {
  let n = 0;
  const { path, peers } = await fakeServer(t, async (p) => {
    await p.handshake();
    const first = ++n === 1;
    for (;;) {
      const cmd = await p.nextCommand();
      if (first) {
        p.sock.destroy(); // hang up instead of answering
        return;
      }
      p.send(JSON.stringify({ return: { running: true, status: 'running' }, id: cmd.id }));
    }
  });
  const session = new QmpSession(path, { logger: recordingLogger() });
  t.teardown(() => session.close());
  const disconnected = new Promise<IslandError>((resolve) => session.once('disconnect', resolve));
  const err = await failure(session.queryStatus());
  t.same([err.code, err.details['reason'], err.details['sent']], ['QMP_ERROR', 'closed', true]);
  t.equal((await disconnected).code, 'QMP_ERROR');
  t.same(await session.queryStatus(), { running: true, status: 'running' }, 'the next command reconnected');
  t.equal(peers.length, 2);
  await session.close();
  await session.close();
  const after = await failure(session.queryStatus());
  t.same([after.code, after.details['reason']], ['QMP_ERROR', 'closed'], 'a closed session refuses commands');
});

t.test('random bytes from the peer never crash the client (fuzz, seeded)', async (t) => {
  const seeds = [1, 2, 3, 4, 5, 6, 7, 8];
  for (const seed of seeds) {
    const rng = new Rng(seed);
    const { path, peers } = await fakeServer(t, (p) => p.handshake());
    const client = await QmpClient.connect(path, { logger: recordingLogger(), maxLineBytes: 4096 });
    const pending = Array.from({ length: 4 }, () => client.execute('query-name', undefined, { timeoutMs: 300 }).then(() => 'ok', (e: unknown) => (e as IslandError).code));
    const peer = peers[0] as Peer;
    // Ids 2-5 are the pending commands (1 was qmp_capabilities).
    const pieces = [GREETING, `\n{"event": "X", ${TS}}\n`, '\n{"return": {}, "id": 2}\r\n', '\n{"return": {}, "id": 3}\n', '\n{"error": {"class": "C", "desc": "d"}, "id": 4}\n', '{"return": 5, "id": 5}', '\r\n', '\n', '{', '}', '"', '\xff'];
    for (let i = 0; i < 200; i++) {
      const piece = rng.chance(0.5) ? rng.pick(pieces) : rng.bytes(rng.int(64)).toString('latin1');
      peer.sock.write(Buffer.from(piece, 'latin1'));
    }
    const outcomes = await Promise.all(pending);
    t.ok(outcomes.every((o) => ['ok', 'QMP_ERROR', 'QMP_TIMEOUT'].includes(String(o))), `seed ${seed}: ${outcomes.join(',')}`);
    await client.close();
  }
});
