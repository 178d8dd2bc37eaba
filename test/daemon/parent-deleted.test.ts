/**
 * A snapshot whose parent was deleted by another host meanwhile is taken in full, and the
 * volume can still be detached. The parent's blobs cannot be reused once it is tombstoned;
 * the commit refuses with SNAPSHOT_DELETED, and every later snapshot of the volume (its
 * detach's final one included) used to fail the same way: the volume could not be detached.
 *
 * Hosts A and B share one embedded store; B deletes A's latest snapshot while A holds the
 * volume (A itself refuses to delete the parent of a volume it holds).
 */
import t from 'tap';
import { cli, cliJson, image, kill, makeHost, run, serve } from '../helpers/daemon.js';

t.test('a snapshot after its parent was deleted elsewhere uploads everything, and the detach works', async (t) => {
  const a = await makeHost(t, 'host-a');
  const b = await makeHost(t, 'host-b', a.storeDir);
  await serve(a);
  await serve(b);
  t.teardown(async () => {
    await kill(a, 'SIGTERM');
    await kill(b, 'SIGTERM');
  });
  t.equal((await cli(a, 'volume', 'create', 'v', '--size', '64M')).code, 0);
  t.equal((await cli(a, 'attach', 'v')).code, 0);
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 2M', image(a, 'v')]);
  const first = (await cliJson(a, 'snapshot', 'create', 'v')).snapshots as { id: string }[];
  const parent = first[0]!.id;

  const del = await cli(b, 'snapshot', 'delete', parent);
  t.equal(del.code, 0, `another host deletes the latest snapshot: ${del.stderr}`);
  await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 4M 1M', image(a, 'v')]);

  const snap = await cli(a, 'snapshot', 'create', 'v', '--json');
  t.equal(snap.code, 0, `the next snapshot is taken: ${snap.stderr}`);
  if (snap.code === 0) {
    const m = (JSON.parse(snap.stdout) as { snapshots: { id: string; parent: string | null }[] }).snapshots[0];
    t.equal(m?.parent, null, 'in full: it has no parent');
  }

  const det = await cli(a, 'detach', 'v');
  t.equal(det.code, 0, `the volume detaches: ${det.stderr}`);

  t.equal((await cli(b, 'attach', 'v')).code, 0, 'restored on the other host');
  for (const [pattern, off, len] of [['0x11', '0', '2M'], ['0x22', '4M', '1M']] as const) {
    // qemu-io exits 1 when the pattern differs or the file cannot be opened.
    const rd = await run('qemu-io', ['-f', 'qcow2', '-c', `read -P ${pattern} ${off} ${len}`, image(b, 'v')]).then(
      (r) => r.stdout,
      (err: { stdout?: string; stderr?: string }) => `qemu-io failed: ${err.stdout ?? ''}${err.stderr ?? ''}`,
    );
    t.match(rd, /^read \d+\/\d+ bytes/m, `it reads ${pattern} at ${off}: ${rd}`);
    t.notMatch(rd, /Pattern verification failed/, `it holds ${pattern} at ${off}`);
  }
  t.equal((await cli(b, 'detach', 'v')).code, 0);
});
