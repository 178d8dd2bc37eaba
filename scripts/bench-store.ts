/**
 * Raw object store throughput: the yardstick island's upload and restore figures are
 * divided by. PUT and GET of 1 MiB objects (and 4 KiB for latency) at a fixed
 * concurrency, through the same S3 client island uses, against a real Swift.
 *
 *   npx tsx scripts/bench-store.ts [--swift swift.json] [--mib 256] [--concurrency 16]
 *
 * Without --swift it starts a private Swift (scripts/swift.sh) and stops it after.
 * Prints MiB/s and request latency percentiles; `--json` for the report script.
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { S3Store } from '../src/store/s3.js';
import { Semaphore } from '../src/store/limit.js';
import { withSwift } from './bench-swift.js';

const { values } = parseArgs({ options: { swift: { type: 'string' }, mib: { type: 'string', default: '256' }, concurrency: { type: 'string', default: '16' }, json: { type: 'boolean', default: false } } });

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

async function phase(n: number, conc: number, fn: (i: number) => Promise<void>): Promise<{ secs: number; lat: number[] }> {
  const sem = new Semaphore(conc);
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(Array.from({ length: n }, (_, i) => sem.run(async () => {
    const s = performance.now();
    await fn(i);
    lat.push(performance.now() - s);
  })));
  return { secs: (performance.now() - t0) / 1000, lat };
}

await withSwift(values.swift, async (cfg) => {
  const conc = Number(values.concurrency);
  const n = Number(values.mib);
  const store = new S3Store({ ...cfg, bucket: `bench-${Date.now().toString(36)}`, maxSockets: conc });
  const body = randomBytes(1 << 20);
  const small = randomBytes(4096);
  await store.put('warmup', small);
  const put = await phase(n, conc, (i) => store.put(`mib/${i}`, body));
  const get = await phase(n, conc, async (i) => void (await store.get(`mib/${i}`)));
  const range = await phase(n, conc, async (i) => void (await store.getRange(`mib/${i}`, 65536, 512 * 1024)));
  const sput = await phase(400, conc, (i) => store.put(`small/${i}`, small));
  const sget = await phase(400, conc, async (i) => void (await store.get(`small/${i}`)));
  const report = {
    client: '@aws-sdk/client-s3 (as island uses it)',
    concurrency: conc,
    putMiBs: n / put.secs,
    getMiBs: n / get.secs,
    rangeGet512KiBMiBs: (n * 0.5) / range.secs,
    put4kP50ms: pct(sput.lat, 50),
    put4kP99ms: pct(sput.lat, 99),
    get4kP50ms: pct(sget.lat, 50),
    get4kP99ms: pct(sget.lat, 99),
  };
  const keys = [...Array.from({ length: n }, (_, i) => `mib/${i}`), ...Array.from({ length: 400 }, (_, i) => `small/${i}`), 'warmup'];
  await store.deleteMany(keys);
  await store.close();
  if (values.json) console.log(JSON.stringify(report));
  else {
    console.log(`raw Swift S3 throughput, ${report.client}, concurrency ${conc}, ${n} x 1 MiB`);
    console.log(`  PUT 1 MiB          ${report.putMiBs.toFixed(1)} MiB/s`);
    console.log(`  GET 1 MiB          ${report.getMiBs.toFixed(1)} MiB/s`);
    console.log(`  GET 512 KiB range  ${report.rangeGet512KiBMiBs.toFixed(1)} MiB/s`);
    console.log(`  PUT 4 KiB          p50 ${report.put4kP50ms.toFixed(1)} ms  p99 ${report.put4kP99ms.toFixed(1)} ms`);
    console.log(`  GET 4 KiB          p50 ${report.get4kP50ms.toFixed(1)} ms  p99 ${report.get4kP99ms.toFixed(1)} ms`);
  }
});
