/**
 * One error class for all of island, with a stable string code.
 *
 * Callers match on `code` (never on `instanceof`, which does not survive worker
 * threads or process boundaries). Every code says whether the failure is transient
 * (worth retrying: timeouts, 5xx, resets) and which errno a FUSE reply carries.
 * This module imports nothing of the project.
 */

export interface CodeInfo {
  /** A retry may succeed (network trouble, overload). Only the retry wrapper acts on this. */
  readonly transient: boolean;
  /**
   * errno name returned to the kernel when this error ends a FUSE request. A store error
   * ends one only behind a lazy read of a file that exists, asked for with valid
   * arguments: whatever the store said, the caller sees an I/O error (EIO, or ETIMEDOUT
   * for a timeout), never ENOENT or EINVAL, which QEMU would take for its own mistake.
   */
  readonly errno: 'EIO' | 'ENOENT' | 'EACCES' | 'EINVAL' | 'EEXIST' | 'EBUSY' | 'ENOSPC' | 'EPERM' | 'EROFS' | 'ETIMEDOUT' | 'ENOTSUP' | 'EFBIG';
  /** One-line meaning, shown in docs and `island help errors`. */
  readonly doc: string;
}

/** The table of every error code island emits. Codes are part of the public contract. */
export const CODES = {
  // store
  STORE_NOT_FOUND: { transient: false, errno: 'EIO', doc: 'the object does not exist' },
  STORE_ACCESS_DENIED: { transient: false, errno: 'EIO', doc: 'the store refused the credentials or the operation' },
  STORE_BAD_REQUEST: { transient: false, errno: 'EIO', doc: 'the store rejected the request as malformed (key, range, header)' },
  STORE_RANGE: { transient: false, errno: 'EIO', doc: 'a ranged read starts past the end of the object' },
  STORE_UNAVAILABLE: { transient: true, errno: 'EIO', doc: 'the store did not answer or answered 5xx; retrying may help' },
  STORE_TIMEOUT: { transient: true, errno: 'ETIMEDOUT', doc: 'a store request took longer than its deadline' },
  STORE_CONFIG: { transient: false, errno: 'EIO', doc: 'the store configuration is invalid' },
  STORE_DAMAGED: { transient: false, errno: 'EIO', doc: 'the store holds something other than an object where one should be (a directory in the embedded store)' },
  STORE_INTEGRITY: { transient: true, errno: 'EIO', doc: 'bytes received from the store do not match what was sent or announced' },
  FAULT_INJECTED: { transient: true, errno: 'EIO', doc: 'a failure injected by the fault wrapper (tests only)' },
  ABORTED: { transient: false, errno: 'EIO', doc: 'the operation was aborted by its caller' },
  DEADLINE: { transient: false, errno: 'ETIMEDOUT', doc: 'the overall deadline of an operation (retries included) passed' },
  // formats
  FORMAT_CORRUPT: { transient: false, errno: 'EIO', doc: 'an object or header is truncated, inconsistent or fails its checksum' },
  FORMAT_UNSUPPORTED: { transient: false, errno: 'ENOTSUP', doc: 'a valid object uses a version or feature this build does not support' },
  HASH_MISMATCH: { transient: false, errno: 'EIO', doc: 'content read does not hash to the id it was stored under' },
  // encryption
  AUTH_FAILED: { transient: false, errno: 'EIO', doc: 'an encrypted object fails authentication: damaged, tampered with, or moved to another place' },
  KEY_MISSING: { transient: false, errno: 'EIO', doc: 'the repository is encrypted and no key file is configured (keyFile / ISLAND_KEY_FILE), or the key set lacks a key id the object names' },
  KEY_MISMATCH: { transient: false, errno: 'EIO', doc: "the key file does not open, or opens another repository's master key than the store's encryption record names" },
  KEY_REVOKED: { transient: false, errno: 'EIO', doc: 'the key file was removed from the repository (island store key remove)' },
  KEY_FILE_UNSAFE: { transient: false, errno: 'EIO', doc: 'a key or passphrase file is readable or writable by others than its owner (needs mode 0600 or stricter)' },
  ENCRYPTION_MIXED: { transient: false, errno: 'EIO', doc: 'encrypted and unencrypted data would mix: the store already holds unencrypted data, or a key is configured for an unencrypted store' },
  // input
  INVALID_ARGUMENT: { transient: false, errno: 'EINVAL', doc: 'a name, size, id or option is invalid' },
  INVALID_CONFIG: { transient: false, errno: 'EINVAL', doc: 'the configuration file or environment is invalid' },
  // repository / protocols
  NOT_FOUND: { transient: false, errno: 'ENOENT', doc: 'the named volume or snapshot does not exist' },
  ALREADY_EXISTS: { transient: false, errno: 'EEXIST', doc: 'a volume or snapshot with that name or id already exists' },
  SNAPSHOT_DELETED: { transient: false, errno: 'ENOENT', doc: 'the snapshot has a tombstone' },
  SNAPSHOT_DAMAGED: { transient: false, errno: 'EIO', doc: 'the snapshot is marked damaged by fsck and cannot be a restore source' },
  PINNED: { transient: false, errno: 'EBUSY', doc: 'the snapshot is pinned by something live' },
  BUSY: { transient: false, errno: 'EBUSY', doc: 'the volume is attached, open, or has an operation in progress' },
  DATA_DIR_LOCKED: { transient: false, errno: 'EBUSY', doc: 'another island daemon serves this data directory' },
  ATTACHED_ELSEWHERE: { transient: false, errno: 'EBUSY', doc: 'the volume is attached on another host' },
  WRONG_HOST: { transient: false, errno: 'EINVAL', doc: 'the request names another host than the daemon that received it (attach --host)' },
  FENCED: { transient: false, errno: 'EROFS', doc: 'a newer generation of the volume exists; this host may no longer commit' },
  HEAD_UNCERTAIN: { transient: false, errno: 'EIO', doc: 'a lost or damaged chain link or manifest hides what may be the newest snapshot: the volume would roll back' },
  WINDOW_EXPIRED: { transient: false, errno: 'EIO', doc: 'a writer outlived its commit window and must re-check or abort' },
  // local engine
  NO_SPACE: { transient: false, errno: 'ENOSPC', doc: 'local space or a budget is exhausted' },
  READ_ONLY: { transient: false, errno: 'EROFS', doc: 'the file is read-only' },
  NOT_PERMITTED: { transient: false, errno: 'EPERM', doc: 'the operation is not permitted on island files' },
  TOO_LARGE: { transient: false, errno: 'EFBIG', doc: 'a size or offset is beyond what island supports' },
  NATIVE_MISSING: { transient: false, errno: 'EIO', doc: 'the native addon is not built; run the install step' },
  LOCAL_IO: { transient: false, errno: 'EIO', doc: 'a local disk operation failed' },
  LOCAL_STATE_DAMAGED: { transient: false, errno: 'EIO', doc: 'a local copy cannot prove which clusters are local; run `island fsck --local` or restore the volume again' },
  // control plane
  QMP_ERROR: { transient: false, errno: 'EIO', doc: 'QEMU returned an error or broke the QMP protocol' },
  QMP_TIMEOUT: { transient: true, errno: 'ETIMEDOUT', doc: 'QEMU did not answer within the bound' },
  DOMAIN_NOT_FOUND: { transient: false, errno: 'ENOENT', doc: 'libvirt has no domain of that name (attach --domain, volume resize --domain)' },
  DOMAIN_NOT_USING_VOLUME: { transient: false, errno: 'EINVAL', doc: "the libvirt domain's disks do not use this volume's file on the mount" },
  LIBVIRT_UNAVAILABLE: { transient: true, errno: 'EIO', doc: 'virsh is missing or libvirtd does not answer on the configured URI (libvirtUri)' },
  LIBVIRT_TIMEOUT: { transient: true, errno: 'ETIMEDOUT', doc: 'a virsh command did not finish within its bound' },
  LIBVIRT_ERROR: { transient: false, errno: 'EIO', doc: 'libvirt refused a command (details.reason: agent, not-running)' },
  DAEMON_UNREACHABLE: { transient: true, errno: 'EIO', doc: 'the island daemon does not answer on its control socket' },
  INTERNAL: { transient: false, errno: 'EIO', doc: 'an unexpected internal error (a bug): please report it' },
} as const satisfies Record<string, CodeInfo>;

export type ErrorCode = keyof typeof CODES;

export interface IslandErrorOptions {
  cause?: unknown;
  /** Structured context (key, offset, volume...) for logs and JSON output. */
  details?: Record<string, unknown>;
}

export class IslandError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, opts: IslandErrorOptions = {}) {
    super(redactUrlCredentials(message), opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'IslandError';
    this.code = code;
    this.details = opts.details ?? {};
  }

  get transient(): boolean {
    return CODES[this.code].transient;
  }

  toJSON(): { code: ErrorCode; message: string; details: Record<string, unknown> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

/**
 * The userinfo of a URL (`scheme://user:password@`), up to the last `@` before the path:
 * a password may hold an unescaped `@`, never an unescaped `/`, `?` or `#`.
 */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/?#]*@/gi;

/**
 * `text` with the userinfo of every URL in it replaced by `***`, so credentials written
 * into an endpoint (`http://KEY:SECRET@host`) never reach a message or a log line. Every
 * IslandError message passes through it.
 */
export function redactUrlCredentials(text: string): string {
  return text.replace(URL_USERINFO, '$1***@');
}

/** True when `code` names an island error code. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(CODES, code);
}

/** The island code of any thrown value (plain errors and foreign values become INTERNAL). */
export function codeOf(err: unknown): ErrorCode {
  const code = (err as { code?: unknown } | null)?.code;
  return isErrorCode(code) ? code : 'INTERNAL';
}

/** Whether a retry may help. Matches on `code`, so it works across worker boundaries. */
export function isTransient(err: unknown): boolean {
  return CODES[codeOf(err)].transient;
}

/** The errno name a FUSE reply should carry for this error. */
export function errnoOf(err: unknown): CodeInfo['errno'] {
  return CODES[codeOf(err)].errno;
}

/** Wrap anything thrown into an IslandError, keeping an existing one unchanged. */
export function asIslandError(err: unknown, fallback: ErrorCode = 'INTERNAL'): IslandError {
  if (err instanceof IslandError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (isErrorCode(code)) {
    const e = new IslandError(code, String((err as Error).message ?? err), { cause: err });
    return e;
  }
  const message = err instanceof Error ? err.message : String(err);
  return new IslandError(fallback, message, { cause: err });
}
