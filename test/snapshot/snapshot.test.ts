/**
 * Snapshots to a real Swift, through the daemon, of volumes QEMU writes on the mount:
 * each snapshot read back through its tree equals the image at its seal, is a valid
 * qcow2 image, and uploads only what changed.
 */
import { spawn } from 'node:child_process';
import { copyFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { cli, cliJson, image, kill, makeHost, run, serve, useS3, type Host } from '../helpers/daemon.js';
import { uniqueBucket, useSwift, type SwiftInfo } from '../helpers/swift.js';

interface Snap {
  id: string;
  changedClusters: number;
  uploadedBlobs: number;
  reusedBlobs: number;
  zeroClusters: number;
  packs: number;
  warnings: string[];
}

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`snapshot tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  async function host(t: Parameters<Parameters<typeof t.test>[1]>[0], name: string): Promise<{ h: Host; repo: Repository }> {
    const h = await makeHost(t, name);
    const bucket = uniqueBucket('snap');
    await useS3(h, swift, bucket);
    await serve(h);
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    return { h, repo: new Repository(store, { host: 'checker' }) };
  }

  async function snapshot(h: Host, vol: string): Promise<Snap> {
    const r = await cliJson(h, 'snapshot', 'create', vol);
    return (r.snapshots as Snap[])[0] as Snap;
  }

  async function exported(repo: Repository, id: string, path: string): Promise<void> {
    const m = await findSnapshot(repo, id);
    if (!m) throw new Error(`snapshot ${id} not found`);
    await exportSnapshot(repo, m, path);
  }

  t.test('snapshots equal the image at the seal and pass qemu-img check', async (t) => {
    const { h, repo } = await host(t, 'snap-a');
    await cliJson(h, 'volume', 'create', 'vm', '--size', '8G');
    await cliJson(h, 'attach', 'vm');
    const f = image(h, 'vm');
    const copies: [string, string][] = [];
    const writes = ['write -P 0x11 0 4M', 'write -P 0x22 2G 1M', 'write -z 1M 1M', 'write -P 0x33 7G 64k'];
    for (const [i, w] of writes.entries()) {
      await run('qemu-io', ['-t', 'none', '-c', w, f]);
      const s = await snapshot(h, 'vm');
      const copy = join(h.dataDir, `at-seal-${i}.qcow2`);
      await copyFile(f, copy); // nothing writes between the seal and this copy
      copies.push([s.id, copy]);
    }
    for (const [id, copy] of copies) {
      const out = join(h.dataDir, `export-${id}.qcow2`);
      await exported(repo, id, out);
      t.match((await run('qemu-img', ['compare', out, copy])).stdout, /Images are identical/, `snapshot ${id} equals the image at its seal`);
      const cmp = await run('cmp', [out, copy]).then(() => 'same', () => 'differ');
      t.equal(cmp, 'same', '... byte for byte, qcow2 metadata included');
      t.match((await run('qemu-img', ['check', out])).stdout, /No errors were found/, '... and is a valid qcow2 image');
    }
    const list = await cliJson(h, 'snapshot', 'list', 'vm');
    t.equal((list.snapshots as unknown[]).length, writes.length, 'snapshot list shows them all');
    const show = await cliJson(h, 'snapshot', 'show', copies[0]?.[0] as string);
    t.equal(show.consistency, 'crash');
    t.same(show.warnings, [], 'a fresh island image raises no warnings');
  });

  t.test('a snapshot uploads only what changed (store counts, not timing)', async (t) => {
    const { h } = await host(t, 'snap-b');
    await cliJson(h, 'volume', 'create', 'big', '--size', '64G');
    await cliJson(h, 'attach', 'big');
    const f = image(h, 'big');
    await run('qemu-io', ['-c', 'write -P 0x5a 0 32M', f]);
    const first = await snapshot(h, 'big');
    t.ok(first.changedClusters >= 512, `the first snapshot has the 512 data clusters and metadata (${first.changedClusters})`);
    const k = 5;
    for (let i = 0; i < k; i++) await run('qemu-io', ['-c', `write -P ${0x60 + i} ${i * 64 + 8}M 64k`, f]);
    const second = await snapshot(h, 'big');
    t.ok(second.changedClusters >= k && second.changedClusters <= k + 8, `${second.changedClusters} clusters changed: the ${k} written plus the qcow2 metadata QEMU updated`);
    t.ok(second.uploadedBlobs <= second.changedClusters, `${second.uploadedBlobs} blobs uploaded`);
    const idle = await snapshot(h, 'big');
    t.equal(idle.changedClusters, 0, 'nothing changed: nothing uploaded');
    t.equal(idle.uploadedBlobs, 0);
    const zero = await run('qemu-io', ['-c', 'write -z -u 0 8M', f]).then(() => snapshot(h, 'big'));
    t.ok(zero.zeroClusters + zero.changedClusters > 0, 'zeroed clusters become zero entries or unallocated, not blobs');
  });

  t.test('overwrites racing the upload never produce a torn cluster', async (t) => {
    const { h, repo } = await host(t, 'snap-c');
    await cliJson(h, 'volume', 'create', 'torn', '--size', '1G');
    await cliJson(h, 'attach', 'torn');
    const f = image(h, 'torn');
    // A writer rewrites 64 whole clusters (past the qcow2 metadata) with one byte value
    // per pass, as fast as it can, while snapshots are taken.
    const script = `
      const fs = require('fs'); const fd = fs.openSync(${JSON.stringify(f)}, 'r+');
      const C = 65536, base = 64 * C; let v = 1;
      const end = Date.now() + 4000;
      while (Date.now() < end) { const b = Buffer.alloc(C, v); for (let c = 0; c < 64; c++) fs.writeSync(fd, b, 0, C, base + c * C); v = v % 250 + 1; }
      fs.fsyncSync(fd); fs.closeSync(fd);`;
    const writer = spawn(process.execPath, ['-e', script], { stdio: 'ignore' });
    t.teardown(() => writer.kill('SIGKILL'));
    const ids: string[] = [];
    const finished = new Promise((r) => writer.once('exit', r));
    let racing = true;
    void finished.then(() => (racing = false));
    while (racing || ids.length < 2) ids.push((await snapshot(h, 'torn')).id);
    await finished;
    for (const id of ids) {
      const out = join(h.dataDir, `torn-${id}`);
      await exported(repo, id, out);
      const fh = await open(out, 'r');
      const buf = Buffer.alloc(65536);
      let torn = 0;
      for (let c = 64; c < 128; c++) {
        const { bytesRead } = await fh.read(buf, 0, 65536, c * 65536);
        if (bytesRead === 0) continue;
        const first = buf[0];
        if (!buf.subarray(0, bytesRead).every((x) => x === first)) torn++;
      }
      await fh.close();
      t.equal(torn, 0, `snapshot ${id}: every cluster holds one pass's bytes`);
    }
    t.ok(ids.length >= 2, `${ids.length} snapshots taken while the writer ran`);
  });

  t.test('detach takes a final snapshot; a killed daemon resumes with nothing forgotten', async (t) => {
    const { h, repo } = await host(t, 'snap-d');
    await cliJson(h, 'volume', 'create', 'fin', '--size', '2G');
    await cliJson(h, 'attach', 'fin');
    const f = image(h, 'fin');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x71 0 2M', '-c', 'flush', f]);
    await snapshot(h, 'fin');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x72 1G 1M', '-c', 'flush', f]);
    await kill(h, 'SIGKILL');
    await serve(h);
    const after = await snapshot(h, 'fin');
    t.ok(after.changedClusters >= 16, `the change made before the crash is in the next snapshot (${after.changedClusters} clusters)`);
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x73 1500M 64k', '-c', 'flush', f]);
    const before = await run('qemu-img', ['convert', '-O', 'raw', f, join(h.dataDir, 'before.raw')]);
    t.ok(before);
    const det = await cli(h, 'detach', 'fin', '--json');
    t.equal(det.code, 0, det.stderr);
    const list = (await cliJson(h, 'snapshot', 'list', 'fin')).snapshots as { id: string }[];
    const last = list[list.length - 1] as { id: string };
    const out = join(h.dataDir, 'final.qcow2');
    await exported(repo, last.id, out);
    await run('qemu-img', ['convert', '-O', 'raw', out, join(h.dataDir, 'final.raw')]);
    t.equal(await run('cmp', [join(h.dataDir, 'final.raw'), join(h.dataDir, 'before.raw')]).then(() => 'same', () => 'differ'), 'same', 'the final snapshot holds the guest view at detach');
  });
}
