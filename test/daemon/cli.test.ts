/**
 * The CLI and control API end to end against real daemons; several daemons (hosts)
 * sharing one store; bad input of every kind, after which the daemon still serves.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { cli, cliJson, image, kill, log, makeHost, run, serve, socket, waitFor } from '../helpers/daemon.js';

function raw(path: string, text: string, halfClose = true): Promise<string> {
  return new Promise((resolve) => {
    const s = createConnection(path);
    let got = '';
    s.on('data', (d) => (got += d.toString()));
    s.on('error', () => resolve(got));
    s.on('close', () => resolve(got));
    s.write(text);
    if (halfClose) s.end();
  });
}

t.test('volume lifecycle through the CLI', async (t) => {
  const h = await makeHost(t, 'alpha');
  await serve(h);
  const created = await cliJson(h, 'volume', 'create', 'db1', '--size', '20G', '--cluster-size', '64K');
  t.equal(created.virtualSize, 20 * 2 ** 30, 'sizes accept suffixes');
  t.equal(created.status, 'available');
  const attached = await cliJson(h, 'attach', 'db1');
  t.equal(attached.status, 'attached');
  t.equal(attached.host, 'alpha', 'the catalog records the host');
  t.equal(attached.generation, 1, 'and the generation');
  t.equal((attached.local as { file: string }).file, image(h, 'db1'));
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', image(h, 'db1')])).stdout) as { 'virtual-size': number };
  t.equal(info['virtual-size'], 20 * 2 ** 30, 'the file on the mount is a qcow2 image of the volume size');
  const status = await cliJson(h, 'status');
  t.same((status.volumes as { name: string }[]).map((v) => v.name), ['db1']);
  const list = await cliJson(h, 'volume', 'list');
  t.same((list.volumes as { name: string }[]).map((v) => v.name), ['db1']);
  const busy = await cli(h, 'volume', 'delete', 'db1');
  t.equal(busy.code, 1);
  t.match(busy.stderr, /^island: BUSY: volume db1 is attached on alpha/, 'delete refused while attached, one line with a code');
  t.equal((await cliJson(h, 'detach', 'db1')).status, 'available');
  t.same(await cliJson(h, 'volume', 'delete', 'db1'), { deleted: 'db1' });
  t.equal((await cli(h, 'volume', 'show', 'db1')).code, 1, 'gone');
});

t.test('attached volumes come back after the daemon is killed', async (t) => {
  const h = await makeHost(t, 'beta');
  await serve(h);
  await cliJson(h, 'volume', 'create', 'survivor', '--size', '1G');
  await cliJson(h, 'attach', 'survivor');
  await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x77 0 1M', '-c', 'flush', image(h, 'survivor')]);
  await kill(h, 'SIGKILL');
  await serve(h);
  const r = await run('qemu-io', ['-c', 'read -P 0x77 0 1M', image(h, 'survivor')]);
  t.notMatch(r.stdout, /Pattern verification failed/, 'the volume is served again with its data');
  t.equal(((await cliJson(h, 'status')).volumes as unknown[]).length, 1);
});

t.test('detach is refused while the file is open, unless forced', async (t) => {
  const h = await makeHost(t, 'gamma');
  await serve(h);
  await cliJson(h, 'volume', 'create', 'busy', '--size', '1G');
  await cliJson(h, 'attach', 'busy');
  const holder = spawn('sh', ['-c', `exec 3<${image(h, 'busy')}; echo open; exec sleep 60`], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => holder.kill('SIGKILL'));
  await new Promise((r) => holder.stdout.once('data', r));
  const refused = await cli(h, 'detach', 'busy');
  t.match(refused.stderr, /BUSY: busy.qcow2 is open \(1 handle\)/);
  holder.kill('SIGKILL');
  await waitFor('the file to close', async () => (await cli(h, 'detach', 'busy')).code === 0);
  t.pass('detached once the file was closed');
});

t.test('several daemons share one store: attach elsewhere is refused and names the host', async (t) => {
  const store = await mkdtemp(join(tmpdir(), 'island-shared-store-'));
  t.teardown(() => rm(store, { recursive: true, force: true }));
  const a = await makeHost(t, 'host-a', store);
  const b = await makeHost(t, 'host-b', store);
  await serve(a);
  await serve(b);
  await cliJson(a, 'volume', 'create', 'shared', '--size', '2G');
  t.same(((await cliJson(b, 'volume', 'list')).volumes as { name: string }[]).map((v) => v.name), ['shared'], 'host b sees the volume host a created');
  await cliJson(a, 'attach', 'shared');
  const refused = await cli(b, 'attach', 'shared');
  t.match(refused.stderr, /ATTACHED_ELSEWHERE: volume shared is attached on host host-a/);
  await cliJson(a, 'detach', 'shared');
  const onB = await cliJson(b, 'attach', 'shared');
  t.equal(onB.host, 'host-b');
  t.equal(onB.generation, 2, 'a new generation for the new holder');
  const forced = await cliJson(a, 'attach', 'shared', '--force');
  t.equal(forced.generation, 3, 'a forced attach takes a newer generation (the old host must be fenced)');
  t.match(await log(a), /forced attach: the previous host must be fenced/);
});

t.test('bad input gets a clear error and the daemon keeps serving', async (t) => {
  const h = await makeHost(t, 'delta');
  await serve(h);
  await cliJson(h, 'volume', 'create', 'live', '--size', '1G');
  await cliJson(h, 'attach', 'live');
  await run('qemu-io', ['-c', 'write -P 0x42 0 64k', '-c', 'flush', image(h, 'live')]);
  const cases: [string[], RegExp][] = [
    [['volume', 'create', '../x', '--size', '1G'], /INVALID_ARGUMENT: invalid volume name/],
    [['volume', 'create', '', '--size', '1G'], /INVALID_ARGUMENT/],
    [['volume', 'create', 'x'.repeat(64), '--size', '1G'], /INVALID_ARGUMENT/],
    [['volume', 'create', 'caf\u00e9', '--size', '1G'], /INVALID_ARGUMENT/],
    [['volume', 'create', 'v', '--size', '0'], /INVALID_ARGUMENT: invalid volume size "0"/],
    [['volume', 'create', 'v', '--size', '-5G'], /INVALID_ARGUMENT/],
    [['volume', 'create', 'v', '--size=-5G'], /INVALID_ARGUMENT: invalid volume size/],
    [['volume', 'create', 'v', '--size', '99999999T'], /INVALID_ARGUMENT/],
    [['volume', 'create', 'v', '--size', '10X'], /INVALID_ARGUMENT/],
    [['volume', 'create', 'v', '--size', '1G', '--cluster-size', '3K'], /INVALID_ARGUMENT/],
    [['volume', 'create', 'v'], /INVALID_ARGUMENT: missing --size/],
    [['volume', 'create', 'live', '--size', '1G'], /ALREADY_EXISTS/],
    [['volume', 'show', 'nope'], /NOT_FOUND/],
    [['attach', 'nope'], /NOT_FOUND/],
    [['attach', 'live'], /BUSY: volume live is already attached on this host/],
    [['detach', 'nope'], /NOT_FOUND|INVALID_ARGUMENT/],
    [['volume', 'frobnicate'], /INVALID_ARGUMENT: unknown command/],
    [['attach', 'live', '--bogus'], /INVALID_ARGUMENT/],
  ];
  for (const [args, want] of cases) {
    const r = await cli(h, ...args);
    t.not(r.code, 0, `island ${args.join(' ')} fails`);
    t.match(r.stderr, want, `... with a clear error: ${r.stderr.trim()}`);
    t.equal(r.stderr.trim().split('\n').length, 1, '... in one line');
  }
  const j = await cli(h, 'volume', 'show', 'nope', '--json');
  t.equal((JSON.parse(j.stdout) as { error: { code: string } }).error.code, 'NOT_FOUND', '--json errors are JSON');
  const sock = socket(h);
  const replies = [
    await raw(sock, 'POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{not json'),
    await raw(sock, `POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: ${200_000}\r\n\r\n${'x'.repeat(200_000)}`),
    await raw(sock, 'POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n[1,2]\n'),
    await raw(sock, 'GET /v1/volumes/%ZZ HTTP/1.1\r\nHost: x\r\n\r\n'),
    await raw(sock, 'GARBAGE\r\n\r\n'),
    await raw(sock, 'POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"name":', true),
    await raw(sock, 'POST /v1/volumes/live/attach HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{"force":"yes"}'),
  ];
  t.match(replies[0], /400 Bad Request[\s\S]*INVALID_ARGUMENT/, 'malformed JSON: 400 with a code');
  t.match(replies[1], /413[\s\S]*TOO_LARGE/, 'oversized body: 413');
  t.match(replies[2], /400[\s\S]*must be a JSON object/, 'a JSON array: 400');
  t.match(replies[3], /400[\s\S]*malformed URL escape/, 'a bad escape in the path: 400');
  t.match(replies[4], /^(HTTP\/1.1 400|)/, 'garbage: a 400 or a closed connection');
  t.match(replies[6], /400[\s\S]*force must be true or false/, 'a wrongly typed field: 400');
  const r = await run('qemu-io', ['-c', 'read -P 0x42 0 64k', image(h, 'live')]);
  t.notMatch(r.stdout, /Pattern verification failed/, 'the attached volume is still served');
  t.ok(h.child && h.child.exitCode === null, 'the daemon is still running');
  t.equal(((await cliJson(h, 'status')).volumes as unknown[]).length, 1, 'and still answers');
});

t.test('the CLI says clearly when no daemon runs', async (t) => {
  const h = await makeHost(t, 'nobody');
  const r = await cli(h, 'status');
  t.equal(r.code, 1);
  t.match(r.stderr, /^island: DAEMON_UNREACHABLE: cannot reach the island daemon at .*island.sock/);
});

t.test('Prometheus metrics on a loopback port count FUSE and store requests', async (t) => {
  const h = await makeHost(t, 'metrics');
  const { createServer } = await import('node:net');
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  h.env = { ISLAND_METRICS_PORT: String(port) };
  await serve(h);
  await cliJson(h, 'volume', 'create', 'm', '--size', '1G');
  await cliJson(h, 'attach', 'm');
  await run('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'read 0 1M', image(h, 'm')]);
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  t.match(text, /island_fuse_requests_total\{op="write",result="ok"\} [1-9]/, 'FUSE writes counted');
  t.match(text, /island_fuse_bytes_total\{op="read"\} [1-9]/, 'FUSE read bytes counted');
  t.ok(Number(/island_fuse_bytes_total\{op="write"\} (\d+)/.exec(text)?.[1]) >= 2 ** 20, 'the bytes qemu-io wrote are counted');
  // The native server answers a volume on the native write path in C alone: its requests are
  // counted from the volume's counters, without latency observations (metrics.ts).
  const inC = process.env.ISLAND_FUSE !== 'fuse-native' && process.env.ISLAND_WRITE_PATH !== 'typescript';
  if (inC) t.match(text, /# TYPE island_fuse_request_seconds histogram/, 'the latency histogram is declared');
  else t.match(text, /island_fuse_request_seconds_bucket/, 'FUSE latency histogram');
  t.match(text, /island_store_requests_total\{op="put"\} [1-9]/, 'store requests counted');
});

t.test('credentials inside an endpoint URL never reach the daemon log or an error', async (t) => {
  const KEY = 'AKIDLEAKCHECK';
  const SECRET = 'S3CR3TLEAKCHECK';
  const h = await makeHost(t, 'leak');
  const { writeFile } = await import('node:fs/promises');
  h.configFile = join(h.dataDir, 'island.json');
  const region = { type: 's3', endpoint: `http://${KEY}:${SECRET}@127.0.0.1:9`, region: 'us-east-1', bucket: 'island', accessKeyId: 'id', secretAccessKey: 'key' };
  await writeFile(h.configFile, JSON.stringify({ region: 'remote', regions: { remote: region } }));
  // Refused at startup (the fix), or serving with the endpoint logged (the defect): either
  // way, the log is what an operator reads.
  await serve(h).catch(() => undefined);
  await kill(h, 'SIGKILL');
  const text = await log(h);
  t.match(text, /serving|INVALID_CONFIG/, 'the daemon served or refused its configuration');
  t.notMatch(text, KEY, 'the key is not in the daemon log');
  t.notMatch(text, SECRET, 'nor the secret');
  for (const args of [['status'], ['fsck'], ['volume', 'list', '--json']]) {
    const r = await cli(h, ...args);
    t.not(r.code, 0, `island ${args.join(' ')} refuses the configuration`);
    t.notMatch(r.stdout + r.stderr, KEY, '... without the key in the error');
    t.notMatch(r.stdout + r.stderr, SECRET, '... or the secret');
  }
});

t.test('a control client that goes away mid-request is logged at info, without a stack', async (t) => {
  const h = await makeHost(t, 'gone');
  await serve(h);
  // One client resets the connection in the middle of its body, one half-closes early.
  const reset = createConnection(socket(h));
  reset.on('error', () => undefined);
  let answered = '';
  reset.on('data', (d) => (answered += d.toString()));
  reset.write('POST /v1/volumes HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n');
  await waitFor('the daemon to take the request', () => answered.includes('100 Continue'));
  reset.write('{"name":');
  reset.destroy();
  await raw(socket(h), 'POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"name":', true);
  const lines = async (): Promise<string[]> => (await log(h)).split('\n').filter((l) => /control request failed|went away/.test(l));
  await waitFor('both requests to be logged', async () => (await lines()).length >= 2);
  for (const l of await lines()) {
    const entry = JSON.parse(l) as { level: number; msg: string };
    t.ok(entry.level <= 30, `logged at info or below: ${entry.msg}`);
    t.notMatch(l, /stack/, '... without a stack');
  }
  t.equal(((await cliJson(h, 'status')).volumes as unknown[]).length, 0, 'the daemon still answers');
});

t.test('snapshot list of a volume that does not exist and has no snapshots is NOT_FOUND', async (t) => {
  const h = await makeHost(t, 'lister');
  await serve(h);
  const r = await cli(h, 'snapshot', 'list', 'nosuch');
  t.equal(r.code, 1, 'non-zero exit');
  t.match(r.stderr, /^island: NOT_FOUND: .*nosuch/, `a clear error: ${r.stderr.trim()}`);
  await cliJson(h, 'volume', 'create', 'empty', '--size', '1G');
  t.same(await cliJson(h, 'snapshot', 'list', 'empty'), { snapshots: [] }, 'a volume without snapshots lists none');
  await cliJson(h, 'attach', 'empty');
  await cliJson(h, 'snapshot', 'create', 'empty');
  await cliJson(h, 'detach', 'empty');
  await cliJson(h, 'volume', 'delete', 'empty');
  t.equal(((await cliJson(h, 'snapshot', 'list', 'empty')).snapshots as unknown[]).length, 2, 'a deleted volume whose snapshots remain lists them');
  t.equal((await cli(h, 'snapshot', 'list', '../x')).code, 2, 'an invalid name is INVALID_ARGUMENT');
});

t.test('a bad value in a control request is shown readably, never as [object Object]', async (t) => {
  const h = await makeHost(t, 'typed');
  await serve(h);
  const body = (o: unknown): string => {
    const text = JSON.stringify(o);
    return `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`;
  };
  const region = await raw(socket(h), `POST /v1/volumes HTTP/1.1\r\nHost: x\r\n${body({ name: 'r', size: '1G', region: { a: 1 } })}`);
  t.match(region, /400[\s\S]*INVALID_ARGUMENT[\s\S]*region/, 'a region that is an object: 400');
  t.notMatch(region, /object Object/, '... shown readably');
  await cliJson(h, 'volume', 'create', 'c', '--size', '1G');
  await cliJson(h, 'attach', 'c');
  const consistency = await raw(socket(h), `POST /v1/snapshots HTTP/1.1\r\nHost: x\r\n${body({ volumes: ['c'], consistency: { mode: 'flush' } })}`);
  t.match(consistency, /400[\s\S]*INVALID_ARGUMENT[\s\S]*consistency/, 'a consistency that is an object: 400');
  t.notMatch(consistency, /object Object/, '... shown readably');
});

t.test('the daemon serves metrics on the configured address only', async (t) => {
  const h = await makeHost(t, 'metrics-address');
  const { createServer } = await import('node:net');
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.2', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  h.env = { ISLAND_METRICS_PORT: String(port), ISLAND_METRICS_ADDRESS: '127.0.0.2' };
  await serve(h);
  // The metrics port opens just after the control socket: poll for it.
  const served = async (): Promise<boolean> => (await fetch(`http://127.0.0.2:${port}/metrics`).catch(() => undefined))?.status === 200;
  await waitFor('the metrics port', served);
  t.ok(await served(), 'served on 127.0.0.2');
  await t.rejects(fetch(`http://127.0.0.1:${port}/metrics`), undefined, 'not on 127.0.0.1');
});
