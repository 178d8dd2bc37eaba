/**
 * The control API: HTTP/1.1 with JSON bodies over a unix socket (mode 0600).
 *
 *   GET    /v1/status                       daemon, data disk capacity, attached volumes
 *   GET    /v1/volumes                      catalog (a listing: may lag on Swift)
 *   POST   /v1/volumes                      {name, size, clusterSize?, region?, from?} -> 201
 *   POST   /v1/volumes                      {name, fromImage, format?, size?, clusterSize?} -> 201 {volume, snapshot, image}
 *   POST   /v1/volumes/{name}/import        {file, format?}: an image into an empty volume -> {volume, snapshot, image}
 *   GET    /v1/volumes/{name}
 *   DELETE /v1/volumes/{name}
 *   POST   /v1/volumes/{name}/attach        {qmp?, qga?, force?, fill?, fillRate?, discardLocal?, allowRollback?, host?, domain?}
 *   POST   /v1/volumes/{name}/detach        {force?, keepLocal?, noWait?}
 *   POST   /v1/volumes/{name}/resize        {size, qmp?, domain?} -> the volume, with {resize: {from, to, how}}
 *   POST   /v1/volumes/{name}/revert        {snapshot}: a detached volume back to one of its snapshots -> {volume, snapshot}
 *   POST   /v1/snapshots                    {volumes: [name...], consistency?, wait?, qmp?}
 *   GET    /v1/snapshots[?volume=name]
 *   GET    /v1/snapshots/{id}
 *   POST   /v1/snapshots/delete             {ids: [id...], force?}
 *   POST   /v1/snapshots/prune              {volume, keep: {last?, hourly?, daily?, weekly?}, dryRun?}
 *   POST   /v1/snapshots/{id}/mount         show it read-only as <volume>@<id>.qcow2
 *   POST   /v1/snapshots/{id}/unmount       {force?}
 *   POST   /v1/snapshots/{id}/copy          {to: region, wait?} -> the copy, or {started} without wait
 *   POST   /v1/snapshots/{id}/export        {file, format?: raw|qcow2} -> {snapshot, volume, file, format, ...}
 *   GET    /v1/images                       image imports and exports in progress
 *   POST   /v1/gc                           {dryRun?}
 *
 * Success: 200/201 with a JSON body. Failure: {"error": {"code", "message", "details"}}
 * with the HTTP status from STATUS_OF below. Requests are bounded (64 KiB body, 30 s to
 * send it); a malformed, oversized or abandoned request gets an error or is dropped, and
 * never disturbs the volumes being served.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmod, rm } from 'node:fs/promises';
import type { Logger } from 'pino';
import { IslandError, asIslandError, codeOf, type ErrorCode } from '../errors.js';
import { quoteInput } from '../format/names.js';
import type { Service } from './service.js';

export const MAX_BODY = 64 * 1024;
const BODY_TIMEOUT_MS = 30_000;

const STATUS_OF: Partial<Record<ErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  FORMAT_CORRUPT: 500,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  BUSY: 409,
  ATTACHED_ELSEWHERE: 409,
  WRONG_HOST: 409,
  PINNED: 409,
  FENCED: 409,
  SNAPSHOT_DELETED: 410,
  TOO_LARGE: 413,
  STORE_UNAVAILABLE: 503,
  DOMAIN_NOT_FOUND: 404,
  DOMAIN_NOT_USING_VOLUME: 409,
  LIBVIRT_UNAVAILABLE: 503,
  LIBVIRT_TIMEOUT: 504,
  STORE_TIMEOUT: 504,
};

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new IslandError('TOO_LARGE', `request body larger than ${MAX_BODY} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw new IslandError('INVALID_ARGUMENT', `request body is not JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new IslandError('INVALID_ARGUMENT', 'request body must be a JSON object');
  return v as Record<string, unknown>;
}

function bool(v: unknown, what: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new IslandError('INVALID_ARGUMENT', `${what} must be true or false, got ${quoteInput(v)}`);
  return v;
}

function str(v: unknown, what: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length === 0 || v.length > 4096) throw new IslandError('INVALID_ARGUMENT', `${what} must be a non-empty string, got ${quoteInput(v)}`);
  return v;
}

/**
 * Refuse the snapshot list of a name that is neither a volume nor has snapshots (a
 * deleted volume's snapshots remain and are listed): NOT_FOUND, not an empty list.
 */
async function refuseUnknownVolume(svc: Service, volume: string): Promise<void> {
  try {
    await svc.showVolume(volume);
  } catch (err) {
    if (codeOf(err) !== 'NOT_FOUND') throw err;
    throw new IslandError('NOT_FOUND', `no volume named ${volume}, and no snapshots of one`, { details: { volume } });
  }
}

/**
 * The client closed its connection before the request was read whole (Ctrl-C, a timeout
 * on its side): routine, not a failure of the daemon.
 */
function clientWentAway(req: IncomingMessage, err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return !(err instanceof IslandError) && req.destroyed && (code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE');
}

async function route(svc: Service, method: string, url: string, body: () => Promise<Record<string, unknown>>): Promise<[number, unknown]> {
  const path = url.split('?')[0] ?? '';
  const parts = path.split('/').filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      throw new IslandError('INVALID_ARGUMENT', 'malformed URL escape');
    }
  });
  if (parts[0] !== 'v1') throw new IslandError('NOT_FOUND', `no such endpoint: ${method} ${path.slice(0, 100)}`);
  const [, res, name, action] = parts;
  if (res === 'status' && parts.length === 2 && method === 'GET') return [200, await svc.status()];
  if (res === 'volumes') {
    if (parts.length === 2 && method === 'GET') return [200, { volumes: await svc.listVolumes() }];
    if (parts.length === 2 && method === 'POST') {
      const b = await body();
      if (b.fromImage !== undefined) return [201, await svc.images.createFromImage({ name: b.name, fromImage: b.fromImage, format: b.format, size: b.size, clusterSize: b.clusterSize })];
      return [201, await svc.createVolume({ name: b.name, size: b.size, clusterSize: b.clusterSize, region: str(b.region, 'region'), from: b.from })];
    }
    if (name !== undefined && parts.length === 3 && method === 'GET') return [200, await svc.showVolume(name)];
    if (name !== undefined && parts.length === 3 && method === 'DELETE') {
      await svc.deleteVolume(name);
      return [200, { deleted: name }];
    }
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'attach') {
      const b = await body();
      return [200, await svc.attach(name, { qmp: str(b.qmp, 'qmp'), qga: str(b.qga, 'qga'), force: bool(b.force, 'force'), fill: bool(b.fill, 'fill'), fillRate: typeof b.fillRate === 'number' ? b.fillRate : str(b.fillRate, 'fillRate'), discardLocal: bool(b.discardLocal, 'discardLocal'), allowRollback: bool(b.allowRollback, 'allowRollback'), host: str(b.host, 'host'), domain: str(b.domain, 'domain') })];
    }
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'revert') {
      const b = await body();
      return [200, await svc.revertVolume(name, { snapshot: b.snapshot })];
    }
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'import') {
      const b = await body();
      return [200, await svc.images.importInto(name, { file: b.file, format: b.format })];
    }
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'resize') {
      const b = await body();
      if (typeof b.size !== 'string' && typeof b.size !== 'number') throw new IslandError('INVALID_ARGUMENT', `size must be a byte count or a size like 20G, got ${quoteInput(b.size)}`);
      return [200, await svc.resizeVolume(name, { size: b.size, qmp: str(b.qmp, 'qmp'), domain: str(b.domain, 'domain') })];
    }
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'detach') {
      const b = await body();
      return [200, await svc.detach(name, { force: bool(b.force, 'force'), keepLocal: bool(b.keepLocal, 'keepLocal'), noWait: bool(b.noWait, 'noWait') })];
    }
  }
  if (res === 'snapshots') {
    if (parts.length === 2 && method === 'POST') {
      const b = await body();
      return [200, await svc.createSnapshots({ volumes: b.volumes, consistency: str(b.consistency, 'consistency'), wait: bool(b.wait, 'wait'), qmp: str(b.qmp, 'qmp'), qga: str(b.qga, 'qga') })];
    }
    if (parts.length === 2 && method === 'GET') {
      const volume = new URLSearchParams(url.split('?')[1] ?? '').get('volume') ?? undefined;
      const snapshots = await svc.listSnapshots(volume);
      if (volume !== undefined && snapshots.length === 0) await refuseUnknownVolume(svc, volume);
      return [200, { snapshots }];
    }
    if (name === 'delete' && parts.length === 3 && method === 'POST') {
      const b = await body();
      return [200, await svc.deleteSnapshots({ ids: b.ids, force: bool(b.force, 'force') })];
    }
    if (name === 'prune' && parts.length === 3 && method === 'POST') {
      const b = await body();
      return [200, await svc.pruneSnapshots({ volume: b.volume, keep: b.keep, dryRun: bool(b.dryRun, 'dryRun') })];
    }
    if (name !== undefined && parts.length === 3 && method === 'GET') return [200, await svc.showSnapshot(name)];
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'mount') return [200, await svc.mountSnapshot(name)];
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'unmount') {
      const b = await body();
      return [200, await svc.unmountSnapshot(name, { force: bool(b.force, 'force') })];
    }
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'export') {
      const b = await body();
      return [200, await svc.images.exportSnapshot(name, { file: b.file, format: b.format })];
    }
    if (name !== undefined && parts.length === 4 && method === 'POST' && action === 'copy') {
      const b = await body();
      return [200, await svc.copySnapshot({ id: name, to: str(b.to, 'to'), wait: bool(b.wait, 'wait') })];
    }
  }
  if (res === 'images' && parts.length === 2 && method === 'GET') return [200, { transfers: svc.images.views() }];
  if (res === 'gc' && parts.length === 2 && method === 'POST') {
    const b = await body();
    return [200, await svc.gc({ dryRun: bool(b.dryRun, 'dryRun') })];
  }
  throw new IslandError('NOT_FOUND', `no such endpoint: ${method} ${path.slice(0, 100)}`);
}

export async function startApi(svc: Service, socketPath: string, log: Logger): Promise<Server> {
  await rm(socketPath, { force: true });
  const server = createServer({ requestTimeout: BODY_TIMEOUT_MS, headersTimeout: BODY_TIMEOUT_MS }, (req, res) => {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    route(svc, method, url, () => readJson(req)).then(
      ([status, body]) => send(res, status, body),
      (err: unknown) => {
        if (clientWentAway(req, err)) {
          log.info({ method, url, reason: (err as Error).message }, 'control client went away before its request was read');
          return;
        }
        const e = asIslandError(err);
        const status = STATUS_OF[e.code] ?? (e.transient ? 503 : 500);
        if (status >= 500) log.error({ err, method, url }, 'control request failed');
        else log.debug({ code: e.code, method, url }, 'control request refused');
        if (!res.headersSent && !res.destroyed) send(res, status, { error: e.toJSON() });
      },
    );
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  await chmod(socketPath, 0o600);
  return server;
}
