/**
 * Randomized model test of the volume engine over a simulated disk that loses (and tears)
 * everything not synced when the host crashes.
 *
 * Model: the image as a plain Buffer, the image as of the last fsync, which bytes changed
 * since, and the image as of the last completed seal. After every recovery:
 *   - every byte that was fsynced (and not changed since) is intact;
 *   - every cluster whose content differs from the last completed seal is dirty: change
 *     tracking is never lost (saved dirty bits, the intent rescan, merged sealed epochs).
 * While a seal is open, readSealed must return the content at the seal however the guest
 * overwrites it, and at each seal the sealed set must cover every change since the last
 * completed seal.
 *
 * A crash inside complete must leave the committed snapshot id and the completed epoch of
 * the state record both old or both new; after every recovery the volume's committed id is
 * the id of the last completed seal the model knows of.
 *
 * Crashes come between operations, in the middle of several concurrent ones (writes, a new
 * intent epoch, fsync, abandon-and-seal, truncate: the power is cut at a random disk
 * operation, so also between a page write and its sync), and during recovery itself. The
 * simulated disk tears every unsynced write at 512-byte sectors.
 *
 * ISLAND_SEED=n picks one seed, ISLAND_OPS=n the operations per run.
 */
import t, { type Test } from 'tap';
import { Volume, type Seal } from '../../src/volume/engine.js';
import { MemFs } from '../../src/volume/memfs.js';
import { readState } from '../../src/volume/state.js';
import { Rng } from '../../src/util/random.js';
import { ulid } from '../../src/format/ulid.js';

interface Config {
  clusterSize: number;
  regionSize: number;
  maxLen: number;
  sideLogBudget: number;
}

const DIR = '/data/vol';
const OPS = Number(process.env['ISLAND_OPS'] ?? 1500);
const TRACE = process.env['ISLAND_TRACE'] !== undefined;
const SEEDS = process.env['ISLAND_SEED'] !== undefined ? [Number(process.env['ISLAND_SEED'])] : [1, 2, 3, 4];

function configFor(seed: number): Config {
  const rng = new Rng(seed * 7919);
  const clusterSize = rng.pick([4096, 4096, 8192, 65536]);
  return {
    clusterSize,
    regionSize: clusterSize * rng.pick([4, 16, 64]),
    maxLen: clusterSize * (clusterSize === 65536 ? 48 : 256),
    sideLogBudget: clusterSize * rng.pick([4, 16, 1024]),
  };
}

class Model {
  cur: Buffer;
  len: number;
  durable: Buffer;
  durableLen: number;
  unsettled: Uint8Array;
  lenUnsettled = false;
  completed: Buffer;
  completedLen = 0;
  seal: { handle: Seal; image: Buffer; len: number } | null = null;
  /** The snapshot id of the last completed seal (null before the first). */
  committed: string | null = null;

  constructor(readonly cfg: Config) {
    this.cur = Buffer.alloc(cfg.maxLen);
    this.durable = Buffer.alloc(cfg.maxLen);
    this.unsettled = new Uint8Array(cfg.maxLen);
    this.completed = Buffer.alloc(cfg.maxLen);
    this.len = 0;
    this.durableLen = 0;
  }

  write(data: Buffer, off: number): void {
    data.copy(this.cur, off);
    this.unsettled.fill(1, off, off + data.length);
    if (off + data.length > this.len) {
      this.len = off + data.length;
      this.lenUnsettled = true;
    }
  }

  truncate(n: number): void {
    if (n === this.len) return;
    this.unsettled.fill(1, Math.min(n, this.len), Math.max(n, this.len));
    if (n < this.len) this.cur.fill(0, n, this.len);
    this.len = n;
    this.lenUnsettled = true;
  }

  fsynced(): void {
    this.cur.copy(this.durable);
    this.durableLen = this.len;
    this.unsettled.fill(0);
    this.lenUnsettled = false;
  }

  /** Padded content of cluster c in an image of length len. */
  cluster(img: Buffer, len: number, c: number): Buffer {
    const C = this.cfg.clusterSize;
    const out = Buffer.alloc(C);
    const end = Math.min(len, (c + 1) * C);
    if (end > c * C) img.copy(out, 0, c * C, end);
    return out;
  }

  sealedContent(c: number): Buffer {
    const s = this.seal;
    if (s === null) throw new Error('no seal');
    const C = this.cfg.clusterSize;
    const n = Math.max(0, Math.min(C, s.len - c * C));
    return s.image.subarray(c * C, c * C + n);
  }

  /** Clusters whose content differs from the last completed seal's. */
  changed(img: Buffer, len: number): number[] {
    const out: number[] = [];
    const n = Math.ceil(Math.max(len, this.completedLen) / this.cfg.clusterSize);
    for (let c = 0; c < n; c++) if (!this.cluster(img, len, c).equals(this.cluster(this.completed, this.completedLen, c))) out.push(c);
    return out;
  }
}

async function image(v: Volume, max: number): Promise<Buffer> {
  const b = Buffer.alloc(max);
  await v.read(b.subarray(0, v.length), 0);
  return b;
}

async function run(t: Test, seed: number): Promise<void> {
  const cfg = configFor(seed);
  const rng = new Rng(seed);
  const fs = new MemFs({ rng: new Rng(seed + 1_000_003), maxYields: 1 });
  const opts = { fs, flushIntervalMs: 0, sideLogBudget: cfg.sideLogBudget };
  let v = await Volume.create(DIR, { name: 'model', virtualSize: 64 * 1024 * 1024, clusterSize: cfg.clusterSize, regionSize: cfg.regionSize, generation: 1, ...opts });
  const m = new Model(cfg);
  const C = cfg.clusterSize;
  const header = await image(v, cfg.maxLen);
  m.write(header.subarray(0, v.length), 0);
  m.fsynced();
  const counts: Record<string, number> = {};
  const totals = { sideLogCopies: 0, readSealedRetries: 0, zeroClusters: 0, intentSyncs: 0 };
  const retire = (old: Volume): void => {
    const st = old.stats();
    totals.sideLogCopies += st.sideLogCopies;
    totals.readSealedRetries += st.readSealedRetries;
    totals.zeroClusters += st.zeroClusters;
    totals.intentSyncs += st.fdatasyncs.intent;
  };
  let step = 0;
  const fail = (what: string): never => {
    throw new Error(`seed ${seed}, step ${step}: ${what} (rerun with ISLAND_SEED=${seed})`);
  };

  const randomWrite = (span: [number, number] | null): [Buffer, number] => {
    let off: number;
    let len: number;
    const kind = rng.int(10);
    if (kind < 3) {
      len = C * (1 + rng.int(4));
      off = C * rng.int(cfg.maxLen / C - 4);
    } else if (kind < 7) {
      len = 1 + rng.int(3 * C);
      off = rng.int(cfg.maxLen - len);
    } else {
      len = 1 + rng.int(600);
      off = rng.int(cfg.maxLen - len);
    }
    if (span !== null) {
      // Confine to clusters [span0, span1) so concurrent writes never overlap.
      const lo = span[0] * C;
      const hi = span[1] * C;
      len = Math.min(len, hi - lo);
      off = lo + rng.int(hi - lo - len + 1);
    }
    const zeros = rng.chance(0.25);
    return [zeros ? Buffer.alloc(len) : rng.bytes(len), off];
  };

  const checkSealRead = async (c: number): Promise<void> => {
    const s = m.seal;
    if (s === null) return;
    let got: Buffer;
    try {
      got = await s.handle.readSealed(c);
    } catch (err) {
      // A concurrent write may have run the side log over its budget.
      if ((err as { code?: string }).code === 'ABORTED' && s.handle.status === 'abandoned') return;
      throw err;
    }
    if (!got.equals(m.sealedContent(c))) fail(`readSealed(${c}) differs from the content at the seal`);
  };

  const unuploaded = (): number[] => {
    const s = m.seal;
    if (s === null) return [];
    return [...s.handle.clusters()].filter((c) => !uploaded.has(c));
  };
  let uploaded = new Set<number>();

  const afterRecovery = async (clean: boolean): Promise<void> => {
    const img = await image(v, cfg.maxLen);
    const len = v.length;
    if (!m.lenUnsettled && len !== m.durableLen) fail(`length ${len} after recovery, ${m.durableLen} fsynced`);
    const upto = Math.min(len, m.durableLen);
    for (let i = 0; i < upto; i++) {
      if (m.unsettled[i] === 0 && img[i] !== m.durable[i]) fail(`fsynced byte ${i} lost: ${img.subarray(i, i + 8).toString('hex')} instead of ${m.durable.subarray(i, i + 8).toString('hex')}`);
    }
    if (clean && (len !== m.len || !img.subarray(0, len).equals(m.cur.subarray(0, len)))) fail('a clean close lost data');
    const dirty = new Set(v.dirtyClusters());
    for (const c of m.changed(img, len)) if (!dirty.has(c)) fail(`cluster ${c} changed since the last completed seal but is not dirty`);
    // The model takes what survived.
    m.cur.fill(0);
    img.copy(m.cur, 0, 0, len);
    m.len = len;
    m.fsynced();
    m.seal = null;
    uploaded = new Set();
  };

  /**
   * Cut the power after a random number of disk operations, with several operations in flight,
   * each started after a random number of event-loop turns (so that writes also land in the
   * middle of a seal, a new intent epoch or a background persist).
   */
  const crashInFlight = async (): Promise<void> => {
    const at = 1 + rng.int(40);
    const crashRng = new Rng(rng.u32());
    let seen = 0;
    fs.onOp = () => {
      if (++seen === at) fs.crash(crashRng);
    };
    const actions: Array<() => Promise<unknown>> = [];
    let wrong: string | null = null;
    const n = 1 + rng.int(4);
    const width = Math.floor(cfg.maxLen / C / n);
    for (let i = 0; i < n; i++) {
      const [d, o] = randomWrite([i * width, (i + 1) * width]);
      m.write(d, o); // unsettled: may or may not survive
      actions.push(() => v.write(d, o));
    }
    if (rng.chance(0.4)) actions.push(() => v.flushBitmaps());
    if (rng.chance(0.3)) actions.push(() => v.fsync()); // not known to complete: proves nothing
    const open = m.seal;
    if (open !== null && rng.chance(0.5)) {
      // Abandon (merging the sealed set back) and seal again at once.
      actions.push(async () => {
        await open.handle.abandon();
        await v.seal();
      });
    } else if (open === null && rng.chance(0.3)) {
      actions.push(() => v.seal());
    }
    if (rng.chance(0.1)) {
      const len = rng.int(cfg.maxLen);
      m.truncate(len);
      actions.push(() => v.truncate(len));
    }
    const sealed = unuploaded();
    if (open !== null && sealed.length > 0) {
      const c = rng.pick(sealed);
      actions.push(async () => {
        const got = await open.handle.readSealed(c).catch(() => null); // aborted or cut by the crash
        if (got !== null && !got.equals(m.sealedContent(c))) wrong = `readSealed(${c}) differs from the content at the seal`;
      });
    }
    const delays = actions.map(() => rng.int(8));
    await Promise.allSettled(
      actions.map(async (action, i) => {
        for (let k = 0; k < (delays[i] ?? 0); k++) await new Promise<void>((resolve) => setImmediate(resolve));
        return action();
      }),
    );
    fs.onOp = undefined;
    if (seen < at) fs.crash(crashRng);
    if (wrong !== null) fail(wrong);
  };

  const recover = async (): Promise<void> => {
    retire(v);
    // Sometimes the power fails again while open() recovers.
    for (let attempt = 0; ; attempt++) {
      if (attempt < 2 && rng.chance(0.2)) {
        const at = 1 + rng.int(30);
        let seen = 0;
        fs.onOp = () => {
          if (++seen === at) fs.crash(rng);
        };
        try {
          const w = await Volume.open(DIR, opts);
          fs.onOp = undefined;
          v = w;
          break;
        } catch {
          fs.onOp = undefined;
          counts['crash during recovery'] = (counts['crash during recovery'] ?? 0) + 1;
          if (seen < at) fs.crash(rng);
          continue;
        }
      }
      v = await Volume.open(DIR, opts);
      break;
    }
    if (v.recovery.clean) fail('recovery after a crash claims a clean shutdown');
    if (v.committedSnapshot !== m.committed) fail(`committed snapshot ${v.committedSnapshot} after recovery, ${m.committed} completed`);
    counts['rescanned regions'] = (counts['rescanned regions'] ?? 0) + v.recovery.rescannedRegions;
    await afterRecovery(false);
  };

  for (step = 0; step < OPS; step++) {
    const r = rng.int(100);
    let op: string;
    let detail = '';
    if (m.seal !== null && m.seal.handle.status === 'abandoned') {
      // The side log ran over its budget: the seal is gone, its changes are dirty again.
      m.seal = null;
      counts['auto-abandoned'] = (counts['auto-abandoned'] ?? 0) + 1;
    }
    if (r < 35) {
      op = 'write';
      const [data, off] = randomWrite(null);
      await v.write(data, off);
      m.write(data, off);
      detail = `${off}+${data.length}${data.every((b) => b === 0) ? ' zeros' : ''}`;
    } else if (r < 45) {
      op = 'concurrent writes';
      const n = 2 + rng.int(3);
      const width = Math.floor(cfg.maxLen / C / n);
      const writes: Array<[Buffer, number]> = [];
      for (let i = 0; i < n; i++) writes.push(randomWrite([i * width, (i + 1) * width]));
      const sealed = unuploaded();
      const reads = m.seal === null ? [] : Array.from({ length: Math.min(3, sealed.length) }, () => rng.pick(sealed));
      await Promise.all([...writes.map(([d, o]) => v.write(d, o)), ...reads.map((c) => checkSealRead(c))]);
      for (const [d, o] of writes) m.write(d, o);
      detail = writes.map(([d, o]) => `${o}+${d.length}`).join(' ');
    } else if (r < 52) {
      op = 'read';
      const off = rng.int(cfg.maxLen);
      const buf = Buffer.alloc(1 + rng.int(3 * C));
      const n = await v.read(buf, off);
      const want = Math.max(0, Math.min(buf.length, m.len - off));
      if (n !== want || !buf.subarray(0, n).equals(m.cur.subarray(off, off + n))) fail(`read ${off}+${buf.length}`);
    } else if (r < 60) {
      op = 'fsync';
      await v.fsync();
      m.fsynced();
    } else if (r < 62) {
      op = 'truncate';
      const n = rng.chance(0.5) ? rng.int(cfg.maxLen) : C * rng.int(cfg.maxLen / C);
      await v.truncate(n);
      m.truncate(n);
      detail = String(n);
    } else if (r < 67) {
      op = 'seal';
      if (m.seal !== null) {
        await v.seal().then(
          () => fail('a second seal was accepted'),
          (err: { code?: string }) => {
            if (err.code !== 'BUSY') throw err;
          },
        );
      } else {
        // Writes issued in the same tick as the seal are inside it (the seal drains them).
        const writes = rng.chance(0.5) ? [randomWrite(null)] : [];
        const pending = writes.map(([d, o]) => v.write(d, o));
        const sealing = v.seal();
        const [handle] = await Promise.all([sealing, ...pending]);
        for (const [d, o] of writes) m.write(d, o);
        m.seal = { handle, image: Buffer.from(m.cur), len: m.len };
        uploaded = new Set();
        const sealed = new Set(handle.clusters());
        for (const c of m.changed(m.cur, m.len)) if (!sealed.has(c)) fail(`cluster ${c} changed since the last completed seal but is not sealed`);
      }
    } else if (r < 77) {
      op = 'readSealed';
      const sealed = unuploaded();
      if (sealed.length > 0) await checkSealRead(rng.pick(sealed));
    } else if (r < 80) {
      op = 'markUploaded';
      const sealed = unuploaded();
      if (sealed.length > 0 && m.seal !== null) {
        const c = rng.pick(sealed);
        await checkSealRead(c);
        m.seal.handle.markUploaded(c);
        uploaded.add(c);
      }
    } else if (r < 84) {
      op = 'complete';
      if (m.seal !== null) {
        for (const c of unuploaded()) await checkSealRead(c);
        const id = ulid();
        if (rng.chance(0.3)) {
          // The power fails inside complete: the state record holds the old committed id with
          // the old completed epoch, or the new id with the sealed epoch, never a mix.
          op = 'crash inside complete';
          const before = await readState(fs, DIR);
          const at = 1 + rng.int(8);
          const crashRng = new Rng(rng.u32());
          let seen = 0;
          fs.onOp = () => {
            if (++seen === at) fs.crash(crashRng);
          };
          await m.seal.handle.complete(id).catch(() => undefined);
          fs.onOp = undefined;
          if (seen < at) fs.crash(crashRng);
          const after = await readState(fs, DIR);
          if (after.committedSnapshot === id) {
            if (after.completedEpoch !== m.seal.handle.epoch) fail(`committed ${id} with completed epoch ${after.completedEpoch}, sealed epoch ${m.seal.handle.epoch}`);
            m.seal.image.copy(m.completed);
            m.completedLen = m.seal.len;
            m.committed = id;
            counts['complete survived the crash'] = (counts['complete survived the crash'] ?? 0) + 1;
          } else if (after.committedSnapshot !== before.committedSnapshot || after.completedEpoch !== before.completedEpoch) {
            fail(`after a crash inside complete: committed ${after.committedSnapshot} at completed epoch ${after.completedEpoch}, before ${before.committedSnapshot} at ${before.completedEpoch}`);
          }
          await recover();
        } else {
          await m.seal.handle.complete(id);
          m.seal.image.copy(m.completed);
          m.completedLen = m.seal.len;
          m.committed = id;
          m.seal = null;
        }
      }
    } else if (r < 86) {
      op = 'abandon';
      if (m.seal !== null) {
        await m.seal.handle.abandon();
        m.seal = null;
      }
    } else if (r < 91) {
      op = 'flushBitmaps';
      await v.flushBitmaps();
    } else if (r < 94) {
      op = 'crash';
      fs.crash(rng);
      await recover();
    } else if (r < 98) {
      op = 'crash in flight';
      await crashInFlight();
      await recover();
    } else {
      op = 'close and open';
      await v.close();
      retire(v);
      v = await Volume.open(DIR, opts);
      if (!v.recovery.clean || v.recovery.rescannedRegions !== 0) fail('a clean close was not recognised');
      if (v.committedSnapshot !== m.committed) fail(`committed snapshot ${v.committedSnapshot} after a clean close, ${m.committed} completed`);
      await afterRecovery(true);
    }
    counts[op] = (counts[op] ?? 0) + 1;
    if (TRACE) t.comment(`step ${step}: ${op} ${detail} len=${m.len}`);
  }
  await v.close();
  retire(v);
  t.comment(`seed ${seed} ${JSON.stringify(cfg)}: ${JSON.stringify(counts)} ${JSON.stringify(totals)}`);
  t.ok((counts['crash'] ?? 0) > 0 || OPS < 100, 'crashes happened');
  t.pass(`seed ${seed}: ${OPS} operations, invariants held`);
}

for (const seed of SEEDS) {
  t.test(`model, seed ${seed}`, async (t) => {
    try {
      await run(t, seed);
    } catch (err) {
      t.comment(`FAILED with seed ${seed}: rerun with ISLAND_SEED=${seed}`);
      throw err;
    }
  });
}
