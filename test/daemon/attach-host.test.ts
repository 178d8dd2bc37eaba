/**
 * Attach for a named host: a caller that placed a volume with its VM names the host; a
 * daemon that is not that host refuses (WRONG_HOST, naming both) before anything changes.
 */
import t from 'tap';
import { call } from '../../src/cli/client.js';
import { cli, cliJson, kill, makeHost, serve, socket } from '../helpers/daemon.js';

t.test('attach --host for another host is refused and changes nothing', async (t) => {
  const h = await makeHost(t, 'host-a');
  await serve(h);
  t.equal((await cli(h, 'volume', 'create', 'vol', '--size', '16M')).code, 0);

  const r = await cli(h, 'attach', 'vol', '--host', 'host-b');
  t.equal(r.code, 1, 'refused');
  t.match(r.stderr, /WRONG_HOST/, 'with WRONG_HOST');
  t.match(r.stderr, /host-b/, 'naming the host asked for');
  t.match(r.stderr, /host-a/, 'and the host of this daemon');
  const j = await cli(h, 'attach', 'vol', '--host', 'host-b', '--json');
  const err = (JSON.parse(j.stdout) as { error: { code: string; details: Record<string, unknown> } }).error;
  t.equal(err.code, 'WRONG_HOST');
  t.same(err.details, { volume: 'vol', host: 'host-b', daemonHost: 'host-a' }, 'details name both hosts');

  t.equal(((await cliJson(h, 'status')) as { attached: number }).attached, 0, 'nothing attached');
  const v = (await cliJson(h, 'volume', 'show', 'vol')) as { status: string; host: string | null; generation: number };
  t.equal(v.status, 'available', 'the catalog still says available');
  t.equal(v.generation, 0, 'no generation was taken');

  // Through the API: the same refusal (409), and a host that is not a string is invalid.
  await t.rejects(call(socket(h), 'POST', '/v1/volumes/vol/attach', { host: 'host-b' }), { code: 'WRONG_HOST' });
  await t.rejects(call(socket(h), 'POST', '/v1/volumes/vol/attach', { host: 7 }), { code: 'INVALID_ARGUMENT' });

  const ok = (await cliJson(h, 'attach', 'vol', '--host', 'host-a')) as { status: string; host: string };
  t.equal(ok.status, 'attached', 'attach for this host works at once');
  t.equal(ok.host, 'host-a');
  t.equal((await cli(h, 'detach', 'vol')).code, 0);
  await kill(h, 'SIGTERM');
});
