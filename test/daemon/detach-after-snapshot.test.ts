/**
 * The final snapshot of a detach holds the last writes even when a snapshot was in
 * progress at the detach: that snapshot sealed before those writes. The detach used to
 * join it as its final snapshot and drop the local copy, losing every write made after
 * that seal.
 *
 * Host A reaches a real Swift through a proxy that holds its PUTs (the earlier snapshot
 * stays in progress while the test writes and detaches); host B restores the volume.
 */
import t from 'tap';
import { cli, cliJson, image, kill, run, waitFor } from '../helpers/daemon.js';
import { heldAndDirectHosts } from '../helpers/holding-proxy.js';
import { useSwift } from '../helpers/swift.js';

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`this test needs Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  t.test('a detach while a snapshot uploads keeps the writes made after that snapshot sealed', async (t) => {
    const { proxy, a, b } = await heldAndDirectHosts(t, swift, 'detach-join');
    t.equal((await cli(a, 'volume', 'create', 'v', '--size', '64M')).code, 0);
    t.equal((await cli(a, 'attach', 'v')).code, 0);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', image(a, 'v')]);

    proxy.hold();
    t.equal((await cli(a, 'snapshot', 'create', 'v', '--no-wait')).code, 0, 'a snapshot starts and seals');
    await waitFor('its upload to reach the store', () => proxy.held() > 0);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 0 1M', image(a, 'v')]);

    const detach = cli(a, 'detach', 'v');
    // The detach has started once a second request for the volume is refused as concurrent.
    await waitFor('the detach to start', async () => /in progress/.test((await cli(a, 'attach', 'v')).stderr));
    proxy.release();
    t.equal((await detach).code, 0, 'detached');

    t.equal((await cli(b, 'attach', 'v')).code, 0, 'restored on another host');
    // qemu-io exits 1 when the pattern differs: the output says so.
    const rd = await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x22 0 1M', image(b, 'v')]).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? String(err) }));
    t.notMatch(rd.stdout, /Pattern verification failed/, 'it holds the write made after the earlier snapshot sealed');
    t.ok(((await cliJson(b, 'snapshot', 'list', 'v')).snapshots as unknown[]).length >= 2, 'the earlier snapshot and the final one');
    t.equal((await cli(b, 'detach', 'v')).code, 0);
    await kill(a, 'SIGTERM');
    await kill(b, 'SIGTERM');
  });
}
