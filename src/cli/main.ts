#!/usr/bin/env node
// The daemon's local I/O (and the native addon) runs on libuv's thread pool, whose
// default of 4 threads serialises QEMU's parallel requests. Set before any I/O starts.
process.env.UV_THREADPOOL_SIZE ??= '32';
// V8's compiled code of the modules loaded from here on (the daemon, the store clients and
// their SDK, fsck: everything a command imports when it runs) is kept between runs, under
// $NODE_COMPILE_CACHE or <tmpdir>/node-compile-cache; NODE_DISABLE_COMPILE_CACHE=1 turns it
// off. Node 22.3 and later (enableCompileCache is 22.1, reached without an ESM import of
// node:module from 22.3); Node 20 has no compile cache and compiles every time, as before
// (and does not load node:module for nothing). A cache that cannot be written (a read-only
// tmpdir) is skipped by Node.
if (Number(process.versions.node.split('.')[0]) >= 22) (process.getBuiltinModule?.('node:module') as { enableCompileCache?: () => unknown } | undefined)?.enableCompileCache?.();
/**
 * The island command line. Every command takes --json; an error prints one line
 * `island: CODE: message` (or {"error": ...} with --json) and exits non-zero
 * (2 for invalid input, 1 otherwise).
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';
import { IslandError, asIslandError } from '../errors.js';
import { formatSize, humanSize } from '../format/names.js';
import type { GcReport } from '../repo/gc.js';
import type { PruneReport } from '../repo/prune.js';
import { call } from './client.js';
import { withProgress, type ProgressSample } from './progress.js';
import { gcLines, pruneLines } from './reports.js';

const VERSION = '0.1.0';

export const USAGE = `usage: island <command> [options]

daemon
  serve                                  mount the FUSE file system, serve attached volumes,
                                         answer the control API on $ISLAND_SOCKET
  status                                 the daemon and its attached volumes
volumes
  volume create NAME --size SIZE [--cluster-size 64K] [--region R]
  volume create NAME --from SNAPSHOT [--size SIZE]
                                         a new volume holding that snapshot's image (any
                                         volume's); attaching it is instant, as a restore;
                                         --size may make it larger than the snapshot (the
                                         first attach grows the image)
  volume create NAME --from-image FILE [--format FORMAT] [--size SIZE] [--cluster-size 64K]
                                         a new volume whose first snapshot holds an image
                                         file (any format qemu-img reads: raw, qcow2, vmdk,
                                         vdi, vhdx, ...; detected unless --format), converted
                                         into island's own qcow2; usable on any host at once
  volume resize NAME --size SIZE [--qmp SOCKET] [--domain DOM]
                                         grow a volume (never shrink): a detached one's
                                         image follows at its next attach; an attached one
                                         grows now, through qemu-img when its file is not
                                         open, through QEMU's block_resize (--qmp, or the
                                         socket given at attach) when a VM has it open,
                                         or libvirt's blockresize (--domain, or the domain
                                         given at attach)
  volume revert NAME --to SNAPSHOT       a detached volume back to one of its snapshots (a new
                                         snapshot sharing its tree becomes the one the next
                                         attach restores; later snapshots stay until deleted)
  volume list
  volume show NAME
  volume delete NAME                     refused while attached; its snapshots remain
  attach NAME [--qmp SOCKET] [--qga SOCKET] [--force] [--wait-filled] [--fill-rate RATE] [--no-fill]
             [--discard-local] [--allow-rollback] [--host HOST] [--domain DOM]
                                         show NAME.qcow2 on the mount; --force takes over a
                                         volume attached on another host (fence it first!);
                                         a volume with snapshots is usable at once and fills
                                         in behind (--wait-filled waits for it; --fill-rate
                                         caps it in bytes/s, e.g. 50M); --discard-local sets
                                         a local copy that cannot be opened aside (kept under
                                         <dataDir>/aside) and restores from the store;
                                         --allow-rollback accepts an older snapshot when the
                                         store cannot prove the newest (HEAD_UNCERTAIN: run
                                         island fsck --repair first); --host refuses
                                         (WRONG_HOST) unless HOST is this daemon's host id;
                                         --domain names the libvirt domain using the file
                                         (checked): snapshots freeze and suspend it through
                                         virsh, its shutdown takes a final snapshot, resize
                                         grows it with blockresize ($ISLAND_LIBVIRT_URI)
  detach NAME [--force] [--keep-local] [--no-wait]
                                         final snapshot, then drop the local copy (or keep it
                                         warm); refused while the file is open unless --force;
                                         --no-wait returns once the final snapshot is sealed
                                         and the file is off the mount: the upload finishes
                                         in the background (status: detaching) and the volume
                                         is released to other hosts when it commits;
                                         a FENCED volume is detached without a snapshot and
                                         its local copy is kept under <dataDir>/aside
snapshots
  snapshot create VOLUME... [--consistency crash|flush|freeze] [--qmp SOCKET] [--qga SOCKET] [--no-wait]
                                         seal and upload the changes since the last snapshot;
                                         flush (the default with a QMP socket) pauses QEMU
                                         with stop/cont around the seal; freeze also freezes
                                         the guest's filesystems through qemu-guest-agent
  snapshot list [VOLUME]
  snapshot show ID
  snapshot mount ID                      show it read-only as VOLUME@ID.qcow2 on the mount,
                                         fetched lazily (qemu-img check, qemu-nbd, guestfish)
  snapshot unmount ID [--force]
  snapshot export ID FILE [--format raw|qcow2]
                                         write the snapshot's image to FILE (raw by default),
                                         with a progress bar; an existing FILE is not replaced
  snapshot delete ID... [--force]        write tombstones; refused while pinned unless --force
                                         (forcing may break a restore still filling from it)
  snapshot prune VOLUME [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--dry-run]
                                         delete the snapshots no rule keeps: the N newest, the
                                         newest of each of the last N hours, days or ISO weeks
                                         (UTC) that have snapshots; pinned ones are skipped
  snapshot copy ID --to REGION [--wait]  copy a snapshot to another configured region: its
                                         manifest, tree and the packs the region lacks; it
                                         becomes the volume's latest snapshot there, restorable
                                         with that region alone (--wait: until it is done)
  gc [--dry-run]                         free what no snapshot, pin or upload can reach, after
                                         the grace period ($ISLAND_GC_GRACE seconds); reports
                                         partly dead packs and their reclaimable bytes
verification
  fsck [--deep[=PERCENT]] [--seed N] [--qcow2] [--local] [--volume V] [--snapshot ID] [--repair [--prune-orphans]]
                                         check that every snapshot can be restored: records,
                                         tree nodes and pack trailers (no blob data) by
                                         default; --deep reads and verifies every blob (or a
                                         seeded sample of PERCENT of the packs); --repair
                                         fixes what it can from chain links and local
                                         copies and marks the rest damaged; --qcow2 also
                                         runs qemu-img check on each snapshot's image (through
                                         the daemon's read-only mount); --local also checks
                                         this host's local copies. Exit status: 0 clean,
                                         1 all corrected, 2 invalid arguments, 4 errors
                                         left, 8 could not run (no such store, no answer)
store
  store selftest [--dir DIR]             round trip objects through the embedded store (in
                                         storeDir, or in DIR: an absolute path)
  store init-key [--key-file PATH] [--label TEXT] [--region R]
                                         make an empty store an encrypted repository: a new
                                         master key, wrapped in a new key file (mode 0600; the
                                         passphrase from keyPassphraseFile, none if unset)
  store key add PATH [--passphrase-file F] [--label TEXT] [--data-key-id N]
                                         another key file for the same master key (N: the
                                         data key id it seals new data with)
  store key list                         the key files the repository accepts
  store key remove ID                    revoke a key file (not the one in use)
other
  version

options: --json (machine-readable output), -h/--help
sizes take K, M, G, T suffixes (powers of 1024).
environment: ISLAND_CONFIG ISLAND_DATA_DIR ISLAND_MOUNT ISLAND_SOCKET ISLAND_HOST_ID
             ISLAND_STORE_DIR ISLAND_LOG_LEVEL ISLAND_METRICS_PORT ISLAND_METRICS_ADDRESS
             ISLAND_REGION ISLAND_GC_GRACE ISLAND_LIBVIRT_URI ISLAND_KEY_FILE
             ISLAND_KEY_PASSPHRASE_FILE
`;

interface VolumeOut {
  name: string;
  virtualSize: number;
  clusterSize: number;
  status: string;
  host: string | null;
  generation: number;
  local?: { file: string; length: number; openHandles: number; dirtyClusters: number };
}

function volumeLine(v: VolumeOut): string {
  const where = v.status === 'attached' ? ` on ${v.host ?? '?'} (generation ${v.generation})` : '';
  const local = v.local ? `, image ${formatSize(v.local.length)}, ${v.local.openHandles} open, ${v.local.dirtyClusters} dirty clusters` : '';
  return `${v.name}\t${formatSize(v.virtualSize)}\t${v.status}${where}${local}`;
}

interface SnapshotOut {
  id: string;
  volume: string;
  created: string;
  consistency: string;
  changedClusters: number;
  uploadedBytes: number;
  durationMs: number;
  deleted: boolean;
  damaged?: boolean;
  warnings: string[];
}

function snapshotLine(s: SnapshotOut): string {
  return `${s.id}\t${s.volume}\t${s.created}\t${s.consistency}\t${s.changedClusters} clusters changed, ${formatSize(s.uploadedBytes)} uploaded in ${s.durationMs} ms${s.deleted ? '\tDELETED' : ''}${s.damaged ? '\tDAMAGED' : ''}${s.warnings.length ? `\twarnings: ${s.warnings.join('; ')}` : ''}`;
}

interface FillOut {
  state: string;
  totalClusters: number;
  doneClusters: number;
  bytesFetched: number;
  failedClusters: number;
  waiting: boolean;
}

interface StatusVolume {
  name: string;
  snapshot: { done: number; total: number } | null;
  fill: FillOut | null;
}

type Api = (method: string, path: string, body?: unknown) => Promise<unknown>;

interface CopyOut {
  snapshot: string;
  volume: string;
  to: string;
  alreadyCopied: boolean;
  packsTotal: number;
  packsCopied: number;
  bytesCopied: number;
}

function copyLine(c: CopyOut): string {
  if (c.alreadyCopied) return `${c.snapshot} of ${c.volume} is already in region ${c.to}`;
  return `copied ${c.snapshot} of ${c.volume} to region ${c.to}: ${c.packsCopied} of ${c.packsTotal} packs moved (${humanSize(c.bytesCopied)}), the rest were there`;
}

/** Packs checked or copied so far by the copy of `id` to `to`. */
async function copyProgress(api: Api, id: string, to: string): Promise<ProgressSample | null> {
  const s = (await api('GET', '/v1/status')) as { copies: { snapshot: string; to: string; state: string; progress: { packsTotal: number; packsDone: number } }[] };
  const c = s.copies.find((x) => x.snapshot === id.toUpperCase() && x.to === to && x.state === 'copying');
  return c && c.progress.packsTotal > 0 ? { done: c.progress.packsDone, total: c.progress.packsTotal, note: 'packs' } : null;
}

/** Clusters encoded so far by the snapshots in progress of these volumes. */
async function snapshotProgress(api: Api, volumes: string[]): Promise<ProgressSample | null> {
  const s = (await api('GET', '/v1/status')) as { volumes: StatusVolume[] };
  let done = 0;
  let total = 0;
  for (const v of s.volumes) {
    if (!volumes.includes(v.name) || !v.snapshot) continue;
    done += v.snapshot.done;
    total += v.snapshot.total;
  }
  return total > 0 ? { done, total, note: 'clusters' } : null;
}

/** Wait until a volume's background fill ends, with a progress bar; null when it has none. */
async function waitFilled(name: string, statusOf: (name: string) => Promise<StatusVolume | undefined>, quiet: boolean): Promise<FillOut | null> {
  let last: FillOut | null = null;
  const work = (async () => {
    for (;;) {
      const v = await statusOf(name);
      if (!v) throw new IslandError('NOT_FOUND', `volume ${name} is no longer attached`);
      last = v.fill;
      if (!last || last.state !== 'filling') return last;
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  const sample = (): Promise<ProgressSample | null> =>
    Promise.resolve(last && last.totalClusters > 0 ? { done: last.doneClusters, total: last.totalClusters, note: last.waiting ? 'waiting for the store' : 'clusters' } : null);
  return quiet ? work : withProgress(`fill ${name}`, work, sample);
}

/** The GC running in the daemon, as a progress sample (mark: roots; sweep: packs). */
async function gcProgress(api: Api): Promise<ProgressSample | null> {
  const s = (await api('GET', '/v1/status')) as { gc: { phase: string; done: number; total: number | null } | null };
  if (!s.gc || s.gc.total === null || s.gc.total === 0) return null;
  return { done: s.gc.done, total: s.gc.total, note: s.gc.phase === 'mark' ? 'snapshots marked' : 'packs deleted' };
}

/**
 * Progress of an image import or export in the daemon (GET /v1/images). A transfer that
 * ended is gone from the list: once seen (or once its request answered with the image's
 * size, `ended`), it reads as done.
 */
function transferProgress(api: Api, kind: 'import' | 'export', file: string): { poll: () => Promise<ProgressSample | null>; ended: (total: number) => void } {
  let total = 0;
  let ended = false;
  return {
    poll: async () => {
      const r = ended ? { transfers: [] } : ((await api('GET', '/v1/images')) as { transfers: { kind: string; file: string; done: number; total: number }[] });
      const t = r.transfers.find((x) => x.kind === kind && x.file === file);
      if (t) total = t.total;
      return total === 0 ? null : { done: t ? t.done : total, total, bytes: true };
    },
    ended: (size) => {
      ended = true;
      total = size;
    },
  };
}

/** A --keep-* count: a decimal integer (the daemon checks the range). */
function keepCount(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,9}$/.test(v)) throw new IslandError('INVALID_ARGUMENT', `${flag} takes a count (a whole number), got ${JSON.stringify(v).slice(0, 40)}`);
  return Number(v);
}

function need(v: string | undefined, what: string): string {
  if (v === undefined) throw new IslandError('INVALID_ARGUMENT', `missing ${what} (try island help)`);
  return v;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    // `--deep` alone (every pack) is `--deep=` to the parser.
    args: argv.map((a) => (a === '--deep' ? '--deep=' : a)),
    allowPositionals: true,
    strict: true,
    options: {
      json: { type: 'boolean', default: false },
      dir: { type: 'string' },
      size: { type: 'string' },
      'cluster-size': { type: 'string' },
      region: { type: 'string' },
      to: { type: 'string' },
      from: { type: 'string' },
      'from-image': { type: 'string' },
      format: { type: 'string' },
      qmp: { type: 'string' },
      qga: { type: 'string' },
      force: { type: 'boolean' },
      'keep-local': { type: 'boolean' },
      consistency: { type: 'string' },
      'no-wait': { type: 'boolean' },
      'dry-run': { type: 'boolean' },
      wait: { type: 'boolean' },
      'wait-filled': { type: 'boolean' },
      'fill-rate': { type: 'string' },
      'discard-local': { type: 'boolean' },
      'allow-rollback': { type: 'boolean' },
      host: { type: 'string' },
      domain: { type: 'string' },
      'no-fill': { type: 'boolean' },
      'keep-last': { type: 'string' },
      'keep-hourly': { type: 'string' },
      'keep-daily': { type: 'string' },
      'keep-weekly': { type: 'string' },
      deep: { type: 'string' },
      seed: { type: 'string' },
      volume: { type: 'string' },
      snapshot: { type: 'string' },
      repair: { type: 'boolean' },
      'prune-orphans': { type: 'boolean' },
      qcow2: { type: 'boolean' },
      local: { type: 'boolean' },
      'key-file': { type: 'string' },
      'passphrase-file': { type: 'string' },
      label: { type: 'string' },
      'data-key-id': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const json = values.json ?? false;
  const out = (human: string, data: unknown): void => {
    process.stdout.write(json ? JSON.stringify(data) + '\n' : human + '\n');
  };
  const [cmd, sub, arg] = positionals;
  if (values.help || cmd === undefined || cmd === 'help') {
    process.stdout.write(USAGE);
    return cmd === undefined && !values.help ? 2 : 0;
  }
  if (cmd === 'version') {
    out(`island ${VERSION}`, { version: VERSION });
    return 0;
  }
  if (cmd === 'fsck') {
    const { fsckCommand } = await import('./fsck.js');
    return fsckCommand(() => loadConfig(), { deep: values.deep, seed: values.seed, volume: values.volume, snapshot: values.snapshot, repair: values.repair, pruneOrphans: values['prune-orphans'], qcow2: values.qcow2, local: values.local, json });
  }
  const config = await loadConfig();
  if (cmd === 'serve') {
    const { serveForever } = await import('../daemon/serve.js');
    await serveForever(config);
    return 0;
  }
  if (cmd === 'store' && sub === 'selftest') {
    // Loaded here: the store code (the S3 SDK among it) is what a command pays most to start.
    const { selftestDir, storeSelftest } = await import('./store-selftest.js');
    const report = await storeSelftest({ type: 'fs', dir: selftestDir(values.dir, config.storeDir) });
    out(report.lines.join('\n'), report);
    return 0;
  }
  if (cmd === 'store' && (sub === 'init-key' || sub === 'key')) {
    const o = { keyFile: values['key-file'], passphraseFile: values['passphrase-file'], label: values.label, dataKeyId: values['data-key-id'], region: values.region };
    const [, , action, target] = positionals;
    const { initKeyCommand, keyAddCommand, keyListCommand, keyRemoveCommand } = await import('./store-keys.js');
    const r =
      sub === 'init-key' ? await initKeyCommand(config, o)
      : action === 'add' ? await keyAddCommand(config, target, o)
      : action === 'list' ? await keyListCommand(config, o)
      : action === 'remove' ? await keyRemoveCommand(config, target, o)
      : undefined;
    if (r === undefined) throw new IslandError('INVALID_ARGUMENT', 'usage: island store key add PATH | list | remove ID');
    out(r.lines.join('\n'), r.data);
    return 0;
  }
  const api = (method: string, path: string, body?: unknown): Promise<unknown> => call(config.socket, method, path, body);
  const statusOf = async (name: string): Promise<StatusVolume | undefined> => ((await api('GET', '/v1/status')) as { volumes: StatusVolume[] }).volumes.find((v) => v.name === name);
  const enc = encodeURIComponent;
  if (cmd === 'status') {
    const s = (await api('GET', '/v1/status')) as { host: string; mount: string; fuse?: { transport?: string }; writePath?: string; volumes: { name: string; length: number; openHandles: number; dirtyClusters: number; generation: number; access?: { mode: string; why: string | null } }[]; unopened?: { name: string; code: string; why: string }[]; copies?: { snapshot: string; volume: string; to: string; state: string; progress: { packsDone: number; packsTotal: number }; error: { code: string; message: string } | null }[]; capacity?: { dataDir: string; totalBytes: number; freeBytes: number; provisionedBytes: number; usedBytes: number }; detaching?: { name: string; snapshot: { done: number; total: number } | null; waiting: { code: string; message: string } | null }[] };
    const served = s.fuse?.transport ? ` (${s.fuse.transport === 'native' ? 'native FUSE server' : s.fuse.transport}, ${s.writePath ?? '?'} write path)` : '';
    const lines = [`host ${s.host}, mount ${s.mount}${served}, ${s.volumes.length} attached`];
    const cap = s.capacity;
    if (cap) lines.push(`data disk ${cap.dataDir}: ${humanSize(cap.freeBytes)} free of ${humanSize(cap.totalBytes)}; attached volumes: ${humanSize(cap.provisionedBytes)} provisioned, ${humanSize(cap.usedBytes)} used locally`);
    for (const u of s.unopened ?? []) lines.push(`  ${u.name}.qcow2\tNOT SERVED (${u.code}): ${u.why}`);
    for (const v of s.volumes) {
      const access = v.access && v.access.mode !== 'read-write' ? `\n    ${v.access.mode.toUpperCase()}: ${v.access.why ?? ''}` : '';
      lines.push(`  ${v.name}.qcow2\timage ${formatSize(v.length)}, ${v.openHandles} open, ${v.dirtyClusters} dirty clusters, generation ${v.generation}${access}`);
    }
    for (const d of s.detaching ?? []) lines.push(`  ${d.name}.qcow2\tDETACHING: final snapshot uploading${d.snapshot && d.snapshot.total > 0 ? ` (${d.snapshot.done} / ${d.snapshot.total} clusters)` : ''}${d.waiting ? `, waiting for the store (${d.waiting.code}: ${d.waiting.message})` : ''}`);
    for (const c of s.copies ?? []) lines.push(`  copy ${c.snapshot} (${c.volume}) to ${c.to}: ${c.state}, ${c.progress.packsDone} / ${c.progress.packsTotal} packs${c.error ? `: ${c.error.code}: ${c.error.message}` : ''}`);
    out(lines.join('\n'), s);
    return 0;
  }
  if (cmd === 'volume') {
    if (sub === 'create' && values['from-image'] !== undefined) {
      const name = need(arg, 'volume name');
      const fromImage = resolve(values['from-image']); // the daemon needs it absolute
      const progress = transferProgress(api, 'import', fromImage);
      const request = (api('POST', '/v1/volumes', { name, fromImage, format: values.format, size: values.size, clusterSize: values['cluster-size'] }) as Promise<{ volume: VolumeOut; snapshot: SnapshotOut; image: { virtualSize: number } }>).then((r) => {
        progress.ended(r.image.virtualSize);
        return r;
      });
      const r = json ? await request : await withProgress(`import ${name}`, request, progress.poll);
      out(`created ${volumeLine(r.volume)}\nfirst snapshot ${r.snapshot.id} holds ${fromImage}`, r);
      return 0;
    }
    if (sub === 'create') {
      const body = { name: need(arg, 'volume name'), size: values.from === undefined ? need(values.size, '--size') : values.size, clusterSize: values['cluster-size'], region: values.region, from: values.from };
      const v = (await api('POST', '/v1/volumes', body)) as VolumeOut;
      out(`created ${volumeLine(v)}`, v);
      return 0;
    }
    if (sub === 'resize') {
      const name = need(arg, 'volume name');
      const r = (await api('POST', `/v1/volumes/${enc(name)}/resize`, { size: need(values.size, '--size'), qmp: values.qmp, domain: values.domain })) as VolumeOut & { resize: { from: number; to: number; how: string } };
      const how = { record: 'the image follows at the next attach', 'qemu-img': 'the image grew (qemu-img)', block_resize: 'the image grew in the running VM (block_resize)', blockresize: 'the image grew in the running domain (virsh blockresize)', unchanged: 'already that size' }[r.resize.how] ?? r.resize.how;
      out(`resized ${name}: ${formatSize(r.resize.from)} -> ${formatSize(r.resize.to)}; ${how}`, r);
      return 0;
    }
    if (sub === 'revert') {
      const name = need(arg, 'volume name');
      const r = (await api('POST', `/v1/volumes/${enc(name)}/revert`, { snapshot: need(values.to, '--to SNAPSHOT') })) as { volume: VolumeOut; snapshot: SnapshotOut };
      out(`reverted ${name} to ${values.to}: its next attach restores snapshot ${r.snapshot.id}`, r);
      return 0;
    }
    if (sub === 'list') {
      const r = (await api('GET', '/v1/volumes')) as { volumes: VolumeOut[] };
      out(r.volumes.map(volumeLine).join('\n') || '(no volumes)', r);
      return 0;
    }
    if (sub === 'show') {
      const v = (await api('GET', `/v1/volumes/${enc(need(arg, 'volume name'))}`)) as VolumeOut;
      out(volumeLine(v), v);
      return 0;
    }
    if (sub === 'delete') {
      const r = await api('DELETE', `/v1/volumes/${enc(need(arg, 'volume name'))}`);
      out(`deleted ${arg}`, r);
      return 0;
    }
  }
  if (cmd === 'snapshot') {
    if (sub === 'create') {
      const volumes = positionals.slice(2);
      if (volumes.length === 0) throw new IslandError('INVALID_ARGUMENT', 'missing volume name (try island help)');
      const wait = !values['no-wait'];
      const request = api('POST', '/v1/snapshots', { volumes, consistency: values.consistency, wait, qmp: values.qmp, qga: values.qga }) as Promise<{ snapshots?: SnapshotOut[]; started?: string[] }>;
      const r = wait && !json ? await withProgress(`snapshot ${volumes.join(' ')}`, request, () => snapshotProgress(api, volumes)) : await request;
      const human = r.snapshots ? r.snapshots.map(snapshotLine).join('\n') : `started: ${(r.started ?? []).join(', ')} (see island status)`;
      out(human, r);
      return 0;
    }
    if (sub === 'list') {
      const r = (await api('GET', `/v1/snapshots${arg ? `?volume=${enc(arg)}` : ''}`)) as { snapshots: SnapshotOut[] };
      out(r.snapshots.map(snapshotLine).join('\n') || '(no snapshots)', r);
      return 0;
    }
    if (sub === 'export') {
      const id = need(arg, 'snapshot id');
      if (positionals.length !== 4) throw new IslandError('INVALID_ARGUMENT', 'snapshot export takes a snapshot id and a file (try island help)');
      const file = resolve(positionals[3] as string);
      const progress = transferProgress(api, 'export', file);
      const request = (api('POST', `/v1/snapshots/${enc(id)}/export`, { file, format: values.format }) as Promise<{ file: string; format: string; virtualSize: number; allocatedBytes: number }>).then((r) => {
        progress.ended(r.virtualSize);
        return r;
      });
      const r = json ? await request : await withProgress(`export ${id}`, request, progress.poll);
      out(`exported ${id} to ${r.file} (${r.format}, ${formatSize(r.virtualSize)} image, ${humanSize(r.allocatedBytes)} on disk)`, r);
      return 0;
    }
    if (sub === 'delete') {
      const ids = positionals.slice(2);
      if (ids.length === 0) throw new IslandError('INVALID_ARGUMENT', 'missing snapshot id (try island help)');
      const r = (await api('POST', '/v1/snapshots/delete', { ids, force: values.force })) as { deleted: string[] };
      out(`deleted ${r.deleted.join(', ')} (data is freed by island gc after the grace period)`, r);
      return 0;
    }
    if (sub === 'prune') {
      const volume = need(arg, 'volume name');
      if (positionals.length > 3) throw new IslandError('INVALID_ARGUMENT', 'snapshot prune takes one volume (try island help)');
      const keep = { last: keepCount(values['keep-last'], '--keep-last'), hourly: keepCount(values['keep-hourly'], '--keep-hourly'), daily: keepCount(values['keep-daily'], '--keep-daily'), weekly: keepCount(values['keep-weekly'], '--keep-weekly') };
      const r = (await api('POST', '/v1/snapshots/prune', { volume, keep, dryRun: values['dry-run'] })) as PruneReport;
      out(pruneLines(r).join('\n'), r);
      return 0;
    }
    if (sub === 'mount') {
      const r = (await api('POST', `/v1/snapshots/${enc(need(arg, 'snapshot id'))}/mount`)) as { file: string };
      out(`mounted read-only: ${r.file}`, r);
      return 0;
    }
    if (sub === 'unmount') {
      const r = await api('POST', `/v1/snapshots/${enc(need(arg, 'snapshot id'))}/unmount`, { force: values.force });
      out(`unmounted ${arg}`, r);
      return 0;
    }
    if (sub === 'copy') {
      const id = need(arg, 'snapshot id');
      const to = need(values.to, '--to REGION');
      const wait = values.wait === true;
      const request = api('POST', `/v1/snapshots/${enc(id)}/copy`, { to, wait }) as Promise<CopyOut | { started: unknown }>;
      const r = wait && !json ? await withProgress(`copy ${id} to ${to}`, request, () => copyProgress(api, id, to)) : await request;
      out('started' in r ? `copy of ${id} to ${to} started (see island status)` : copyLine(r), r);
      return 0;
    }
    if (sub === 'show') {
      const s = (await api('GET', `/v1/snapshots/${enc(need(arg, 'snapshot id'))}`)) as SnapshotOut;
      out(Object.entries(s).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join('; ') : String(v)}`).join('\n'), s);
      return 0;
    }
  }
  if (cmd === 'gc') {
    const request = api('POST', '/v1/gc', { dryRun: values['dry-run'] }) as Promise<GcReport>;
    const r = json ? await request : await withProgress(values['dry-run'] ? 'gc (dry run)' : 'gc', request, () => gcProgress(api));
    out(gcLines(r).join('\n'), r);
    return 0;
  }
  if (cmd === 'attach') {
    const name = need(sub, 'volume name');
    const v = (await api('POST', `/v1/volumes/${enc(name)}/attach`, { qmp: values.qmp, qga: values.qga, force: values.force, fill: values['no-fill'] ? false : undefined, fillRate: values['fill-rate'], discardLocal: values['discard-local'], allowRollback: values['allow-rollback'], host: values.host, domain: values.domain })) as VolumeOut;
    if (!values['wait-filled']) {
      out(`attached ${name}: ${v.local?.file ?? '?'}`, v);
      return 0;
    }
    const fill = await waitFilled(name, statusOf, json);
    out(`attached ${name}: ${v.local?.file ?? '?'} (${fill ? `filled: ${fill.totalClusters} clusters, ${humanSize(fill.bytesFetched)} fetched` : 'nothing to fill'})`, { ...v, fill });
    if (fill && fill.state !== 'done') throw new IslandError('STORE_UNAVAILABLE', `the background fill of ${name} ended ${fill.state} with ${fill.failedClusters} clusters that cannot be restored (see island status, island fsck)`);
    return 0;
  }
  if (cmd === 'detach') {
    const name = need(sub, 'volume name');
    const noWait = values['no-wait'] === true;
    const v = (await api('POST', `/v1/volumes/${enc(name)}/detach`, { force: values.force, keepLocal: values['keep-local'], noWait })) as VolumeOut;
    if (noWait) out(`detaching ${name}: final snapshot sealed, the file is off the mount; it uploads in the background and ${name} is released when it commits (see island status)`, v);
    else out(`detached ${name} (final snapshot taken; local copy ${values['keep-local'] ? 'kept' : 'dropped'})`, v);
    return 0;
  }
  throw new IslandError('INVALID_ARGUMENT', `unknown command: ${positionals.join(' ').slice(0, 80)} (try island help)`);
}

function fail(err: unknown, json: boolean): number {
  const e = asIslandError(err, (err as { code?: string })?.code?.startsWith?.('ERR_PARSE_ARGS') ? 'INVALID_ARGUMENT' : 'INTERNAL');
  if (json) process.stdout.write(JSON.stringify({ error: e.toJSON() }) + '\n');
  else process.stderr.write(`island: ${e.code}: ${e.message.replace(/\s*\n\s*/g, ' ')}\n`);
  return e.code === 'INVALID_ARGUMENT' ? 2 : 1;
}

const argv = process.argv.slice(2);
main(argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.exitCode = fail(err, argv.includes('--json'));
  },
);
