/**
 * Which FUSE server serves a daemon's mount: island's native server unless ISLAND_FUSE says
 * fuse-native; the log says which, and status shows it. Run the FUSE tests with
 * ISLAND_FUSE=fuse-native to take them through the fuse-native transport.
 */
import { existsSync } from 'node:fs';
import t from 'tap';
import { loadConfig } from '../../src/config.js';
import { cliJson, createVolume, image, log, makeHost, run, serve } from '../helpers/daemon.js';

const expected = process.env.ISLAND_FUSE === 'fuse-native' ? 'fuse-native' : 'native';
const writePath = process.env.ISLAND_WRITE_PATH === 'typescript' ? 'typescript' : 'native';

t.test('ISLAND_FUSE and ISLAND_FUSE_THREADS are checked where the config is built', async (t) => {
  const base = { ISLAND_HOST_ID: 'h' };
  t.equal((await loadConfig(base)).fuse, 'auto', 'auto by default: native, fuse-native when native cannot start');
  t.equal((await loadConfig({ ...base, ISLAND_FUSE: 'fuse-native' })).fuse, 'fuse-native');
  t.equal((await loadConfig({ ...base, ISLAND_FUSE_THREADS: '8' })).fuseThreads, 8);
  t.ok((await loadConfig(base)).fuseThreads >= 4, 'at least 4 threads by default');
  await t.rejects(loadConfig({ ...base, ISLAND_FUSE: 'libfuse3' }), { code: 'INVALID_CONFIG', message: /ISLAND_FUSE/ });
  await t.rejects(loadConfig({ ...base, ISLAND_FUSE_THREADS: '0' }), { code: 'INVALID_CONFIG', message: /ISLAND_FUSE_THREADS/ });
  await t.rejects(loadConfig({ ...base, ISLAND_FUSE_THREADS: '65' }), { code: 'INVALID_CONFIG', message: /ISLAND_FUSE_THREADS/ });
});

t.test('ISLAND_WRITE_PATH: native by default, typescript on request, anything else refused', async (t) => {
  const base = { ISLAND_HOST_ID: 'h' };
  t.equal((await loadConfig(base)).writePath, 'native');
  t.equal((await loadConfig({ ...base, ISLAND_WRITE_PATH: 'typescript' })).writePath, 'typescript');
  await t.rejects(loadConfig({ ...base, ISLAND_WRITE_PATH: 'c' }), { code: 'INVALID_CONFIG', message: /ISLAND_WRITE_PATH/ });
});

t.test('the daemon says which FUSE server serves, in its log and in status', { skip: !existsSync('/dev/fuse') && 'no /dev/fuse' }, async (t) => {
  const h = await makeHost(t);
  await createVolume(h, 'tv', 64 * 2 ** 20);
  await serve(h);
  const status = await cliJson(h, 'status');
  const fuse = status.fuse as { transport: string; threads?: number; parallelDirectWrites?: boolean; nativeFiles?: number; javascriptFiles?: number };
  t.equal(fuse.transport, expected, `status: ${expected}`);
  t.equal(status.writePath, writePath, `status: the ${writePath} write path`);
  t.same((status.volumes as { writePath: string }[]).map((v) => v.writePath), [writePath], 'the volume runs on it');
  if (expected === 'native') {
    t.ok((fuse.threads ?? 0) >= 4, 'with its thread count');
    t.equal(fuse.parallelDirectWrites, true, 'and parallel direct writes on this kernel');
    t.same([fuse.nativeFiles, fuse.javascriptFiles], writePath === 'native' ? [1, 0] : [0, 1], 'a volume on the native write path is served in C alone');
  }
  t.match(await log(h), new RegExp(`FUSE transport: ${expected === 'native' ? 'native server' : 'fuse-native'}`), 'the log line');
  const io = await run('qemu-io', ['-c', 'write -P 0x3c 0 64k', '-c', 'read -P 0x3c 0 64k', image(h, 'tv')]);
  t.match(io.stdout, /read 65536\/65536 bytes/, 'qemu-io writes and reads through it');
  t.notMatch(io.stdout + io.stderr, /fail|error/i, 'the pattern verifies');
});
