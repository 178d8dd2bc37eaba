/**
 * Image import and export against real daemons and real qemu-img: raw, qcow2 and
 * compressed qcow2 files become volumes whose first snapshot holds their content (read
 * back byte for byte through exports in both formats, and through an attach on another
 * host sharing the store); bad requests are refused before anything is created.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { call } from '../../src/cli/client.js';
import { cli, cliJson, image, kill, makeHost, run, serve, socket } from '../helpers/daemon.js';

const MiB = 1024 * 1024;

/** A raw image with data in a few places and holes between them. */
async function rawImage(path: string, size: number): Promise<Buffer> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    for (const off of [0, 3 * MiB + 4096, size - 2 * 65536]) await fh.write(randomBytes(65536 + 512), 0, 65536 + 512, off);
  } finally {
    await fh.close();
  }
  return readFile(path);
}

/** A file's bytes as raw (qemu-img converts any other format). */
async function rawBytes(dir: string, file: string, format: string): Promise<Buffer> {
  if (format === 'raw') return readFile(file);
  const out = join(dir, `cmp-${Math.random().toString(36).slice(2)}.raw`);
  await run('qemu-img', ['convert', '-f', format, '-O', 'raw', file, out]);
  try {
    return await readFile(out);
  } finally {
    await rm(out, { force: true });
  }
}

t.test('import raw, qcow2 and compressed qcow2; export raw and qcow2; byte-exact', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-images-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const a = await makeHost(t, 'host-a');
  const b = await makeHost(t, 'host-b', a.storeDir);
  await serve(a);
  await serve(b);

  const raw = join(dir, 'in.raw');
  const original = await rawImage(raw, 8 * MiB);
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, join(dir, 'in.qcow2')]);
  await run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, join(dir, 'in-z.qcow2')]);

  for (const [vol, file, fmt] of [
    ['from-raw', 'in.raw', 'raw'],
    ['from-qcow2', 'in.qcow2', 'qcow2'],
    ['from-zqcow2', 'in-z.qcow2', 'qcow2'],
  ] as const) {
    const r = (await cliJson(a, 'volume', 'create', vol, '--from-image', join(dir, file))) as { volume: { name: string; virtualSize: number; status: string }; snapshot: { id: string; volume: string }; image: { format: string; virtualSize: number } };
    t.equal(r.image.format, fmt, `${file}: detected as ${fmt}`);
    t.equal(r.volume.virtualSize, 8 * MiB, `${vol}: the image's size`);
    t.equal(r.volume.status, 'available', `${vol}: detached after the import`);
    const snaps = (await cliJson(a, 'snapshot', 'list', vol)) as { snapshots: { id: string }[] };
    t.equal(snaps.snapshots[0]?.id, r.snapshot.id, `${vol}: its first snapshot is the import`);

    for (const out of ['raw', 'qcow2'] as const) {
      const target = join(dir, `${vol}.out.${out}`);
      const e = (await cliJson(a, 'snapshot', 'export', r.snapshot.id, target, '--format', out)) as { file: string; format: string; virtualSize: number };
      t.equal(e.format, out);
      t.equal(e.virtualSize, 8 * MiB);
      const info = JSON.parse((await run('qemu-img', ['info', '--output=json', target])).stdout) as { format: string };
      t.equal(info.format, out, `${vol}: exported file is ${out}`);
      t.ok((await rawBytes(dir, target, out)).equals(original), `${vol} exported as ${out}: byte-exact`);
    }
  }

  // Host B (same store) attaches an imported volume at once: restored lazily, same bytes.
  t.equal((await cli(b, 'attach', 'from-zqcow2')).code, 0);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, image(b, 'from-zqcow2')]);
  t.match(cmp.stdout, /identical/, 'host B reads the imported image through its mount');
  // The file on the mount is island's own qcow2 (its cluster size), not the 4 KiB file imported.
  t.equal((await cli(b, 'detach', 'from-zqcow2')).code, 0);
  t.equal((await cli(b, 'attach', 'from-qcow2')).code, 0);
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', image(b, 'from-qcow2')])).stdout) as { 'cluster-size': number };
  t.equal(info['cluster-size'], 65536, "island's own qcow2, not the imported file's 4 KiB clusters");
  t.equal((await cli(b, 'detach', 'from-qcow2')).code, 0);

  // The human output ends with the result line; progress goes to stderr.
  const human = await cli(a, 'snapshot', 'export', ((await cliJson(a, 'snapshot', 'list', 'from-raw')) as { snapshots: { id: string }[] }).snapshots[0]?.id ?? '', join(dir, 'human.raw'));
  t.equal(human.code, 0);
  t.match(human.stdout, /^exported .* \(raw, 8M image/);
  t.match(human.stderr, /export .*100%/, 'a progress line');

  await kill(a, 'SIGTERM');
  await kill(b, 'SIGTERM');
});

t.test('import into an existing empty volume (the API route Cinder uses)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-images-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const h = await makeHost(t, 'host-a');
  await serve(h);
  const raw = join(dir, 'in.raw');
  const original = await rawImage(raw, 4 * MiB);
  t.equal((await cli(h, 'volume', 'create', 'empty', '--size', '16M')).code, 0);
  const r = (await call(socket(h), 'POST', '/v1/volumes/empty/import', { file: raw, format: 'raw' })) as { snapshot: { id: string }; volume: { virtualSize: number; status: string } };
  t.equal(r.volume.virtualSize, 16 * MiB, 'the volume keeps its size');
  t.equal(r.volume.status, 'available');
  const out = join(dir, 'out.raw');
  await cliJson(h, 'snapshot', 'export', r.snapshot.id, out);
  const back = await readFile(out);
  t.equal(back.length, 16 * MiB);
  t.ok(back.subarray(0, 4 * MiB).equals(original), 'the image is at the start');
  t.ok(back.subarray(4 * MiB).equals(Buffer.alloc(12 * MiB)), 'zeros after it');

  // A volume that holds data is not overwritten; a too small one is refused.
  await t.rejects(call(socket(h), 'POST', '/v1/volumes/empty/import', { file: raw }), { code: 'ALREADY_EXISTS' });
  t.equal((await cli(h, 'volume', 'create', 'small', '--size', '1M')).code, 0);
  await t.rejects(call(socket(h), 'POST', '/v1/volumes/small/import', { file: raw }), { code: 'INVALID_ARGUMENT' });
  t.same(((await cliJson(h, 'snapshot', 'list', 'small')) as { snapshots: unknown[] }).snapshots, [], 'nothing written to it');
  await kill(h, 'SIGTERM');
});

t.test('bad requests are refused before anything is created', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'island-images-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const h = await makeHost(t, 'host-a');
  await serve(h);
  const raw = join(dir, 'in.raw');
  await rawImage(raw, 1 * MiB);
  t.equal((await cli(h, 'volume', 'create', 'taken', '--size', '2M')).code, 0);
  const before = JSON.stringify(await cliJson(h, 'volume', 'list'));

  const refused = async (args: string[], code: string, what: string): Promise<void> => {
    const r = await cli(h, ...args, '--json');
    t.not(r.code, 0, `${what}: refused`);
    t.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, code, `${what}: ${code}`);
  };
  await refused(['volume', 'create', 'v1', '--from-image', join(dir, 'missing.raw')], 'NOT_FOUND', 'a file that does not exist');
  await refused(['volume', 'create', 'v1', '--from-image', dir], 'INVALID_ARGUMENT', 'a directory');
  await writeFile(join(dir, 'text.txt'), 'not an image at all\n');
  await refused(['volume', 'create', 'v1', '--from-image', join(dir, 'text.txt'), '--format', 'qcow2'], 'INVALID_ARGUMENT', 'a text file read as qcow2');
  await refused(['volume', 'create', 'v1', '--from-image', raw, '--format', 'bogus'], 'INVALID_ARGUMENT', 'an unknown format');
  await refused(['volume', 'create', 'taken', '--from-image', raw], 'ALREADY_EXISTS', 'a name that is taken');
  await refused(['volume', 'create', 'v1', '--from-image', raw, '--size', '512K'], 'INVALID_ARGUMENT', 'a size smaller than the image');
  await writeFile(join(dir, 'empty.raw'), '');
  await refused(['volume', 'create', 'v1', '--from-image', join(dir, 'empty.raw')], 'INVALID_ARGUMENT', 'an empty image');
  await run('qemu-img', ['create', '-f', 'qcow2', '-F', 'raw', '-b', raw, join(dir, 'overlay.qcow2')]);
  await refused(['volume', 'create', 'v1', '--from-image', join(dir, 'overlay.qcow2')], 'INVALID_ARGUMENT', 'an image with a backing file');
  await t.rejects(call(socket(h), 'POST', '/v1/volumes', { name: 'v1', fromImage: 'in.raw' }), { code: 'INVALID_ARGUMENT' }, 'a relative path through the API');
  t.equal(JSON.stringify(await cliJson(h, 'volume', 'list')), before, 'no volume was created or changed');

  const imported = (await cliJson(h, 'volume', 'create', 'ok', '--from-image', raw)) as { snapshot: { id: string } };
  const id = imported.snapshot.id;
  await writeFile(join(dir, 'exists.raw'), 'keep me');
  const r = await cli(h, 'snapshot', 'export', id, join(dir, 'exists.raw'), '--json');
  t.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'ALREADY_EXISTS', 'an existing file');
  t.equal(await readFile(join(dir, 'exists.raw'), 'utf8'), 'keep me', 'is not replaced');
  await refused(['snapshot', 'export', id, join(dir, 'x.vmdk'), '--format', 'vmdk'], 'INVALID_ARGUMENT', 'an export format other than raw or qcow2');
  await refused(['snapshot', 'export', id, join(dir, 'no-such-dir', 'x.raw')], 'INVALID_ARGUMENT', 'a directory that does not exist');
  await refused(['snapshot', 'export', '01JAAAAAAAAAAAAAAAAAAAAAAA', join(dir, 'x.raw')], 'NOT_FOUND', 'an unknown snapshot');
  t.same((await readFile(join(dir, 'exists.raw'), 'utf8')).length, 7);
  const left = (await readdir(dir)).filter((n) => n.endsWith('.part'));
  t.same(left, [], 'no temporary file left behind');
  t.same(((await cliJson(h, 'status')) as { attached: number }).attached, 0, 'nothing left attached or mounted');
  t.same(((await call(socket(h), 'GET', '/v1/images')) as { transfers: unknown[] }).transfers, [], 'no transfer left in progress');
  await kill(h, 'SIGTERM');
});
