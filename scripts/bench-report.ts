/**
 * Every benchmark in one run, written up: docs/benchmarks/REPORT.md, the SVG plots beside it
 * and REPORT.json (what the children printed, from which the report can be rendered again).
 *
 *   npx tsx scripts/bench-report.ts [--quick] [--only fuse,store,snapshot,fsck,restore]
 *       [--out docs/benchmarks] [--from REPORT.json]
 *
 * It builds island (`npx tsc -p .`), runs bench-fuse (no store involved), then starts ONE
 * private Swift (scripts/swift.sh, through withSwift) and runs bench-store, bench-snapshot,
 * bench-fsck at several store sizes and bench-restore against it, each as a child process
 * with `--swift FILE --json`, one after the other; the Swift is stopped by pid after, whatever
 * the outcome. The ratios in the report are against baselines measured in the same run.
 * The default sizes took 8 minutes on a shared 2-core machine at load 3-11 (longer under
 * heavier load); --quick runs smaller sizes.
 * `--from FILE` renders the report of an earlier run again without running anything.
 * Needs what the children need: root, /dev/fuse, fio, Debian's swift packages, and
 * qemu-storage-daemon for the qsd targets of bench-fuse (left out when it is missing).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { withSwift } from './bench-swift.js';
import { renderReport, type Machine, type ReportData, type Run } from './bench-report-render.js';

const run = promisify(execFile);
const ROOT = dirname(import.meta.dirname);
const BENCHES = ['fuse', 'store', 'snapshot', 'fsck', 'restore'] as const;
type Bench = (typeof BENCHES)[number];

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string', default: BENCHES.join(',') },
    out: { type: 'string', default: join(ROOT, 'docs/benchmarks') },
    from: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

/** Child arguments by benchmark; fsck runs once per store size. */
function plan(quick: boolean, haveQsd: boolean): { bench: Bench; label: string; args: string[] }[] {
  const targets = ['local', 'passthrough', 'passthrough-cached', 'island', ...(haveQsd ? ['qsd', 'qsd-cached'] : [])].join(',');
  const fuse = quick ? ['--size', '256M', '--runtime', '2', '--ramp', '0', '--reps', '1'] : ['--size', '512M', '--runtime', '3', '--ramp', '1', '--reps', '2'];
  const fsckSizes = quick ? ['32', '64'] : ['64', '128', '256'];
  return [
    { bench: 'fuse', label: 'fuse', args: [...fuse, '--targets', targets] },
    { bench: 'store', label: 'store', args: ['--mib', quick ? '32' : '64'] },
    { bench: 'snapshot', label: 'snapshot', args: ['--mib', quick ? '64' : '128'] },
    ...fsckSizes.map((mib) => ({ bench: 'fsck' as const, label: `fsck ${mib} MiB`, args: ['--mib', mib, '--snapshots', quick ? '4' : '8'] })),
    {
      bench: 'restore',
      label: 'restore',
      args: quick ? ['--mib', '32', '--reps', '1', '--sizes', '1,64', '--positions', '15'] : ['--mib', '64', '--reps', '1', '--sizes', '1,8,64', '--positions', '10,20'],
    },
  ];
}

const say = (s: string): void => void process.stderr.write(`bench-report: ${s}\n`);

/** The child running now, so a signal can be handed on to it (it cleans up after itself). */
let current: ChildProcess | null = null;
let stopped: NodeJS.Signals | null = null;
function onSignal(sig: NodeJS.Signals): void {
  if (stopped) return;
  stopped = sig;
  say(`${sig}: stopping the running benchmark, then the Swift`);
  current?.kill(sig);
}

/** One benchmark as a child process; its stderr is passed on line by line, its stdout kept. */
async function child(bench: Bench, label: string, args: string[], swiftJson: string | null): Promise<Run> {
  const full = [...args, ...(swiftJson ? ['--swift', swiftJson] : []), '--json'];
  const script = `scripts/bench-${bench}.ts`;
  const loadBefore = loadavg();
  const t0 = performance.now();
  say(`${label}: node --import tsx ${script} ${full.join(' ')}`);
  const proc = spawn(process.execPath, ['--import', 'tsx', script, ...full], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  current = proc;
  let out = '';
  let errTail = '';
  proc.stdout.on('data', (b: Buffer) => (out += b.toString('utf8')));
  proc.stderr.on('data', (b: Buffer) => {
    const text = b.toString('utf8');
    errTail = (errTail + text).slice(-4000);
    for (const line of text.split('\n')) if (line.trim()) process.stderr.write(`  [${label}] ${line}\n`);
  });
  const code = await new Promise<number | string>((res) => {
    proc.on('exit', (c, s) => res(c ?? s ?? 'unknown'));
    proc.on('error', (e) => res(e.message));
  });
  current = null;
  const secs = (performance.now() - t0) / 1000;
  const line = out.split('\n').reverse().find((l) => l.trim().startsWith('{'));
  let json: unknown = null;
  let error: string | null = null;
  try {
    json = line ? JSON.parse(line) : null;
  } catch (e) {
    error = `its JSON did not parse: ${(e as Error).message}`;
  }
  if (code !== 0) error = `exit ${code}: ${errTail.trim().split('\n').slice(-3).join(' / ')}`;
  else if (json === null) error ??= 'printed no JSON';
  say(`${label}: ${error ?? 'done'} in ${secs.toFixed(0)} s`);
  return { bench, label, command: `npx tsx ${script} ${full.join(' ')}`, secs, loadBefore, loadAfter: loadavg(), ok: error === null, error, json };
}

async function text(cmd: string, args: string[]): Promise<string> {
  return (await run(cmd, args).catch(() => ({ stdout: '?' }))).stdout.trim();
}

async function machine(): Promise<Omit<Machine, 'loadAfter' | 'uptimeAfter'>> {
  const os = await readFile('/etc/os-release', 'utf8').catch(() => '');
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? '?',
    memGiB: totalmem() / 2 ** 30,
    kernel: release(),
    os: /^PRETTY_NAME="?([^"\n]*)"?/m.exec(os)?.[1] ?? '?',
    node: process.version,
    fs: (await text('findmnt', ['-no', 'FSTYPE,SOURCE', '-T', tmpdir()])).replace(/\s+/g, ' '),
    fio: await text('fio', ['--version']),
    qsd: (await text('qemu-storage-daemon', ['--version'])).split('\n')[0] ?? '?',
    swift: await text('dpkg-query', ['-W', '-f', '${Version}', 'swift']),
    loadBefore: loadavg(),
    uptimeBefore: await text('uptime', []),
  };
}

async function write(out: string, data: ReportData): Promise<void> {
  await mkdir(out, { recursive: true });
  const { markdown, svgs } = renderReport(data);
  for (const [name, svg] of Object.entries(svgs)) await writeFile(join(out, name), svg);
  await writeFile(join(out, 'REPORT.md'), markdown);
  say(`wrote ${relative(ROOT, join(out, 'REPORT.md'))} and ${Object.keys(svgs).join(', ')}`);
}

async function main(): Promise<number> {
  if (values.help) {
    process.stdout.write('usage: npx tsx scripts/bench-report.ts [--quick] [--only fuse,store,snapshot,fsck,restore] [--out DIR] [--from REPORT.json]\n');
    return 0;
  }
  const out = resolve(values.out);
  if (values.from) {
    await write(out, JSON.parse(await readFile(values.from, 'utf8')) as ReportData);
    return 0;
  }
  const only = values.only.split(',').map((s) => s.trim()).filter(Boolean);
  for (const b of only) if (!(BENCHES as readonly string[]).includes(b)) throw new Error(`--only: unknown benchmark ${b} (one of ${BENCHES.join(', ')})`);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const started = new Date();
  const m0 = await machine();
  const haveQsd = m0.qsd !== '?';
  const steps = plan(values.quick, haveQsd).filter((s) => only.includes(s.bench));
  say(`load before: ${m0.uptimeBefore}`);
  say('building island (npx tsc -p .)');
  await run('npx', ['tsc', '-p', '.'], { cwd: ROOT });

  const runs: Run[] = [];
  for (const s of steps.filter((x) => x.bench === 'fuse')) if (!stopped) runs.push(await child(s.bench, s.label, s.args, null));
  const swiftSteps = steps.filter((x) => x.bench !== 'fuse');
  if (swiftSteps.length && !stopped) {
    say('starting a private Swift (scripts/swift.sh)');
    await withSwift(undefined, async (_cfg, swiftJson) => {
      for (const s of swiftSteps) if (!stopped) runs.push(await child(s.bench, s.label, s.args, swiftJson));
    });
    say('Swift stopped');
  }
  const data: ReportData = {
    date: started.toISOString(),
    finished: new Date().toISOString(),
    command: `npx tsx scripts/bench-report.ts${process.argv.slice(2).length ? ' ' + process.argv.slice(2).join(' ') : ''}`,
    quick: values.quick,
    machine: { ...m0, loadAfter: loadavg(), uptimeAfter: await text('uptime', []) },
    runs,
    interrupted: stopped,
  };
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'REPORT.json'), JSON.stringify(data, null, 1) + '\n');
  await write(out, data);
  return stopped ? 130 : runs.every((r) => r.ok) ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    say(err instanceof Error ? err.message : String(err));
    process.exitCode = 1;
  },
);
