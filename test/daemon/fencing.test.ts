/**
 * A host fenced by a forced attach elsewhere never serves the volume read-write again,
 * across restarts: after a restart a reopened volume is read-only until the store confirms
 * no later generation exists; once it shows one, the volume is FENCED in status, writes
 * fail with EROFS, a snapshot fails before uploading anything, and detach sets the local
 * copy aside (kept, never dropped). Before, the restarted host accepted VM writes it could
 * never commit, and every snapshot try left orphan packs.
 */
import t from 'tap';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { cli, cliJson, image, kill, makeHost, serve, waitFor } from '../helpers/daemon.js';

interface StatusOut {
  volumes: { name: string; generation: number; access: { mode: string; why: string | null } }[];
}

async function packFiles(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile() && /(^|\/)(data|meta)(\/|$)/.test(join(e.parentPath ?? '', e.name).slice(dir.length))) n++;
  }
  return n;
}

t.test('a fenced host restarts read-only, shows FENCED, uploads nothing, and keeps its copy aside', async (t) => {
  const a = await makeHost(t, 'host-a');
  const b = await makeHost(t, 'host-b', a.storeDir);
  await serve(a);
  await serve(b);
  t.equal((await cli(a, 'volume', 'create', 'vol', '--size', '16M')).code, 0);
  t.equal((await cli(a, 'attach', 'vol')).code, 0);
  const fh = await open(image(a, 'vol'), 'r+');
  await fh.write(Buffer.alloc(65536, 0xaa), 0, 65536, 1 << 20);
  await fh.sync();
  await fh.close();
  t.equal((await cli(a, 'snapshot', 'create', 'vol')).code, 0, 'host A snapshots');

  // Host B takes the volume by force while host A is down.
  await kill(a, 'SIGKILL');
  t.equal((await cli(b, 'attach', 'vol', '--force')).code, 0, 'host B takes the volume with --force');
  await serve(a);

  let st: StatusOut['volumes'][number] | undefined;
  await waitFor('host A to settle the volume', async () => {
    st = ((await cliJson(a, 'status')) as unknown as StatusOut).volumes.find((v) => v.name === 'vol');
    return st?.access.mode === 'fenced';
  });
  t.equal(st?.access.mode, 'fenced', 'status shows the volume FENCED on host A');
  t.match(st?.access.why ?? '', /host-b/, 'naming the host that took it');
  const human = await cli(a, 'status');
  t.match(human.stdout, /FENCED/, 'the human status says FENCED');

  await t.rejects(open(image(a, 'vol'), 'r+'), { code: 'EROFS' }, 'the file cannot be opened for writing');
  const ro = await open(image(a, 'vol'), 'r');
  const buf = Buffer.alloc(65536);
  await ro.read(buf, 0, buf.length, 1 << 20);
  await ro.close();
  t.ok(buf.every((x) => x === 0xaa), 'reads still serve the local copy');

  const packsBefore = await packFiles(a.storeDir);
  const snap = await cli(a, 'snapshot', 'create', 'vol');
  t.not(snap.code, 0, 'a snapshot on the fenced host fails');
  t.match(snap.stderr + snap.stdout, /FENCED/, 'with FENCED');
  t.equal(await packFiles(a.storeDir), packsBefore, 'and uploaded no pack');

  const det = await cli(a, 'detach', 'vol');
  t.equal(det.code, 0, 'detach on the fenced host works');
  const aside = await readdir(join(a.dataDir, 'aside'));
  t.equal(aside.length, 1, 'the local copy is set aside under aside/');
  t.match(aside[0] ?? '', /^vol\.fenced\.g1\./, 'named after the volume, why and its generation');
  const kept = await readdir(join(a.dataDir, 'aside', aside[0] as string));
  t.ok(kept.includes('image.qcow2'), 'with its image');

  const onB = ((await cliJson(b, 'status')) as unknown as StatusOut).volumes.find((v) => v.name === 'vol');
  t.equal(onB?.access.mode, 'read-write', 'host B still serves the volume read-write');
  const rec = (await cliJson(b, 'volume', 'show', 'vol')) as { host: string; status: string };
  t.equal(rec.host, 'host-b', 'the catalog names host B');
  await kill(a, 'SIGTERM');
  t.equal((await cli(b, 'detach', 'vol')).code, 0, 'host B detaches normally');
  await kill(b, 'SIGTERM');
});

t.test('a restarted host that still holds its volume gets it back read-write', async (t) => {
  const a = await makeHost(t, 'host-c');
  await serve(a);
  t.equal((await cli(a, 'volume', 'create', 'vol', '--size', '16M')).code, 0);
  t.equal((await cli(a, 'attach', 'vol')).code, 0);
  await kill(a, 'SIGKILL');
  await serve(a);
  await waitFor('the volume to be confirmed', async () => ((await cliJson(a, 'status')) as unknown as StatusOut).volumes[0]?.access.mode === 'read-write');
  const fh = await open(image(a, 'vol'), 'r+');
  await fh.write(Buffer.alloc(4096, 1), 0, 4096, 0);
  await fh.close();
  t.pass('writable again once confirmed');
  t.equal((await cli(a, 'detach', 'vol')).code, 0);
  await kill(a, 'SIGTERM');
});

t.test('a handle held open across a live fence gets EROFS at once', async (t) => {
  // The native server answers a native volume's writes in C: the fence must reach it when it
  // happens, not at the mount's next periodic refresh.
  const a = await makeHost(t, 'host-a');
  const b = await makeHost(t, 'host-b', a.storeDir);
  await serve(a);
  await serve(b);
  t.equal((await cli(a, 'volume', 'create', 'live', '--size', '16M')).code, 0);
  t.equal((await cli(a, 'attach', 'live')).code, 0);
  const fh = await open(image(a, 'live'), 'r+');
  t.teardown(() => fh.close().catch(() => undefined));
  await fh.write(Buffer.alloc(65536, 0x11), 0, 65536, 1 << 20);
  await fh.sync();
  t.equal((await cli(b, 'attach', 'live', '--force')).code, 0, 'host B takes the volume with --force while A serves it');
  t.not((await cli(a, 'snapshot', 'create', 'live')).code, 0, "A's next snapshot finds it fenced");
  const st = ((await cliJson(a, 'status')) as unknown as StatusOut).volumes.find((v) => v.name === 'live');
  t.equal(st?.access.mode, 'fenced', 'status shows it FENCED');
  await t.rejects(fh.write(Buffer.alloc(4096, 0x22), 0, 4096, 1 << 20), { code: 'EROFS' }, 'a write on the handle opened before is refused');
});
