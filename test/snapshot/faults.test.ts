/**
 * Store faults during snapshot uploads, with a real Swift behind a TCP relay the test
 * controls: while the store is unreachable a snapshot fails clearly and its changes go into
 * the next one; a daemon killed in the middle of an upload comes back, commits its changes
 * in the next snapshot, and leaves no committed snapshot pointing at a missing object.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { cli, cliJson, image, kill, makeHost, run, serve, useS3, waitFor } from '../helpers/daemon.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

/** A TCP relay to the store that can be cut (every connection refused and reset) or slowed. */
class Relay {
  mode: 'up' | 'down' = 'up';
  /** Delay per chunk relayed towards the store, in ms (slows uploads). */
  delayMs = 0;
  private readonly sockets = new Set<Socket>();
  private server: Server | undefined;
  port = 0;

  constructor(private readonly target: URL) {}

  async start(): Promise<void> {
    this.server = createServer((client) => {
      if (this.mode === 'down') return client.destroy();
      const upstream = connect(Number(this.target.port), this.target.hostname);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.on('data', (chunk) => {
        if (this.delayMs === 0) return void upstream.write(chunk);
        client.pause();
        setTimeout(() => {
          upstream.write(chunk);
          client.resume();
        }, this.delayMs);
      });
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as { port: number }).port;
  }

  cut(): void {
    this.mode = 'down';
    for (const s of this.sockets) s.destroy();
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server?.close(() => r()) ?? r());
  }
}

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`fault tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  t.test('a store outage fails the snapshot clearly; the next one carries its changes', async (t) => {
    const relay = new Relay(new URL(swift.endpoint));
    await relay.start();
    t.teardown(() => relay.stop());
    const bucket = uniqueBucket('faults');
    const h = await makeHost(t, 'faults-host');
    await useS3(h, { ...swift, endpoint: `http://127.0.0.1:${relay.port}` }, bucket);
    await serve(h);
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    const repo = new Repository(store, { host: 'checker' });

    await cliJson(h, 'volume', 'create', 'f', '--size', '1G');
    await cliJson(h, 'attach', 'f');
    const img = image(h, 'f');
    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x11 0 4M', '-c', 'flush', img]);
    await cliJson(h, 'snapshot', 'create', 'f');

    await run('qemu-io', ['-t', 'none', '-c', 'write -P 0x22 64M 4M', '-c', 'flush', img]);
    relay.cut();
    const failed = await cli(h, 'snapshot', 'create', 'f');
    t.not(failed.code, 0, 'the snapshot fails');
    t.match(failed.stderr, /STORE_(UNAVAILABLE|TIMEOUT)/, `with the store's error: ${failed.stderr.trim()}`);
    const still = await run('qemu-io', ['-t', 'none', '-c', 'read -P 0x22 64M 4M', img]);
    t.notMatch(still.stdout, /Pattern verification failed/, 'the volume keeps serving from local disk');

    relay.mode = 'up';
    const next = ((await cliJson(h, 'snapshot', 'create', 'f')).snapshots as { id: string; changedClusters: number }[])[0]!;
    t.ok(next.changedClusters >= 64, `the failed snapshot's changes are in the next one (${next.changedClusters} clusters)`);
    const out = join(h.dataDir, 'next.qcow2');
    await exportSnapshot(repo, (await findSnapshot(repo, next.id))!, out);
    t.match((await run('qemu-img', ['compare', out, img])).stdout, /Images are identical/);
  });

  t.test('a daemon killed mid-upload forgets no change and commits nothing dangling', async (t) => {
    const relay = new Relay(new URL(swift.endpoint));
    await relay.start();
    t.teardown(() => relay.stop());
    const bucket = uniqueBucket('midupload');
    const h = await makeHost(t, 'midupload-host');
    await useS3(h, { ...swift, endpoint: `http://127.0.0.1:${relay.port}` }, bucket);
    h.env = { ISLAND_GC_GRACE: '0', ISLAND_TEST_SWITCHES: '1' };
    await serve(h);
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    const repo = new Repository(store, { host: 'checker' });

    await cliJson(h, 'volume', 'create', 'm', '--size', '1G');
    await cliJson(h, 'attach', 'm');
    const img = image(h, 'm');
    // 48 MiB that does not compress: three packs' worth of upload.
    const data = join(h.dataDir, 'random.bin');
    await run('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1M', 'count=48', 'status=none']);
    await run('qemu-io', ['-t', 'none', '-c', `write -s ${data} 0 48M`, '-c', 'flush', img]);
    relay.delayMs = 20;
    const started = await cliJson(h, 'snapshot', 'create', 'm', '--no-wait');
    t.ok(started.started, 'the upload started');
    await waitFor('the upload under way', async () => {
      const s = (await cliJson(h, 'status')).volumes as { snapshot: { done: number } | null }[];
      return (s[0]?.snapshot?.done ?? 0) > 16;
    }, 60_000);
    await kill(h, 'SIGKILL');
    relay.delayMs = 0;
    t.same(((await repo.store.list('snapshots/')).items), [], 'nothing was committed');

    await serve(h);
    const again = ((await cliJson(h, 'snapshot', 'create', 'm')).snapshots as { id: string; changedClusters: number }[])[0]!;
    t.ok(again.changedClusters >= 768, `every sealed change is in the snapshot after the restart (${again.changedClusters} clusters)`);
    const out = join(h.dataDir, 'after.qcow2');
    await exportSnapshot(repo, (await findSnapshot(repo, again.id))!, out);
    t.match((await run('qemu-img', ['compare', out, img])).stdout, /Images are identical/);
    const fsck = await cli(h, 'fsck', '--json');
    const report = JSON.parse(fsck.stdout) as { exitCode: number; findings: { type: string; severity: string }[] };
    t.equal(report.findings.filter((f) => f.severity === 'error').length, 0, 'fsck: no committed snapshot points at a missing object');
  });
}
