/**
 * Deleting snapshots and GC on a real Swift: a history of snapshots with overlapping
 * changes, deleted in a random order with GC after each step; every remaining snapshot
 * stays byte-identical to the image at its seal, and deleted data is freed.
 */
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { Repository } from '../../src/repo/repository.js';
import { findSnapshot } from '../../src/repo/snapshots.js';
import { exportSnapshot } from '../../src/snapshot/export.js';
import { S3Store } from '../../src/store/s3.js';
import { listAll } from '../../src/store/types.js';
import { Rng } from '../../src/util/random.js';
import { cli, cliJson, image, makeHost, run, serve, useS3 } from '../helpers/daemon.js';
import { uniqueBucket, useSwift } from '../helpers/swift.js';

const got = await useSwift(t);
if ('skip' in got) {
  t.skip(`GC tests need Swift: ${got.skip}`);
} else {
  const swift = got.swift;

  t.test('delete any snapshot in any order: the others restore exactly and space is freed', async (t) => {
    const bucket = uniqueBucket('gc');
    const h = await makeHost(t, 'gc-host');
    h.env = { ISLAND_GC_GRACE: '0' };
    await useS3(h, swift, bucket);
    await serve(h);
    const store = new S3Store({ ...swift, bucket });
    t.teardown(() => store.close());
    const repo = new Repository(store, { host: 'checker' });
    await cliJson(h, 'volume', 'create', 'hist', '--size', '2G');
    await cliJson(h, 'attach', 'hist');
    const f = image(h, 'hist');
    const rng = new Rng(7);
    const history: { id: string; copy: string }[] = [];
    for (let i = 0; i < 6; i++) {
      // Overlapping changes: each step rewrites some clusters earlier steps wrote.
      const cmds = Array.from({ length: 4 }, () => ['-c', `write -P ${1 + rng.int(250)} ${rng.int(48)}M ${1 + rng.int(3)}M`]).flat();
      await run('qemu-io', ['-t', 'none', ...cmds, f]);
      const s = ((await cliJson(h, 'snapshot', 'create', 'hist')).snapshots as { id: string }[])[0] as { id: string };
      const copy = join(h.dataDir, `seal-${i}`);
      await copyFile(f, copy);
      history.push({ id: s.id, copy });
    }
    const packBytes = async (): Promise<number> => {
      let n = 0;
      for (const prefix of ['data/', 'meta/']) for await (const o of listAll(store, prefix)) n += o.size;
      return n;
    };
    const before = await packBytes();
    const order = rng.shuffle([...history]);
    const remaining = new Set(history.map((x) => x.id));
    for (const victim of order.slice(0, 5)) {
      await cliJson(h, 'snapshot', 'delete', victim.id);
      remaining.delete(victim.id);
      const gc = await cliJson(h, 'gc');
      t.ok(Array.isArray(gc.packsDeleted), `gc after deleting ${victim.id}: ${(gc.packsDeleted as unknown[]).length} packs freed`);
      for (const snap of history.filter((x) => remaining.has(x.id))) {
        const m = await findSnapshot(repo, snap.id);
        const out = join(h.dataDir, `check-${snap.id}`);
        await exportSnapshot(repo, m as NonNullable<typeof m>, out);
        const same = await run('cmp', [out, snap.copy]).then(() => true, () => false);
        t.ok(same, `  ${snap.id} still restores byte-identical`);
      }
    }
    const after = await packBytes();
    t.ok(after < before, `pack bytes went from ${before} to ${after}`);
    const again = await cli(h, 'snapshot', 'delete', order[0]?.id as string);
    t.match(again.stderr, /NOT_FOUND|SNAPSHOT_DELETED/, 'deleting a deleted snapshot is a clear error');
    const bad = await cli(h, 'snapshot', 'delete', 'not-an-id');
    t.match(bad.stderr, /INVALID_ARGUMENT/, 'a malformed id is refused');
    const dry = await cliJson(h, 'gc', '--dry-run');
    t.equal((dry.packsDeleted as unknown[]).length, 0, 'nothing left to free');
  });
}
