/**
 * The edges of island's libvirt client that need no running libvirtd: the configured URI,
 * domain names, and the real virsh pointed at a socket nobody serves (LIBVIRT_UNAVAILABLE,
 * nothing else touched). The paths through a real libvirtd are in domain.test.ts.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { DEFAULT_LIBVIRT_URI, loadConfig } from '../../src/config.js';
import { cli, cliJson, makeHost, serve } from '../helpers/daemon.js';
import { classify, parseDomainName, Virsh } from '../../src/libvirt/virsh.js';

t.test('libvirtUri: qemu:///system by default, a file key or ISLAND_LIBVIRT_URI, a URI or INVALID_CONFIG', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-libvirt-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const base = { ISLAND_HOST_ID: 'h', ISLAND_DATA_DIR: dir };
  t.equal((await loadConfig(base)).libvirtUri, DEFAULT_LIBVIRT_URI);
  t.equal(DEFAULT_LIBVIRT_URI, 'qemu:///system');
  const file = join(dir, 'island.json');
  await writeFile(file, JSON.stringify({ libvirtUri: 'qemu+ssh://host-b/system' }));
  t.equal((await loadConfig({ ...base, ISLAND_CONFIG: file })).libvirtUri, 'qemu+ssh://host-b/system', 'from the file');
  t.equal((await loadConfig({ ...base, ISLAND_CONFIG: file, ISLAND_LIBVIRT_URI: 'qemu:///system?socket=/tmp/x/libvirt-sock' })).libvirtUri, 'qemu:///system?socket=/tmp/x/libvirt-sock', 'the environment wins');
  for (const bad of ['system', 'qemu:/system', 'qemu:///system with spaces', '-c qemu:///system']) {
    await t.rejects(loadConfig({ ...base, ISLAND_LIBVIRT_URI: bad }), { code: 'INVALID_CONFIG', message: /libvirtUri/ }, `${JSON.stringify(bad)} is refused`);
  }
  await writeFile(file, JSON.stringify({ libvirtUri: 42 }));
  await t.rejects(loadConfig({ ...base, ISLAND_CONFIG: file }), { code: 'INVALID_CONFIG' }, 'a number is refused');
});

t.test('domain names: 1 to 200 characters without "/" or line breaks', async (t) => {
  for (const ok of ['web1', 'instance-0000002a', '-rf', 'a b', 'x'.repeat(200)]) t.equal(parseDomainName(ok), ok, JSON.stringify(ok.slice(0, 20)));
  for (const bad of ['', 'a/b', 'a\nb', 'x'.repeat(201), 7, undefined]) t.throws(() => parseDomainName(bad), { code: 'INVALID_ARGUMENT' }, JSON.stringify(String(bad).slice(0, 20)));
});

t.test("virsh's messages map to stable codes", async (t) => {
  // What Debian's virsh 9 printed against a real libvirtd (virsh's error lines, joined).
  t.same(classify("failed to get domain 'nosuch'"), { code: 'DOMAIN_NOT_FOUND' });
  t.same(classify('Unable to freeze filesystems; Requested operation is not valid: domain is not running'), { code: 'LIBVIRT_ERROR', reason: 'not-running' }, 'a freeze of a paused domain');
  t.same(classify('Unable to freeze filesystems; argument unsupported: QEMU guest agent is not configured'), { code: 'LIBVIRT_ERROR', reason: 'agent' }, 'a freeze without an agent');
  t.same(classify("invalid argument: disk '/nope' was not found in the domain config"), { code: 'LIBVIRT_ERROR' });
  t.same(classify("failed to connect to the hypervisor; Failed to connect socket to '/x/libvirt-sock': No such file or directory"), { code: 'LIBVIRT_UNAVAILABLE' });
});

if (!existsSync('/usr/bin/virsh')) {
  t.skip('virsh is not installed (scripts/install-deps.sh installs libvirt-clients)');
} else {
  t.test('a libvirtd that does not answer: LIBVIRT_UNAVAILABLE from the real virsh, naming the command', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'island-virsh-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const v = new Virsh(`qemu:///system?socket=${dir}/libvirt-sock`);
    await t.rejects(v.state('web1'), { code: 'LIBVIRT_UNAVAILABLE', message: /virsh domstate: .*libvirt-sock/ });
    await t.rejects(v.checkUses('web1', '/run/island/mnt/web1.qcow2'), { code: 'LIBVIRT_UNAVAILABLE', details: { command: 'domblklist' } });
    await t.rejects(v.suspend('web1'), { code: 'LIBVIRT_UNAVAILABLE', details: { command: 'suspend' } });
  });

  t.test('attach --domain while libvirtd does not answer: LIBVIRT_UNAVAILABLE, nothing attached', async (t) => {
    const h = await makeHost(t, 'virsh-down');
    h.env = { ISLAND_LIBVIRT_URI: `qemu:///system?socket=${h.dataDir}/no-libvirt-sock` };
    await serve(h);
    await cliJson(h, 'volume', 'create', 'web1', '--size', '64M');
    const r = await cli(h, 'attach', 'web1', '--domain', 'web1', '--json');
    t.equal(r.code, 1, 'the attach fails');
    t.match(JSON.parse(r.stdout), { error: { code: 'LIBVIRT_UNAVAILABLE', details: { command: 'domblklist' } } });
    t.match(await cliJson(h, 'volume', 'show', 'web1'), { status: 'available', host: null }, 'the volume is still detached');
    t.match((await cli(h, 'attach', 'web1', '--domain', 'a/b', '--json')).stdout, /INVALID_ARGUMENT/, 'a name libvirt cannot have is refused before libvirt is asked');
  });
}
