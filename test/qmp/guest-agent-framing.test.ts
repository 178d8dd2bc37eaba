/**
 * Protocol conformance of the guest-agent client's FRAMING, against a fake agent: a unix
 * socket server in this test that speaks the qemu-ga wire protocol byte for byte (0xFF
 * sentinel, guest-sync-delimited, JSON lines without ids). It checks what island sends and
 * how it reads; it is not a substitute for a real guest agent in a real guest.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { IslandError } from '../../src/errors.js';
import { GuestAgent } from '../../src/qmp/guest-agent.js';
import type { QmpLogger } from '../../src/qmp/transport.js';
import { waitFor } from '../helpers/daemon.js';

process.on('unhandledRejection', (reason) => {
  t.fail(`unhandled rejection: ${String(reason)}`);
});

interface Tap {
  teardown(fn: () => unknown): void;
}

const SENTINEL = 0xff;

interface Request {
  execute: string;
  arguments?: { id?: number };
  /** The request was preceded by a 0xFF byte (parser reset). */
  afterSentinel: boolean;
}

/** One connection as the fake agent sees it: it parses like qemu-ga (0xFF resets the parser). */
class AgentConn {
  readonly requests: Request[] = [];
  private buf = Buffer.alloc(0);
  private sawSentinel = false;

  constructor(readonly sock: Socket, private readonly onRequest: (req: Request, conn: AgentConn) => void) {
    sock.on('error', () => {});
    sock.on('data', (d: Buffer) => this.onData(d));
  }

  private onData(d: Buffer): void {
    for (const byte of d) {
      if (byte === SENTINEL) {
        this.buf = Buffer.alloc(0);
        this.sawSentinel = true;
      } else if (byte === 0x0a) {
        const req = { ...(JSON.parse(this.buf.toString('utf8')) as Request), afterSentinel: this.sawSentinel };
        this.buf = Buffer.alloc(0);
        this.sawSentinel = false;
        this.requests.push(req);
        this.onRequest(req, this);
      } else {
        this.buf = Buffer.concat([this.buf, Buffer.of(byte)]);
      }
    }
  }

  send(...parts: (string | number[])[]): void {
    this.sock.write(Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p)))));
  }

  /** The agent's answer to guest-sync-delimited: 0xFF, then {"return": id}. */
  answerSync(req: Request): void {
    this.send([SENTINEL], `${JSON.stringify({ return: req.arguments?.id })}\n`);
  }
}

async function fakeAgent(t: Tap, onRequest: (req: Request, conn: AgentConn) => void, onConnect?: (conn: AgentConn) => void): Promise<{ path: string; conns: AgentConn[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'island-qga-'));
  const path = join(dir, 'qga.sock');
  const conns: AgentConn[] = [];
  const server = createServer((sock) => {
    const c = new AgentConn(sock, onRequest);
    conns.push(c);
    onConnect?.(c);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.teardown(async () => {
    for (const c of conns) c.sock.destroy();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });
  return { path, conns };
}

/** A well-behaved agent: answers syncs and the fsfreeze commands. */
function wellBehaved(state = { frozen: false }): (req: Request, conn: AgentConn) => void {
  return (req, conn) => {
    if (req.execute === 'guest-sync-delimited') conn.answerSync(req);
    else if (req.execute === 'guest-fsfreeze-status') conn.send(`${JSON.stringify({ return: state.frozen ? 'frozen' : 'thawed' })}\n`);
    else if (req.execute === 'guest-fsfreeze-freeze') {
      if (state.frozen) conn.send('{"error": {"class": "GenericError", "desc": "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state"}}\n');
      else {
        state.frozen = true;
        conn.send('{"return": 3}\n');
      }
    } else if (req.execute === 'guest-fsfreeze-thaw') {
      state.frozen = false;
      conn.send('{"return": 3}\n');
    } else if (req.execute === 'guest-ping') conn.send('{"return": {}}\n');
    else conn.send(`${JSON.stringify({ error: { class: 'CommandNotFound', desc: `The command ${req.execute} has not been found` } })}\n`);
  };
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

function syncs(conn: AgentConn | undefined): Request[] {
  return (conn?.requests ?? []).filter((r) => r.execute === 'guest-sync-delimited');
}

t.test('conformance: 0xFF + guest-sync-delimited with a random id first; stale bytes before the sentinel are dropped', async (t) => {
  const { path, conns } = await fakeAgent(t, (req, conn) => {
    if (req.execute === 'guest-sync-delimited') {
      // Leftovers of an earlier client, then a stale sync answer, then ours.
      conn.send('{"return": "stale"}\n{"retu', [SENTINEL], '{"return": 1}\n', [SENTINEL], `{"return": ${req.arguments?.id}}\n`);
    } else wellBehaved()(req, conn);
  }, (conn) => conn.send('{"return": 99}\n')); // unsolicited bytes at connect
  const log = recordingLogger();
  const qga = new GuestAgent(path, { logger: log });
  t.teardown(() => qga.close());
  t.equal(await qga.fsfreezeStatus(), 'thawed');
  t.equal(await qga.fsfreezeStatus(), 'thawed', 'a second command');
  const conn = conns[0];
  const reqs = conn?.requests ?? [];
  t.same(reqs.map((r) => r.execute), ['guest-sync-delimited', 'guest-fsfreeze-status', 'guest-fsfreeze-status'], 'one sync per connection, before the first command');
  const sync = reqs[0] as Request;
  t.equal(sync.afterSentinel, true, 'the sync request is preceded by 0xFF');
  t.ok(Number.isSafeInteger(sync.arguments?.id) && (sync.arguments?.id ?? 0) > 0 && (sync.arguments?.id ?? 0) < 2 ** 31, 'a positive 31-bit id');
  t.equal(reqs[1]?.afterSentinel, false, 'ordinary commands carry no sentinel');
  t.notOk(Object.hasOwn(reqs[1] ?? {}, 'id'), 'commands carry no id');
  t.same(log.warns, [], 'stale data while syncing is expected, not a warning');
});

t.test('conformance: fsfreeze freeze, status, thaw and an error reply', async (t) => {
  const { path, conns } = await fakeAgent(t, wellBehaved());
  const qga = new GuestAgent(path);
  t.teardown(() => qga.close());
  t.equal(await qga.fsfreezeFreeze(), 3, 'frozen filesystem count');
  t.equal(await qga.fsfreezeStatus(), 'frozen');
  const err = await failure(qga.fsfreezeFreeze());
  t.same([err.code, err.details['class']], ['QMP_ERROR', 'GenericError'], 'an agent error reply');
  t.match(String(err.details['desc']), /frozen state/);
  t.equal(err.details['agent'], true);
  t.equal(await qga.fsfreezeThaw(), 3);
  t.equal(await qga.fsfreezeStatus(), 'thawed');
  const unknown = await failure(qga.execute('guest-nope'));
  t.equal(unknown.details['class'], 'CommandNotFound');
  t.equal(syncs(conns[0]).length, 1, 'error replies keep the stream in sync');
});

t.test('conformance: a timeout forces a resync and the late reply is never taken for the next one', async (t) => {
  let lateConn: AgentConn | undefined;
  const state = { frozen: false };
  const { path, conns } = await fakeAgent(t, (req, conn) => {
    if (req.execute === 'guest-fsfreeze-freeze' && !lateConn) {
      lateConn = conn; // answer later
      state.frozen = true;
      return;
    }
    wellBehaved(state)(req, conn);
  });
  const qga = new GuestAgent(path, { freezeTimeoutMs: 200 });
  t.teardown(() => qga.close());
  const start = Date.now();
  const err = await failure(qga.fsfreezeFreeze());
  t.equal(err.code, 'QMP_TIMEOUT');
  t.ok(Date.now() - start < 1_500, 'within the bound');
  lateConn?.send('{"return": 2}\n'); // the late answer to the freeze
  t.equal(await qga.fsfreezeStatus(), 'frozen', 'the next call got its own reply, not the late one');
  const all = syncs(conns[0]);
  t.equal(all.length, 2, 'a second sync after the timeout');
  t.not(all[0]?.arguments?.id, all[1]?.arguments?.id, 'with a new id');
  t.equal(all[1]?.afterSentinel, true);
});

t.test('conformance: malformed and overlong replies fail the command, then the client resyncs', async (t) => {
  const replies = ['{"foo": 1}\n', 'not json\n', '{"return": "x"}\n', `{"return": "${'y'.repeat(5_000)}"}\n`, [SENTINEL]];
  let n = 0;
  const { path, conns } = await fakeAgent(t, (req, conn) => {
    if (req.execute === 'guest-fsfreeze-thaw') {
      const r = replies[n++] as string | number[];
      conn.send(r);
      if (Array.isArray(r)) conn.send('{"return": 1}\n');
    } else wellBehaved()(req, conn);
  });
  const qga = new GuestAgent(path, { maxLineBytes: 4096, logger: recordingLogger() });
  t.teardown(() => qga.close());
  for (const what of ['wrong shape', 'not JSON', 'wrong result type', 'overlong line', 'a sentinel instead of a reply']) {
    const err = await failure(qga.fsfreezeThaw());
    t.equal(err.code, 'QMP_ERROR', `${what}: ${err.message}`);
    t.equal(await qga.fsfreezeStatus(), 'thawed', `${what}: the next call works`);
  }
  t.equal(syncs(conns[0]).length, 1 + replies.length, 'a resync after each bad reply');
});

t.test('conformance: calls are serialised, one request outstanding at a time', async (t) => {
  let outstanding = 0;
  let most = 0;
  const { path } = await fakeAgent(t, (req, conn) => {
    outstanding++;
    most = Math.max(most, outstanding);
    setTimeout(() => {
      outstanding--;
      wellBehaved()(req, conn);
    }, 10);
  });
  const qga = new GuestAgent(path);
  t.teardown(() => qga.close());
  const results = await Promise.all([qga.fsfreezeStatus(), qga.execute('guest-ping'), qga.fsfreezeThaw(), qga.fsfreezeStatus()]);
  t.same(results, ['thawed', {}, 3, 'thawed'], 'each call got its own reply');
  t.equal(most, 1, 'never two requests at once');
});

t.test('no agent answering: the sync times out; abort; close is prompt and idempotent', async (t) => {
  const { path, conns } = await fakeAgent(t, () => undefined);
  const qga = new GuestAgent(path, { timeoutMs: 200 });
  const err = await failure(qga.fsfreezeStatus());
  t.equal(err.code, 'QMP_TIMEOUT');
  const ac = new AbortController();
  const aborted = failure(qga.fsfreezeStatus({ signal: ac.signal, timeoutMs: 10_000 }));
  const queued = failure(qga.fsfreezeStatus({ timeoutMs: 10_000 }));
  await waitFor('the second sync', () => syncs(conns[0]).length === 2);
  ac.abort();
  t.equal((await aborted).code, 'ABORTED');
  await waitFor('the third sync', () => syncs(conns[0]).length === 3);
  await qga.close();
  await qga.close();
  const closed = await queued;
  t.same([closed.code, closed.details['reason']], ['QMP_ERROR', 'closed'], 'a call in flight fails on close');
  const after = await failure(qga.fsfreezeStatus());
  t.same([after.code, after.details['reason']], ['QMP_ERROR', 'closed']);
});

t.test('the connection dropping fails the call; the next call reconnects and resyncs', async (t) => {
  let dropped = false;
  const { path, conns } = await fakeAgent(t, (req, conn) => {
    if (req.execute === 'guest-fsfreeze-freeze' && !dropped) {
      dropped = true;
      conn.sock.destroy();
      return;
    }
    wellBehaved()(req, conn);
  });
  const qga = new GuestAgent(path);
  t.teardown(() => qga.close());
  const err = await failure(qga.fsfreezeFreeze());
  t.same([err.code, err.details['reason']], ['QMP_ERROR', 'closed']);
  t.equal(await qga.fsfreezeFreeze(), 3);
  t.equal(conns.length, 2, 'a new connection');
  t.equal(syncs(conns[1]).length, 1, 'synced on the new connection');

  const none = new GuestAgent(join(tmpdir(), 'island-no-such-agent.sock'), { timeoutMs: 500 });
  const unreachable = await failure(none.fsfreezeStatus());
  t.same([unreachable.code, unreachable.details['reason']], ['QMP_ERROR', 'unreachable'], 'no socket: QMP_ERROR unreachable');
  await none.close();
});
