/**
 * island's configuration: one typed object with defaults, built from an optional
 * JSON file (ISLAND_CONFIG) and environment overrides, validated where it is built.
 *
 *   setting      file key     environment           default
 *   data dir     dataDir      ISLAND_DATA_DIR       /var/lib/island
 *   mount point  mount        ISLAND_MOUNT          /run/island/mnt
 *   socket       socket       ISLAND_SOCKET         <dataDir>/island.sock
 *   host id      hostId       ISLAND_HOST_ID        the machine's hostname, lowercased
 *   store dir    storeDir     ISLAND_STORE_DIR      <dataDir>/store (the embedded store)
 *   log level    logLevel     ISLAND_LOG_LEVEL      info
 *   metrics      metricsPort  ISLAND_METRICS_PORT   off (a port for /metrics)
 *   metrics on   metricsAddress ISLAND_METRICS_ADDRESS 127.0.0.1 (an IP address; loopback, so
 *                                                   only this machine can scrape it)
 *   region name  region       ISLAND_REGION         default
 *   GC grace     gcGraceSeconds ISLAND_GC_GRACE     86400: a day, far above the commit window
 *                                                   (1 h), request deadlines and any listing lag
 *                                                   seen; 0 is allowed (tests, single writer)
 *   commit window commitWindowSeconds ISLAND_COMMIT_WINDOW 3600: W, the longest a snapshot upload
 *                                                   relies on a parent it checked (docs/protocols.md)
 *   regions      regions      (file only)           {} : the embedded store is region "default"
 *   file owner   fileOwner    ISLAND_FILE_OWNER     the daemon's user (root): a user name or a
 *                                                   numeric id, owner of the volume files
 *   file group   fileGroup    ISLAND_FILE_GROUP     the daemon's group (root): a group name or id
 *   file mode    fileMode     ISLAND_FILE_MODE      "0600": permission bits of the volume files,
 *                                                   an octal string; the read-only snapshot views
 *                                                   get the same owner and group, write bits cleared
 *   libvirt URI  libvirtUri   ISLAND_LIBVIRT_URI    qemu:///system: where `attach --domain` finds its
 *                                                   domain (virsh -c URI)
 *   FUSE server  fuse         ISLAND_FUSE           "auto": island's native server (native/fuse/), or
 *                                                   the fuse-native one when the native server
 *                                                   cannot start (said in the log); "native" insists
 *                                                   on the native server (the start fails without it),
 *                                                   "fuse-native" takes the fuse-native one
 *   FUSE threads fuseThreads  ISLAND_FUSE_THREADS   2 per CPU, 4 to 16: threads of the native server
 *   key file     keyFile      ISLAND_KEY_FILE       none: the store is not encrypted. An absolute path
 *                                                   to a key file (mode 0600) wrapping the repository's
 *                                                   master key (docs/formats/encryption.md)
 *   passphrase   keyPassphraseFile ISLAND_KEY_PASSPHRASE_FILE  none: the key file has no passphrase.
 *                                                   An absolute path to a file (mode 0600) holding it
 *   write path   writePath    ISLAND_WRITE_PATH     "native": reads, writes, fsync and discard of the
 *                                                   attached volumes run in C (native/volume/; the
 *                                                   native FUSE server calls it from its threads),
 *                                                   "typescript" runs them in the TypeScript engine
 *                                                   (src/volume/engine.ts); the local state is the
 *                                                   same, so a volume closed by one opens in the other
 *
 * User and group names are resolved once, here, through the system's name service (getent,
 * so /etc/passwd and /etc/group or whatever nsswitch.conf adds); a name that does not exist
 * is INVALID_CONFIG. The kernel checks every open against these (the mount uses
 * default_permissions), so another local user can open a volume file only when the owner,
 * group and mode give it that access.
 *
 * A region in the file: "regions": {"swift-a": {"type": "s3", "endpoint": "http://...",
 * "region": "us-east-1", "bucket": "island", "prefix": "prod/", "accessKeyId": "...",
 * "secretAccessKey": "..."}}. The daemon's store is the region named by `region`; when that
 * name has no entry it is the embedded store in storeDir. The other regions of the file are
 * where `snapshot copy` can copy to (and "default", the embedded store, when it is not the
 * daemon's own region).
 */
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { availableParallelism, hostname } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { promisify } from 'node:util';
import { IslandError, redactUrlCredentials } from './errors.js';
import { parseHostId, parseRegionName } from './format/names.js';
import type { BackendConfig } from './store/open.js';
import { DEFAULT_DEADLINE_MS } from './store/retry.js';
import { isCrashPoint } from './util/crash.js';

export interface Config {
  dataDir: string;
  mount: string;
  socket: string;
  hostId: string;
  storeDir: string;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  metricsPort: number | undefined;
  /** The address the metrics port listens on (an IP address). */
  metricsAddress: string;
  region: string;
  /** The store of `region`. */
  store: BackendConfig;
  /** Every region the file declares, by name (copy targets). */
  regions: Record<string, BackendConfig>;
  /** Owner (uid) of the volume files on the mount. */
  fileOwner: number;
  /** Group (gid) of the volume files on the mount. */
  fileGroup: number;
  /** Permission bits of the volume files (0o600 by default; snapshot views drop the write bits). */
  fileMode: number;
  /** The libvirt connection URI of `attach --domain` (virsh -c). */
  libvirtUri: string;
  /** Which FUSE server serves the mount: the native one (falling back when "auto"), or fuse-native. */
  fuse: FuseChoice;
  /** Threads of the native FUSE server. */
  fuseThreads: number;
  /** The key file of an encrypted repository (src/crypto/key-file.ts); undefined: no encryption. */
  keyFile: string | undefined;
  /** The file holding the key file's passphrase; undefined: the key file has none. */
  keyPassphraseFile: string | undefined;
  /** Which write path serves the attached volumes (src/volume/write-path.ts). */
  writePath: WritePath;
  /** GC acts on a tombstone, and deletes an unreferenced pack, only after this long (G). */
  gcGraceMs: number;
  /** W: a snapshot upload commits within this long of checking its parent, or re-checks. */
  commitWindowMs: number;
  /**
   * Switches for tests only (ISLAND_TEST_SWITCHES=1, environment only): a grace period that
   * breaks G > W + D + L (e.g. 0), and crash points. Never set in production.
   */
  testSwitches: boolean;
  /** Test switch: the named crash point at which the daemon kills itself (ISLAND_CRASH_AT). */
  crashAt: string | undefined;
  /** Test switch: random transient store failures, per call (ISLAND_STORE_FAULT_RATE, 0 = off). */
  storeFaultRate: number;
}

/**
 * D and L of G > W + D + L (docs/protocols.md): a store call's deadline, retries included,
 * and the listing lag island allows for. Swift's listings lag without bound in theory;
 * 10 minutes is far above what replication shows in practice, and G's default of a day
 * leaves most of the day as margin.
 */
export const REQUEST_DEADLINE_MS = DEFAULT_DEADLINE_MS;
export const LISTING_LAG_MS = 10 * 60 * 1000;

/** Check G > W + D + L, the rule GC's safety rests on (test switches may break it on purpose). */
export function checkGraceWindow(gcGraceMs: number, commitWindowMs: number, testSwitches: boolean): void {
  const needed = commitWindowMs + REQUEST_DEADLINE_MS + LISTING_LAG_MS;
  if (gcGraceMs > needed || testSwitches) return;
  throw new IslandError(
    'INVALID_CONFIG',
    `the GC grace period (${gcGraceMs / 1000} s) must exceed the commit window (${commitWindowMs / 1000} s) + the store deadline (${REQUEST_DEADLINE_MS / 1000} s) + the listing lag allowed for (${LISTING_LAG_MS / 1000} s) = ${needed / 1000} s, or GC could delete what an upload in progress relies on`,
    { details: { gcGraceMs, commitWindowMs, needed } },
  );
}

export const FUSE_CHOICES = ['auto', 'native', 'fuse-native'] as const;
export type FuseChoice = (typeof FUSE_CHOICES)[number];
export const FUSE_THREADS_MAX = 64;

function fuseChoice(v: unknown): FuseChoice {
  if (v === undefined) return 'auto';
  if (typeof v !== 'string' || !FUSE_CHOICES.includes(v as FuseChoice)) throw new IslandError('INVALID_CONFIG', `fuse (ISLAND_FUSE) must be one of ${FUSE_CHOICES.join(', ')}, got ${JSON.stringify(v).slice(0, 80)}`);
  return v as FuseChoice;
}

function fuseThreads(v: unknown): number {
  if (v === undefined) return Math.min(16, Math.max(4, 2 * availableParallelism()));
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > FUSE_THREADS_MAX) throw new IslandError('INVALID_CONFIG', `fuseThreads (ISLAND_FUSE_THREADS) must be an integer from 1 to ${FUSE_THREADS_MAX}, got ${JSON.stringify(v).slice(0, 80)}`);
  return n;
}

export const WRITE_PATHS = ['native', 'typescript'] as const;
export type WritePath = (typeof WRITE_PATHS)[number];

function writePath(v: unknown): WritePath {
  if (v === undefined) return 'native';
  if (typeof v !== 'string' || !WRITE_PATHS.includes(v as WritePath)) throw new IslandError('INVALID_CONFIG', `writePath (ISLAND_WRITE_PATH) must be one of ${WRITE_PATHS.join(', ')}, got ${JSON.stringify(v).slice(0, 80)}`);
  return v as WritePath;
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;

function path(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '' || !isAbsolute(v)) throw new IslandError('INVALID_CONFIG', `${what} must be an absolute path, got ${JSON.stringify(v)}`);
  return v;
}

function optionalPath(v: unknown, what: string): string | undefined {
  return v === undefined || v === '' ? undefined : path(v, what);
}

function regionsOf(regions: unknown): Record<string, BackendConfig> {
  if (regions === undefined) return {};
  if (typeof regions !== 'object' || regions === null || Array.isArray(regions)) throw new IslandError('INVALID_CONFIG', 'regions must be an object of region name -> store');
  const out: Record<string, BackendConfig> = {};
  for (const [name, r] of Object.entries(regions as Record<string, unknown>)) out[parseRegionName(name, 'a region name in regions')] = regionStore(name, r);
  return out;
}

function regionStore(name: string, r: unknown): BackendConfig {
  if (typeof r !== 'object' || r === null) throw new IslandError('INVALID_CONFIG', `region ${name} must be an object`);
  const o = r as Record<string, unknown>;
  const text = (k: string, optional = false): string | undefined => {
    const v = o[k];
    if (v === undefined && optional) return undefined;
    if (typeof v !== 'string' || v === '') throw new IslandError('INVALID_CONFIG', `region ${name}: ${k} must be a non-empty string`);
    return v;
  };
  if (o.type === 'fs') return { type: 'fs', dir: path(o.dir, `region ${name}: dir`) };
  if (o.type !== 's3') throw new IslandError('INVALID_CONFIG', `region ${name}: type must be "s3" or "fs"`);
  return {
    type: 's3',
    endpoint: endpointOf(name, text('endpoint', true)),
    region: text('region', true) ?? 'us-east-1',
    bucket: text('bucket') as string,
    prefix: text('prefix', true),
    accessKeyId: text('accessKeyId') as string,
    secretAccessKey: text('secretAccessKey') as string,
  };
}

/**
 * An S3 endpoint: an http(s) URL without credentials in it. The S3 API signs each request
 * with accessKeyId and secretAccessKey; userinfo in the URL was never sent, and would only
 * show in logs. Messages show the endpoint with its userinfo redacted.
 */
function endpointOf(region: string, v: string | undefined): string | undefined {
  if (v === undefined) return undefined;
  const shown = JSON.stringify(redactUrlCredentials(v).slice(0, 200));
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    // No cause: the URL parser's error carries the input, credentials and all.
    throw new IslandError('INVALID_CONFIG', `region ${region}: endpoint is not a URL: ${shown}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new IslandError('INVALID_CONFIG', `region ${region}: endpoint must be http:// or https://, got ${shown}`);
  if (u.username !== '' || u.password !== '') {
    throw new IslandError('INVALID_CONFIG', `region ${region}: endpoint ${shown} carries credentials: give them as accessKeyId and secretAccessKey (requests are signed with those; credentials in the URL are never sent)`);
  }
  return v;
}

/**
 * pino's `redact` option for the daemon's logger: the secrets of a store configuration
 * never reach a log line, and an endpoint or store description is logged with the
 * userinfo of its URL redacted (configuration refuses such endpoints; a store built
 * another way may still carry one).
 */
export const LOG_REDACT = {
  paths: ['*.secretAccessKey', '*.sessionToken', '*.credentials', 'config.regions', 'endpoint', '*.endpoint', 'store', '*.store'],
  censor: (value: unknown, path: string[]): unknown => {
    const last = path[path.length - 1];
    if ((last === 'endpoint' || last === 'store') && typeof value === 'string') return redactUrlCredentials(value);
    return '[Redacted]';
  },
};

function seconds(v: unknown, what: string): number {
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isFinite(n) || n < 0 || n > 365 * 86_400) throw new IslandError('INVALID_CONFIG', `${what} must be 0..31536000 seconds, got ${JSON.stringify(v)}`);
  return n;
}

function port(v: unknown): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new IslandError('INVALID_CONFIG', `metricsPort must be a TCP port 1..65535, got ${JSON.stringify(v)}`);
  return n;
}

/** Loopback: /metrics is readable from this machine only unless configured otherwise. */
export const DEFAULT_METRICS_ADDRESS = '127.0.0.1';

function ipAddress(v: unknown): string {
  if (v === undefined || v === '') return DEFAULT_METRICS_ADDRESS;
  if (typeof v !== 'string' || isIP(v) === 0) throw new IslandError('INVALID_CONFIG', `metricsAddress must be an IP address (e.g. 127.0.0.1, ::1, 0.0.0.0), got ${JSON.stringify(v)}`);
  return v;
}

/** Root-only: no other local user can open a volume file unless configured. */
export const DEFAULT_FILE_MODE = 0o600;
/** uid_t and gid_t are 32 bits; (uid_t)-1 means "leave unchanged" to chown, so it is no id. */
const ID_MAX = 0xffff_fffe;
/** A user or group name as shadow-utils accepts it (useradd's default rule, 32 characters). */
const ACCOUNT_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/;
/** getent's exit code for "no such key". */
const GETENT_NOT_FOUND = 2;

/** A user or group given as a name or a numeric id, resolved to the id. */
async function accountId(v: unknown, db: 'passwd' | 'group', what: string, fallback: number): Promise<number> {
  if (v === undefined || v === '') return fallback;
  const kind = db === 'passwd' ? 'user' : 'group';
  if (typeof v === 'number' || (typeof v === 'string' && /^[0-9]+$/.test(v))) {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > ID_MAX) throw new IslandError('INVALID_CONFIG', `${what} must be a ${kind} name or an id 0..${ID_MAX}, got ${JSON.stringify(v)}`);
    return n;
  }
  if (typeof v !== 'string' || !ACCOUNT_NAME.test(v)) throw new IslandError('INVALID_CONFIG', `${what} must be a ${kind} name or a numeric id, got ${JSON.stringify(v).slice(0, 80)}`);
  let line: string;
  try {
    // Imported here: only a configured owner or group by name needs it, not every CLI command's start.
    const { execFile } = await import('node:child_process');
    line = (await promisify(execFile)('getent', [db, v], { timeout: 10_000 })).stdout.split('\n')[0] ?? '';
  } catch (err) {
    if ((err as { code?: unknown }).code === GETENT_NOT_FOUND) throw new IslandError('INVALID_CONFIG', `${what}: no ${kind} named ${JSON.stringify(v)} on this machine`);
    throw new IslandError('INVALID_CONFIG', `${what}: cannot look up the ${kind} ${JSON.stringify(v)} (getent ${db}): ${(err as Error).message}`, { cause: err });
  }
  // name:password:ID:...
  const id = Number(line.split(':')[2]);
  if (!Number.isInteger(id) || id < 0 || id > ID_MAX) throw new IslandError('INVALID_CONFIG', `${what}: getent ${db} ${v} answered no usable id: ${JSON.stringify(line.slice(0, 120))}`);
  return id;
}

/** Permission bits as an octal string ("0640", "640"); no setuid, setgid or sticky bit. */
function fileMode(v: unknown): number {
  if (v === undefined || v === '') return DEFAULT_FILE_MODE;
  if (typeof v !== 'string' || !/^0?[0-7]{3}$/.test(v)) throw new IslandError('INVALID_CONFIG', `fileMode (ISLAND_FILE_MODE) must be permission bits as an octal string such as "0600" or "0660", got ${JSON.stringify(v).slice(0, 80)}`);
  return parseInt(v, 8);
}

/** libvirt's own default for a system-wide QEMU driver. */
export const DEFAULT_LIBVIRT_URI = 'qemu:///system';

/** A libvirt URI (driver[+transport]://[host]/path[?params]); virsh receives it as one argument. */
function libvirtUri(v: unknown): string {
  if (v === undefined || v === '') return DEFAULT_LIBVIRT_URI;
  if (typeof v !== 'string' || v.length > 1024 || !/^[a-z][a-z0-9+.-]*:\/\/[^\s]*$/i.test(v)) {
    throw new IslandError('INVALID_CONFIG', `libvirtUri (ISLAND_LIBVIRT_URI) must be a libvirt URI such as qemu:///system, got ${JSON.stringify(String(v)).slice(0, 120)}`);
  }
  return v;
}

export async function loadConfig(env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  let file: Record<string, unknown> = {};
  if (env.ISLAND_CONFIG) {
    let text: string;
    try {
      text = await readFile(env.ISLAND_CONFIG, 'utf8');
    } catch (err) {
      throw new IslandError('INVALID_CONFIG', `cannot read ISLAND_CONFIG ${env.ISLAND_CONFIG}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
      file = parsed as Record<string, unknown>;
    } catch (err) {
      throw new IslandError('INVALID_CONFIG', `${env.ISLAND_CONFIG}: ${(err as Error).message}`, { cause: err });
    }
  }
  const pick = (key: string, envName: string): unknown => env[envName] ?? file[key];
  const dataDir = path(pick('dataDir', 'ISLAND_DATA_DIR') ?? '/var/lib/island', 'dataDir (ISLAND_DATA_DIR)');
  const level = pick('logLevel', 'ISLAND_LOG_LEVEL') ?? 'info';
  const region = parseRegionName(pick('region', 'ISLAND_REGION') ?? 'default', 'region (ISLAND_REGION)');
  const storeDir = path(pick('storeDir', 'ISLAND_STORE_DIR') ?? join(dataDir, 'store'), 'storeDir (ISLAND_STORE_DIR)');
  if (!LEVELS.includes(level as Config['logLevel'])) throw new IslandError('INVALID_CONFIG', `logLevel must be one of ${LEVELS.join(', ')}`);
  const regions = regionsOf(file.regions);
  const testSwitches = env.ISLAND_TEST_SWITCHES === '1';
  const gcGraceMs = seconds(pick('gcGraceSeconds', 'ISLAND_GC_GRACE') ?? 86_400, 'gcGraceSeconds (ISLAND_GC_GRACE)') * 1000;
  const commitWindowMs = seconds(pick('commitWindowSeconds', 'ISLAND_COMMIT_WINDOW') ?? 3600, 'commitWindowSeconds (ISLAND_COMMIT_WINDOW)') * 1000;
  if (commitWindowMs < 1000) throw new IslandError('INVALID_CONFIG', 'commitWindowSeconds (ISLAND_COMMIT_WINDOW) must be at least 1');
  checkGraceWindow(gcGraceMs, commitWindowMs, testSwitches);
  const crashAt = env.ISLAND_CRASH_AT || undefined;
  if (crashAt !== undefined && !testSwitches) throw new IslandError('INVALID_CONFIG', 'ISLAND_CRASH_AT is a test switch: it needs ISLAND_TEST_SWITCHES=1');
  if (crashAt !== undefined && !isCrashPoint(crashAt)) throw new IslandError('INVALID_CONFIG', `ISLAND_CRASH_AT: no crash point ${JSON.stringify(crashAt.slice(0, 60))} (see src/util/crash.ts)`);
  const storeFaultRate = Number(env.ISLAND_STORE_FAULT_RATE ?? 0);
  if (!(storeFaultRate >= 0 && storeFaultRate < 1)) throw new IslandError('INVALID_CONFIG', `ISLAND_STORE_FAULT_RATE must be a probability in [0, 1), got ${JSON.stringify(env.ISLAND_STORE_FAULT_RATE)}`);
  if (storeFaultRate > 0 && !testSwitches) throw new IslandError('INVALID_CONFIG', 'ISLAND_STORE_FAULT_RATE is a test switch: it needs ISLAND_TEST_SWITCHES=1');
  const fileOwner = await accountId(pick('fileOwner', 'ISLAND_FILE_OWNER'), 'passwd', 'fileOwner (ISLAND_FILE_OWNER)', process.getuid?.() ?? 0);
  const fileGroup = await accountId(pick('fileGroup', 'ISLAND_FILE_GROUP'), 'group', 'fileGroup (ISLAND_FILE_GROUP)', process.getgid?.() ?? 0);
  return {
    dataDir,
    mount: path(pick('mount', 'ISLAND_MOUNT') ?? '/run/island/mnt', 'mount (ISLAND_MOUNT)'),
    socket: path(pick('socket', 'ISLAND_SOCKET') ?? join(dataDir, 'island.sock'), 'socket (ISLAND_SOCKET)'),
    hostId: parseHostId(pick('hostId', 'ISLAND_HOST_ID') ?? hostname().toLowerCase().replace(/[^a-z0-9._-]/g, '-'), 'hostId (ISLAND_HOST_ID)'),
    storeDir,
    logLevel: level as Config['logLevel'],
    metricsPort: port(pick('metricsPort', 'ISLAND_METRICS_PORT')),
    metricsAddress: ipAddress(pick('metricsAddress', 'ISLAND_METRICS_ADDRESS')),
    region,
    store: regions[region] ?? { type: 'fs', dir: storeDir },
    regions,
    fileOwner,
    fileGroup,
    fileMode: fileMode(pick('fileMode', 'ISLAND_FILE_MODE')),
    libvirtUri: libvirtUri(pick('libvirtUri', 'ISLAND_LIBVIRT_URI')),
    fuse: fuseChoice(pick('fuse', 'ISLAND_FUSE')),
    fuseThreads: fuseThreads(pick('fuseThreads', 'ISLAND_FUSE_THREADS')),
    keyFile: optionalPath(pick('keyFile', 'ISLAND_KEY_FILE'), 'keyFile (ISLAND_KEY_FILE)'),
    keyPassphraseFile: optionalPath(pick('keyPassphraseFile', 'ISLAND_KEY_PASSPHRASE_FILE'), 'keyPassphraseFile (ISLAND_KEY_PASSPHRASE_FILE)'),
    writePath: writePath(pick('writePath', 'ISLAND_WRITE_PATH')),
    gcGraceMs,
    commitWindowMs,
    testSwitches,
    crashAt,
    storeFaultRate,
  };
}

/** Where the local state of attached volumes lives. */
export function volumesDir(c: Config): string {
  return join(c.dataDir, 'volumes');
}

/** The store of a region by name: a declared one, or "default" for the embedded store. */
export function regionBackend(c: Config, name: string): BackendConfig | undefined {
  return c.regions[name] ?? (name === 'default' ? { type: 'fs', dir: c.storeDir } : undefined);
}
