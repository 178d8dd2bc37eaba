/**
 * An attach request is checked whole before anything changes: a bad --fill-rate used to
 * fail after the volume was attached (a retry then said BUSY), and on a volume without
 * snapshots it was accepted.
 */
import t from 'tap';
import { cli, cliJson, kill, makeHost, serve } from '../helpers/daemon.js';

t.test('attach --fill-rate abc is refused and attaches nothing', async (t) => {
  const h = await makeHost(t, 'host-args');
  await serve(h);
  t.equal((await cli(h, 'volume', 'create', 'withsnap', '--size', '16M')).code, 0);
  t.equal((await cli(h, 'volume', 'create', 'empty', '--size', '16M')).code, 0);
  // withsnap gets a snapshot, so its next attach restores from it and would start a fill.
  t.equal((await cli(h, 'attach', 'withsnap')).code, 0);
  t.equal((await cli(h, 'detach', 'withsnap')).code, 0);

  for (const name of ['withsnap', 'empty']) {
    const r = await cli(h, 'attach', name, '--fill-rate', 'abc');
    t.not(r.code, 0, `${name}: refused`);
    t.match(r.stderr + r.stdout, /INVALID_ARGUMENT.*fillRate|fillRate.*INVALID_ARGUMENT|fillRate/, `${name}: the error names fillRate`);
    const st = (await cliJson(h, 'status')) as { attached: number };
    t.equal(st.attached, 0, `${name}: nothing is attached`);
    const v = (await cliJson(h, 'volume', 'show', name)) as { status: string; host: string | null };
    t.equal(v.status, 'available', `${name}: the catalog still says available`);
    t.equal((await cli(h, 'attach', name, '--fill-rate', '10M')).code, 0, `${name}: a corrected attach works at once (no BUSY)`);
    t.equal((await cli(h, 'detach', name)).code, 0);
  }
  await kill(h, 'SIGTERM');
});
