/**
 * detach --no-wait: the caller is answered once the final snapshot is sealed and the file
 * is off the mount; the upload finishes in the background (status shows the volume as
 * detaching); the volume is released to other hosts only when the final snapshot commits:
 * meanwhile this host refuses attach (BUSY) and another host gets ATTACHED_ELSEWHERE.
 *
 * Host A reaches a real Swift through a proxy that holds every PUT while told to (the
 * upload is in progress for as long as the test needs); host B shares the bucket directly.
 */
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import t from 'tap';
import { cli, cliJson, image, kill, run, serve, waitFor } from '../helpers/daemon.js';
import { heldAndDirectHosts } from '../helpers/holding-proxy.js';
import { useSwift, type SwiftInfo } from '../helpers/swift.js';

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`detach --no-wait tests need Swift: ${got.skip}`);
} else {
  const swift: SwiftInfo = got.swift;

  t.test('detach --no-wait returns at the seal; the volume is released when its final snapshot commits', async (t) => {
    const { proxy, a, b } = await heldAndDirectHosts(t, swift, 'nowait');

    t.equal((await cli(a, 'volume', 'create', 'v', '--size', '64M')).code, 0);
    t.equal((await cli(a, 'attach', 'v')).code, 0);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 0 4M', '-c', 'write -P 0x78 40M 1M', image(a, 'v')]);

    proxy.hold();
    const d = await cliJson(a, 'detach', 'v', '--no-wait');
    t.equal(d.detaching, true, 'the answer says the volume is detaching');
    // The kernel may keep the name in its entry cache for a second; opening it already fails.
    await t.rejects(open(image(a, 'v'), 'r'), { code: 'ENOENT' }, 'the file cannot be opened once detach returns');
    await waitFor('the name to leave the mount', () => !existsSync(image(a, 'v')), 10_000);
    await waitFor('the upload to reach the store', () => proxy.held() > 0);

    const st = (await cliJson(a, 'status')) as { attached: number; detaching: { name: string }[] };
    t.equal(st.attached, 0, 'not attached any more');
    t.same(st.detaching.map((x) => x.name), ['v'], 'status shows it detaching');
    const human = await cli(a, 'status');
    t.match(human.stdout, /v\.qcow2\tDETACHING: final snapshot uploading/, 'the human status too');

    const here = await cli(a, 'attach', 'v');
    t.equal(here.code, 1);
    t.match(here.stderr, /BUSY.*detaching.*final snapshot/, 'an attach here meanwhile: BUSY, saying why');
    const again = await cli(a, 'detach', 'v');
    t.match(again.stderr, /BUSY.*detaching/, 'a second detach meanwhile: BUSY');
    const there = await cli(b, 'attach', 'v');
    t.equal(there.code, 1);
    t.match(there.stderr, /ATTACHED_ELSEWHERE.*host-a/, 'an attach on another host meanwhile: ATTACHED_ELSEWHERE, naming the host');
    t.equal(((await cliJson(b, 'snapshot', 'list', 'v')).snapshots as unknown[]).length, 0, 'no snapshot is committed yet');

    proxy.release();
    await waitFor('the background detach to finish', async () => ((await cliJson(a, 'status')) as { detaching: unknown[] }).detaching.length === 0, 60_000);
    const v = (await cliJson(b, 'volume', 'show', 'v')) as { status: string; host: string | null };
    t.equal(v.status, 'available', 'released once the final snapshot committed');
    t.equal(((await cliJson(b, 'snapshot', 'list', 'v')).snapshots as unknown[]).length, 1, 'the final snapshot is there');

    t.equal((await cli(b, 'attach', 'v')).code, 0, 'another host attaches it now');
    const rd = await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x77 0 4M', '-c', 'read -P 0x78 40M 1M', image(b, 'v')]);
    t.notMatch(rd.stdout, /Pattern verification failed/, 'with everything written before the detach');
    t.equal((await cli(b, 'detach', 'v')).code, 0);
    await kill(a, 'SIGTERM');
    await kill(b, 'SIGTERM');
  });

  t.test('a daemon stopped while a detach uploads gets the volume back, attached, at its restart', async (t) => {
    const { proxy, a, b } = await heldAndDirectHosts(t, swift, 'nowait-stop');
    t.equal((await cli(a, 'volume', 'create', 'v', '--size', '64M')).code, 0);
    t.equal((await cli(a, 'attach', 'v')).code, 0);
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x66 0 2M', image(a, 'v')]);

    proxy.hold();
    t.equal((await cli(a, 'detach', 'v', '--no-wait')).code, 0);
    await waitFor('the upload to reach the store', () => proxy.held() > 0);
    await kill(a, 'SIGTERM');
    proxy.release();

    await serve(a);
    await waitFor('v to be served again', async () => ((await cliJson(a, 'status')) as { volumes: { name: string; access: { mode: string } }[] }).volumes.some((v) => v.name === 'v' && v.access.mode === 'read-write'));
    t.pass('the volume is attached again on the host that held it');
    const there = await cli(b, 'attach', 'v');
    t.match(there.stderr, /ATTACHED_ELSEWHERE.*host-a/, 'and not released to another host');
    const rd = await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x66 0 2M', image(a, 'v')]);
    t.notMatch(rd.stdout, /Pattern verification failed/, 'with its data');
    t.equal((await cli(a, 'detach', 'v')).code, 0, 'a detach asked again releases it');
    t.equal((await cli(b, 'attach', 'v')).code, 0, 'to the other host');
    const rb = await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x66 0 2M', image(b, 'v')]);
    t.notMatch(rb.stdout, /Pattern verification failed/, 'which reads the data');
    t.equal((await cli(b, 'detach', 'v')).code, 0);
    await kill(a, 'SIGTERM');
    await kill(b, 'SIGTERM');
  });
}
