/**
 * Configuration: validation where it is built, and secrets that never reach a message
 * or a log line.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import t from 'tap';
import { LOG_REDACT, loadConfig } from '../src/config.js';
import { IslandError, redactUrlCredentials } from '../src/errors.js';
import { S3Store } from '../src/store/s3.js';

const KEY = 'AKIDLEAKCHECK';
const SECRET = 'S3CR3TLEAKCHECK';

async function configWith(t: Tap, file: unknown): Promise<NodeJS.ProcessEnv> {
  const dir = await mkdtemp(join(tmpdir(), 'island-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'island.json');
  await writeFile(path, JSON.stringify(file));
  return { ISLAND_CONFIG: path, ISLAND_DATA_DIR: dir, ISLAND_HOST_ID: 'h' };
}
type Tap = { teardown(fn: () => unknown): void };

function s3Region(endpoint: string): Record<string, unknown> {
  return { type: 's3', endpoint, bucket: 'island', accessKeyId: 'id', secretAccessKey: 'key' };
}

t.test('credentials in an endpoint URL are refused, and the error does not show them', async (t) => {
  for (const endpoint of [`http://${KEY}:${SECRET}@127.0.0.1:8080`, `https://${KEY}@swift.example/`, `http://${KEY}:${SECRET}@host:notaport/`, `http://${KEY}:p@${SECRET}@host/`]) {
    const env = await configWith(t, { region: 'swift', regions: { swift: s3Region(endpoint) } });
    const err = (await loadConfig(env).then(
      () => undefined,
      (e: unknown) => e,
    )) as IslandError | undefined;
    t.equal(err?.code, 'INVALID_CONFIG', `${redactUrlCredentials(endpoint)} is refused`);
    const text = `${err?.message} ${JSON.stringify(err?.toJSON())}`;
    t.notMatch(text, KEY, '... without the key in the error');
    t.notMatch(text, SECRET, '... or the secret');
    t.match(text, /endpoint/, `... and says what is wrong: ${err?.message}`);
  }
  const ok = await loadConfig(await configWith(t, { region: 'swift', regions: { swift: s3Region('http://127.0.0.1:8080') } }));
  t.equal(ok.store.type === 's3' && ok.store.endpoint, 'http://127.0.0.1:8080', 'an endpoint without credentials is taken as it is');
});

t.test('userinfo of a URL is redacted in any text, and in every IslandError message', async (t) => {
  t.equal(redactUrlCredentials(`s3:http://${KEY}:${SECRET}@host:8080/bucket/`), 's3:http://***@host:8080/bucket/');
  t.equal(redactUrlCredentials(`a http://${KEY}:p@ss@host/x@y b https://u@h`), 'a http://***@host/x@y b https://***@h', 'up to the last @ before the path');
  t.equal(redactUrlCredentials('http://host:8080/a@b'), 'http://host:8080/a@b', 'an @ in the path is not userinfo');
  t.equal(redactUrlCredentials('user@host.example'), 'user@host.example', 'not a URL: left alone');
  const e = new IslandError('STORE_CONFIG', `s3 store: endpoint is not a URL: "http://${KEY}:${SECRET}@h:x"`);
  t.notMatch(e.message, SECRET);
  t.notMatch(JSON.stringify(e.toJSON()), KEY);
});

t.test('an S3 store describes itself without the credentials of its endpoint', async (t) => {
  const s = new S3Store({ endpoint: `http://${KEY}:${SECRET}@127.0.0.1:1`, region: 'us-east-1', bucket: 'island', accessKeyId: 'id', secretAccessKey: 'key' });
  t.teardown(() => s.close());
  t.equal(s.description, 's3:http://***@127.0.0.1:1/island/');
});

t.test("the daemon's log redaction censors secrets and the userinfo of endpoints", async (t) => {
  let out = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  });
  const log = pino({ redact: LOG_REDACT }, sink);
  log.info({ store: `s3:http://${KEY}:${SECRET}@h/b/`, region: { endpoint: `http://${KEY}:${SECRET}@h`, secretAccessKey: SECRET, accessKeyId: 'id' } }, 'serving');
  log.info({ endpoint: `https://${KEY}@h` }, 'copy');
  t.notMatch(out, KEY);
  t.notMatch(out, SECRET);
  t.match(out, /"store":"s3:http:\/\/\*\*\*@h\/b\/"/, 'the store description stays readable');
  t.match(out, /"endpoint":"http:\/\/\*\*\*@h"/, 'and so does the endpoint');
  t.match(out, /"secretAccessKey":"\[Redacted\]"/);
});

t.test('the metrics port listens on loopback by default; the address is configurable', async (t) => {
  const base = { ISLAND_DATA_DIR: '/tmp/island-config-test', ISLAND_HOST_ID: 'h' };
  t.equal((await loadConfig(base)).metricsAddress, '127.0.0.1', 'loopback by default');
  t.equal((await loadConfig({ ...base, ISLAND_METRICS_ADDRESS: '::1' })).metricsAddress, '::1', 'ISLAND_METRICS_ADDRESS sets it');
  t.equal((await loadConfig({ ...(await configWith(t, { metricsAddress: '0.0.0.0' })), ISLAND_HOST_ID: 'h' })).metricsAddress, '0.0.0.0', 'so does metricsAddress in the file');
  t.equal((await loadConfig({ ...base, ISLAND_METRICS_ADDRESS: '' })).metricsAddress, '127.0.0.1', 'empty is the default, as for the port');
  for (const bad of ['localhost', '127.0.0.1:9100', '999.1.1.1']) {
    await t.rejects(loadConfig({ ...base, ISLAND_METRICS_ADDRESS: bad }), { code: 'INVALID_CONFIG', message: /metricsAddress must be an IP address/ }, `${JSON.stringify(bad)} is refused`);
  }
});

t.test('Metrics.listen binds the address it is given, loopback by default', async (t) => {
  const { Metrics } = await import('../src/daemon/metrics.js');
  const m = new Metrics();
  const a = await m.listen(0);
  t.teardown(() => a.close());
  t.equal((a.address() as { address: string }).address, '127.0.0.1', 'loopback by default');
  const b = await m.listen(0, '127.0.0.2');
  t.teardown(() => b.close());
  const { port } = b.address() as { port: number; address: string };
  t.equal((b.address() as { address: string }).address, '127.0.0.2', 'the configured address');
  t.equal((await fetch(`http://127.0.0.2:${port}/metrics`)).status, 200, 'served there');
  await t.rejects(fetch(`http://127.0.0.1:${port}/metrics`), undefined, 'and not on 127.0.0.1');
});

t.test('volume files: owner and group by name or id, mode as octal; root-only 0600 by default', async (t) => {
  const base = { ISLAND_DATA_DIR: '/tmp/island-config-test', ISLAND_HOST_ID: 'h' };
  const d = await loadConfig(base);
  t.same([d.fileOwner, d.fileGroup, d.fileMode], [process.getuid?.(), process.getgid?.(), 0o600], "the daemon's own user and group (root), 0600");
  const named = await loadConfig({ ...base, ISLAND_FILE_OWNER: 'nobody', ISLAND_FILE_GROUP: 'nogroup', ISLAND_FILE_MODE: '0660' });
  t.same([named.fileOwner, named.fileGroup, named.fileMode], [65534, 65534, 0o660], 'names resolve through the name service');
  const ids = await loadConfig({ ...base, ISLAND_FILE_OWNER: '4242', ISLAND_FILE_GROUP: '0', ISLAND_FILE_MODE: '640' });
  t.same([ids.fileOwner, ids.fileGroup, ids.fileMode], [4242, 0, 0o640], 'numeric ids need no entry; the leading 0 of the mode is optional');
  const file = await loadConfig({ ...(await configWith(t, { fileOwner: 'daemon', fileGroup: 65534, fileMode: '0640' })), ISLAND_HOST_ID: 'h' });
  t.same([file.fileOwner, file.fileGroup, file.fileMode], [1, 65534, 0o640], 'the file keys work too');
  const refused: [Record<string, string>, RegExp][] = [
    [{ ISLAND_FILE_OWNER: 'no-such-user-island' }, /fileOwner \(ISLAND_FILE_OWNER\): no user named "no-such-user-island"/],
    [{ ISLAND_FILE_GROUP: 'no-such-group-island' }, /fileGroup \(ISLAND_FILE_GROUP\): no group named "no-such-group-island"/],
    [{ ISLAND_FILE_OWNER: '-s' }, /fileOwner \(ISLAND_FILE_OWNER\) must be a user name or a numeric id/],
    [{ ISLAND_FILE_OWNER: '4294967295' }, /must be a user name or an id 0\.\.4294967294/],
    [{ ISLAND_FILE_MODE: '600x' }, /fileMode \(ISLAND_FILE_MODE\) must be permission bits/],
    [{ ISLAND_FILE_MODE: '4755' }, /fileMode/],
    [{ ISLAND_FILE_MODE: '0800' }, /fileMode/],
  ];
  for (const [env, message] of refused) {
    await t.rejects(loadConfig({ ...base, ...env }), { code: 'INVALID_CONFIG', message }, `${JSON.stringify(env)} is refused`);
  }
  await t.rejects(loadConfig({ ...(await configWith(t, { fileMode: 384 })), ISLAND_HOST_ID: 'h' }), { code: 'INVALID_CONFIG', message: /fileMode/ }, 'a JSON number is refused (384 or 0o600 is ambiguous)');
});
