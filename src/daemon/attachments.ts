/**
 * Attach and detach, as the daemon runs them, and the reopening of the volumes that were
 * attached here when the daemon last stopped or crashed. Attaching takes the volume's next
 * generation in the store (docs/protocols.md, "Attach"), then creates or reopens its local
 * state: a kept local copy when it is current, a restore from the newest snapshot (or the
 * snapshot the volume was created from) otherwise, or a new image.
 */
import { IslandError, codeOf, isTransient } from '../errors.js';
import { parseVolumeName } from '../format/names.js';
import type { Manifest, VolumeRecord } from '../format/records.js';
import { acquireGeneration, releaseGeneration } from '../repo/attach.js';
import { checkHolds } from '../repo/fencing.js';
import { untilAvailable } from '../util/backoff.js';
import { sleep } from '../util/sleep.js';
import { treeFetcher } from '../snapshot/restore.js';
import { hasVolumeState, type Seal } from '../volume/engine.js';
import { createVolume, openVolume, type AnyVolume } from '../volume/write-path.js';
import { mountFile, type Attached, type AttachRequest, type DaemonContext, type Detaching } from './context.js';
import { LazyFetcher, parseFillRate, type Fills } from './fills.js';
import type { SnapshotJobs } from './snapshot-jobs.js';
import { checkRestorable, checkUndamaged } from './sources.js';
import { crashPoint } from '../util/crash.js';
import { imageVirtualSize, Resizes, type ResizeOutcome, type ResizeRequest } from './resize.js';
import { parseDomainName } from '../libvirt/virsh.js';

export interface DetachRequest {
  force?: boolean;
  keepLocal?: boolean;
  /** Return once the final snapshot is sealed and the file is off the mount (the upload runs on). */
  noWait?: boolean;
}

/** How long a restart waits for the store to confirm reopened volumes before serving. */
const CONFIRM_WAIT_MS = 10_000;

const UNCONFIRMED = 'reopened after a restart: read-only until the store confirms that no other host took the volume meanwhile';

/**
 * A caller that names the host it attaches for (a scheduler that placed the volume with
 * its VM) reached this host's daemon: anything else would attach the volume where the VM
 * cannot open it.
 */
export function checkHost(hostId: string, volume: string, host: string | undefined): void {
  if (host === undefined || host === hostId) return;
  throw new IslandError('WRONG_HOST', `attach of ${volume} asks for host ${JSON.stringify(host.slice(0, 100))}, but this daemon is host ${JSON.stringify(hostId)}; ask that host's daemon`, {
    details: { volume, host: host.slice(0, 100), daemonHost: hostId },
  });
}

export class Attachments {
  /** Names with an attach or detach in progress: a second one is refused. */
  private readonly busy = new Set<string>();
  /** The daemon is stopping: background detaches give up (their volumes come back at the next start). */
  private closing = false;
  private readonly stopping = new AbortController();
  private readonly resizes: Resizes;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly fills: Fills,
    private readonly snapshots: SnapshotJobs,
  ) {
    this.resizes = new Resizes(ctx, (name, fn) => this.exclusive(name, fn), (path) => snapshots.qmpSession(path), () => snapshots.virsh());
  }

  /** Grow a volume (resize.ts): never while it is being attached or detached here. */
  resize(name: unknown, req: ResizeRequest): Promise<ResizeOutcome> {
    return this.resizes.resize(name, req);
  }

  /** Reopen the volumes that were attached here when the daemon last stopped or crashed. */
  async reopenAll(): Promise<void> {
    const confirmations: Promise<void>[] = [];
    for (const name of await this.ctx.dirs.listLive()) {
      const vlog = this.ctx.log.child({ volume: name });
      try {
        if (!(await hasVolumeState(this.ctx.dirs.live(name)))) {
          // An attach that died before its local state was complete: nothing was served
          // from it; the next attach starts it over.
          vlog.warn('local directory without a state record (an attach was interrupted); not served until attached again');
          continue;
        }
        const lazy = new LazyFetcher();
        const volume = await openVolume(this.ctx.dirs.live(name), { logger: vlog, fetcher: lazy, writePath: this.ctx.config.writePath });
        const baseId = volume.baseSnapshot;
        if (baseId) this.fills.resolveBase(lazy, name, baseId);
        // The parent is read from the store when the next snapshot needs it: a volume
        // comes back (and is served) even while the store is unreachable.
        const parentId = volume.committedSnapshot;
        const a: Attached = { volume, generation: volume.generation, access: { mode: 'read-only', why: UNCONFIRMED }, qmp: undefined, qga: undefined, parent: null, parentId: parentId || undefined, job: undefined };
        this.ctx.attached.set(name, a);
        this.ctx.unopened.delete(name);
        confirmations.push(this.confirm(name, a));
        if (baseId) await this.fills.resume(name, a, baseId);
        // The size the image has now (a resize may have grown it since its state record was
        // made): read in the background, as its first cluster may have to come from the store.
        imageVirtualSize(volume).then(
          (size) => (a.virtualSize = size),
          (err: unknown) => vlog.warn({ err, code: codeOf(err) }, 'the image header could not be read: capacity counts the size the volume was created with'),
        );
        vlog.info({ length: volume.length, recovery: volume.recovery }, 'volume reattached');
      } catch (err) {
        // One damaged volume must not take the others down; status says why it is not served.
        this.ctx.unopened.set(name, { code: codeOf(err), why: err instanceof Error ? err.message : String(err) });
        vlog.error({ err, code: codeOf(err) }, 'volume cannot be opened; not served');
      }
    }
    // Serve once every volume's first confirmation answered, or after CONFIRM_WAIT_MS
    // (a store that is down keeps those volumes read-only; the mount is not held for it).
    const wait = new AbortController();
    await Promise.race([Promise.all(confirmations), sleep(CONFIRM_WAIT_MS, wait.signal, { resolveOnAbort: true })]);
    wait.abort();
  }

  /**
   * Confirm that this host still holds a reopened volume's generation (resolves after the
   * first try; an unreachable store is waited out in the background):
   * until the store says so the volume is read-only (another host may have taken it with
   * --force while this daemon was down); an unreachable store is waited out; a newer
   * generation fences the volume for good.
   */
  private confirm(name: string, a: Attached): Promise<void> {
    const controller = new AbortController();
    a.confirming = controller;
    const log = this.ctx.log.child({ volume: name, generation: a.generation });
    let firstTry: () => void = () => undefined;
    const settled = new Promise<void>((r) => (firstTry = r));
    untilAvailable(() => checkHolds(this.ctx.repo, name, a.generation, { signal: controller.signal }), {
      signal: controller.signal,
      onWait: (err, delay) => {
        a.access = { mode: 'read-only', why: `the store cannot be reached (${codeOf(err)}) to confirm that this host still holds generation ${a.generation}; read-only until it answers` };
        this.ctx.attached.onChange();
        log.warn({ err, retryInMs: delay }, 'volume stays read-only: the store cannot confirm this host still holds it');
        firstTry();
      },
    })
      .then(
        () => {
          if (a.access.mode === 'read-only') {
            a.access = { mode: 'read-write', why: null };
            this.ctx.attached.onChange();
          }
          log.info('the store confirms this host holds the volume: read-write');
        },
        (err: unknown) => {
          if (!controller.signal.aborted) this.fence(name, a, err);
        },
      )
      .finally(firstTry);
    // The mount appears once the first try has answered: with a reachable store, a volume
    // is read-write (or fenced) before QEMU can open it again.
    return settled;
  }

  /** Another host holds the volume (or its generation cannot be confirmed): never writable again here. */
  fence(name: string, a: Attached, err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    a.access = { mode: 'fenced', why: `${codeOf(err)}: ${message}; detach it here to set its local copy aside (kept under ${this.ctx.dirs.asideRoot()})` };
    this.ctx.attached.onChange();
    this.ctx.log.error({ volume: name, err, code: codeOf(err) }, 'volume fenced: it is read-only on this host for good');
  }

  private async exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy.has(name)) throw new IslandError('BUSY', `volume ${name} has an attach or detach in progress`, { details: { volume: name } });
    if (this.ctx.detaching.has(name)) {
      throw new IslandError('BUSY', `volume ${name} is detaching: its final snapshot is uploading, and it is released when that snapshot commits (see island status)`, { details: { volume: name, detaching: true } });
    }
    this.busy.add(name);
    try {
      return await fn();
    } finally {
      this.busy.delete(name);
    }
  }

  async attach(rec: VolumeRecord, req: AttachRequest = {}): Promise<void> {
    const { ctx } = this;
    // Everything the request says is checked before anything changes.
    parseFillRate(req.fillRate);
    checkHost(ctx.config.hostId, rec.name, req.host);
    // attach --domain: the domain exists and its disks use this volume's file on the mount.
    const domain = req.domain === undefined ? undefined : parseDomainName(req.domain);
    if (domain !== undefined) await this.snapshots.virsh().checkUses(domain, mountFile(ctx.config, rec.name));
    await this.exclusive(rec.name, async () => {
      if (ctx.attached.has(rec.name)) throw new IslandError('BUSY', `volume ${rec.name} is already attached on this host`, { details: { volume: rec.name } });
      const att = await acquireGeneration(ctx.repo, rec.name, { force: req.force ?? false, allowRollback: req.allowRollback ?? false, catalogBeside: true });
      crashPoint('attach.claimed');
      const alog = ctx.log.child({ volume: rec.name, generation: att.generation });
      if (att.tookOverFrom) alog.warn({ from: att.tookOverFrom }, 'forced attach: the previous host must be fenced');
      if (att.claim === 'claim-rounds') alog.info('generation won by claim rounds (the store has no create-if-absent)');
      if (att.head.unlinked.length) alog.warn({ unlinked: att.head.unlinked }, 'the chain of snapshots has a lost or damaged link (the manifest stood in for it): run island fsck --repair');
      if (req.allowRollback && att.head.uncertain.length) alog.warn({ evidence: att.head.uncertain, base: att.base?.id ?? null }, 'attach allowed to roll back to an older snapshot on request');
      try {
        const catalog = att.catalog.catch((err: unknown) => alog.warn({ err }, 'the catalog record was not updated (a hint only)'));
        await Promise.all([this.attachAs(rec, { ...req, domain }, att.generation, att.base), catalog]);
        if (domain !== undefined) this.snapshots.watchDomain(domain);
      } catch (err) {
        // Nothing was served under the generation just taken: hand it back, so a later
        // attach (here or elsewhere) is not blocked by it.
        if (!ctx.attached.has(rec.name)) await releaseGeneration(ctx.repo, rec.name, att.generation, {}, att.head.head).catch(() => undefined);
        throw err;
      }
    });
  }

  /** Steps of attach after the generation is won: local state, parent, fill. */
  private async attachAs(rec: VolumeRecord, req: AttachRequest, generation: number, latest: Manifest | null): Promise<void> {
    const { ctx, fills } = this;
    const repo = ctx.repo;
    const name = rec.name;
    const dir = ctx.dirs.live(name);
    const vlog = ctx.log.child({ volume: name });
    let base = latest;
    if (!base && rec.source) {
      // A volume created from another volume's snapshot, with no snapshot of its own yet.
      base = (await repo.getManifest(rec.source.volume, rec.source.id)) ?? null;
      if (!base) throw new IslandError('NOT_FOUND', `the snapshot ${rec.source.id} that ${name} was created from is gone`, { details: { volume: name, snapshot: rec.source.id } });
      await checkRestorable(repo, base);
    }
    // A local copy: the one kept at the last detach here comes back first. A directory
    // without a state record is an attach that died before its local state was complete:
    // create starts it over (nothing was ever served from it).
    if (req.discardLocal && (await ctx.dirs.hasLive(name))) {
      // The operator's way out of a local copy that cannot be opened: restore from the
      // store instead, keeping the old copy aside (never deleted).
      const aside = await ctx.dirs.setAside(name, 'damaged', generation);
      ctx.unopened.delete(name);
      vlog.warn({ aside }, 'local copy set aside on request (--discard-local); restoring from the store');
    }
    let fromKept = false;
    if (!(await ctx.dirs.hasLive(name)) && (await ctx.dirs.hasKept(name))) {
      await ctx.dirs.reclaim(name);
      fromKept = true;
    }
    let volume: AnyVolume | undefined;
    let fillFrom: string | undefined;
    /** The local copy is made by this attach (nothing but this attach ever wrote it). */
    let made = true;
    if (await hasVolumeState(dir)) {
      made = false;
      const lazy = new LazyFetcher();
      volume = await openVolume(dir, { logger: vlog, generation, fetcher: lazy, writePath: ctx.config.writePath });
      if (base && base.volume === name && volume.committedSnapshot !== base.id) {
        // A newer snapshot exists than this copy holds: restore from it instead. A kept
        // copy holds exactly its final snapshot and goes; any other copy is set aside.
        const held = volume.committedSnapshot;
        await volume.close();
        volume = undefined;
        made = true;
        if (fromKept) {
          vlog.warn({ local: held, latest: base.id }, 'the kept local copy is older than the latest snapshot; dropping it');
          await ctx.dirs.dropLive(name);
        } else {
          const aside = await ctx.dirs.setAside(name, 'stale', generation);
          vlog.warn({ local: held, latest: base.id, aside }, 'the local copy is older than the latest snapshot; set aside, restoring the latest');
        }
      } else if (volume.baseSnapshot) {
        fills.resolveBase(lazy, name, volume.baseSnapshot);
        fillFrom = volume.baseSnapshot;
      }
    }
    if (!volume && base) {
      // The damage check and the pin at once: a damaged base fails the attach, and its pin
      // (an attach pin, kept at most its lifetime) only delays the collection of that snapshot.
      await Promise.all([checkUndamaged(repo, base), fills.pinBase(base)]);
      // The base is the committed snapshot from the start: one state record says both.
      volume = await createVolume(dir, {
        writePath: ctx.config.writePath,
        name,
        virtualSize: rec.virtualSize,
        clusterSize: base.clusterSize,
        generation,
        baseSnapshot: base.id,
        baseLength: base.imageLength,
        fetcher: treeFetcher(repo, base),
        logger: vlog,
      });
      crashPoint('attach.local-created');
      fillFrom = base.id;
      vlog.info({ base: base.id, imageLength: base.imageLength }, 'attached from snapshot: clusters are fetched on first touch');
    } else if (!volume) {
      volume = await createVolume(dir, { name, virtualSize: rec.virtualSize, clusterSize: rec.clusterSize, generation, logger: vlog, writePath: ctx.config.writePath });
    }
    const committed = volume.committedSnapshot;
    const parent = committed ? await this.snapshots.parentById(name, committed, volume) : null;
    crashPoint('attach.recorded');
    const a: Attached = { volume, generation, access: { mode: 'read-write', why: null }, qmp: req.qmp, qga: req.qga, domain: req.domain, parent, job: undefined };
    ctx.attached.set(name, a);
    ctx.unopened.delete(name);
    if (fillFrom) await fills.resume(name, a, fillFrom, req);
    await this.growToRecord(rec, a, made);
    vlog.info({ generation }, 'attached');
  }

  /**
   * The image follows its record: a volume grown while detached, or created from a smaller
   * snapshot, has an image smaller than its record until this attach grows it (resize.ts:
   * qemu-img through the mount; nobody has the file open yet). When that fails, a local
   * copy this attach made is dropped (the attach fails whole, the generation is released);
   * an older one stays attached at its old size, for `volume resize` to grow again.
   */
  private async growToRecord(rec: VolumeRecord, a: Attached, made: boolean): Promise<void> {
    const { ctx } = this;
    let size: number;
    try {
      size = await imageVirtualSize(a.volume);
    } catch (err) {
      // A header that cannot be read (its cluster is damaged in the store, say) fails the
      // reads of it with EIO like any other damaged cluster; it does not fail the attach,
      // and nothing can be grown until it reads.
      ctx.log.warn({ volume: rec.name, err, code: codeOf(err) }, 'the image header cannot be read: not grown to the size of its volume');
      return;
    }
    a.virtualSize = size;
    if (size >= rec.virtualSize) return;
    try {
      await this.resizes.growImage(rec.name, a, rec.virtualSize);
      a.virtualSize = rec.virtualSize;
      ctx.log.info({ volume: rec.name, from: size, to: rec.virtualSize }, 'image grown to the size of its volume');
    } catch (err) {
      if (made) {
        ctx.attached.delete(rec.name);
        await this.fills.stop(a);
        await a.volume.close();
        await ctx.dirs.dropLive(rec.name);
      }
      const now = made ? 'the attach is undone' : `it is attached at ${size} bytes; retry with island volume resize ${rec.name} --size ${rec.virtualSize}`;
      throw new IslandError(codeOf(err), `the image of ${rec.name} (${size} bytes) could not grow to the volume's ${rec.virtualSize} bytes: ${(err as Error).message}; ${now}`, { cause: err, details: { volume: rec.name, image: size, size: rec.virtualSize } });
    }
  }

  async detach(name: string, req: DetachRequest = {}): Promise<string> {
    const { ctx } = this;
    const vname = parseVolumeName(name);
    return this.exclusive(vname, async () => {
      const a = ctx.attached.get(vname);
      if (!a) throw new IslandError('NOT_FOUND', `volume ${vname} is not attached on this host`, { details: { volume: vname } });
      const open = ctx.openHandles(vname);
      if (open > 0 && !req.force) throw new IslandError('BUSY', `${vname}.qcow2 is open (${open} handle${open > 1 ? 's' : ''}); close it or detach with --force`, { details: { volume: vname, open } });
      a.confirming?.abort();
      if (a.access.mode === 'fenced') return this.setAside(vname, a);
      // A snapshot in progress sealed before the last writes: the final one seals after
      // them (joining it as the final snapshot would drop those writes with the local copy).
      while (a.job) await a.job.promise.catch(() => undefined);
      if (req.noWait) return this.detachInBackground(vname, a, req);
      // The final snapshot: the volume's last state goes to the store before the host
      // lets go of it (its manifest is written before the detach record).
      const last = await this.snapshots.one(vname, 'crash');
      ctx.log.info({ volume: vname, snapshot: last.id }, 'final snapshot before detach');
      crashPoint('detach.final-snapshot');
      ctx.attached.delete(vname);
      await this.release(vname, a, req);
      return vname;
    });
  }

  /** After the final snapshot committed: close, drop (or keep) the local copy, write the detach record. */
  private async release(name: string, a: Attached, req: DetachRequest): Promise<void> {
    const { ctx } = this;
    const base = a.volume.baseSnapshot;
    await this.fills.stop(a);
    await a.volume.close();
    if (req.keepLocal) await ctx.dirs.keep(name);
    else await ctx.dirs.dropLive(name);
    crashPoint('detach.local-released');
    await releaseGeneration(ctx.repo, name, a.generation, {}, finalHead(a));
    if (a.domain !== undefined) this.snapshots.unwatchDomain(a.domain);
    // The final snapshot holds everything the base gave: this host's pins on it can go.
    if (base) await this.fills.releasePins(base);
    ctx.log.info({ volume: name, keptLocal: req.keepLocal === true }, 'detached');
  }

  /**
   * detach --no-wait: the file leaves the mount and the final epoch is sealed (durable
   * locally) before the caller is answered; the upload runs on. This host keeps the
   * volume's generation (another host's attach is refused: ATTACHED_ELSEWHERE) and this
   * daemon refuses attach and detach of it (BUSY) until the final snapshot commits, then
   * releases it as a waiting detach does. An unreachable store is waited out (status shows
   * it); a permanent failure puts the volume back on the mount, attached as before; a
   * fenced volume is set aside. A daemon stopped meanwhile reopens the volume at its next
   * start, attached (the detach is asked again).
   */
  private async detachInBackground(name: string, a: Attached, req: DetachRequest): Promise<string> {
    const { ctx } = this;
    const d: Detaching = { attached: a, started: Date.now(), waiting: null, promise: Promise.resolve() };
    // Off the mount first (in one step with the detaching mark): no new snapshot job starts.
    ctx.attached.delete(name);
    ctx.detaching.set(name, d);
    let seal: Seal;
    try {
      seal = await a.volume.seal();
    } catch (err) {
      ctx.detaching.delete(name);
      ctx.attached.set(name, a);
      throw err;
    }
    const first = this.snapshots.oneOf(name, a, 'crash', seal);
    d.promise = this.finishInBackground(name, a, req, d, first).finally(() => ctx.detaching.delete(name));
    ctx.log.info({ volume: name }, 'detaching: final snapshot sealed, the file is off the mount; uploading in the background');
    return name;
  }

  private async finishInBackground(name: string, a: Attached, req: DetachRequest, d: Detaching, first: Promise<Manifest>): Promise<void> {
    const { ctx } = this;
    const vlog = ctx.log.child({ volume: name });
    // The first try is the sealed snapshot already under way; a retry snapshots again.
    let next: Promise<Manifest> | undefined = first;
    try {
      const last = await untilAvailable(
        () => {
          const job = next ?? this.snapshots.oneOf(name, a, 'crash');
          next = undefined;
          return job;
        },
        {
          signal: this.stopping.signal,
          onWait: (err, delay) => {
            d.waiting = { code: codeOf(err), message: (err as Error).message };
            vlog.warn({ err, retryInMs: delay }, 'the final snapshot of a detach waits for the store');
          },
        },
      );
      d.waiting = null;
      vlog.info({ snapshot: last.id }, 'final snapshot before detach');
    } catch (err) {
      if (this.closing) return;
      if (codeOf(err) === 'FENCED') {
        await this.setAside(name, a);
        return;
      }
      ctx.attached.set(name, a);
      vlog.error({ err, code: codeOf(err) }, 'the final snapshot of a detach failed: the volume is attached again (detach it again)');
      return;
    }
    crashPoint('detach.final-snapshot');
    try {
      await this.release(name, a, req);
    } catch (err) {
      // The local copy is closed; the detach record is what is missing: the store is
      // asked again until it takes it (a crash here leaves the generation held, as after
      // a crash of a waiting detach at the same step).
      if (this.closing || !isTransient(err)) {
        vlog.error({ err, code: codeOf(err) }, 'detach: releasing the volume failed after its final snapshot');
        return;
      }
      await untilAvailable(() => releaseGeneration(ctx.repo, name, a.generation, {}, finalHead(a)), { signal: this.stopping.signal }).catch((e: unknown) => vlog.error({ err: e }, 'detach: the detach record could not be written'));
    }
  }

  /**
   * Detach a fenced volume: no final snapshot (this host may not commit), no detach record
   * (the generation is another host's now). Its local copy may hold writes that no snapshot
   * has: it is moved aside, never dropped, for the operator to inspect or recover.
   */
  private async setAside(name: string, a: Attached): Promise<string> {
    this.ctx.attached.delete(name);
    await this.fills.stop(a);
    await a.volume.close();
    const dir = await this.ctx.dirs.setAside(name, 'fenced', a.generation);
    if (a.domain !== undefined) this.snapshots.unwatchDomain(a.domain);
    this.ctx.log.warn({ volume: name, generation: a.generation, dir }, 'fenced volume detached: its local copy is kept aside, not uploaded');
    return name;
  }

  /** Stop fills and close every attached volume cleanly (the daemon stops). */
  async closeAll(): Promise<void> {
    this.closing = true;
    this.stopping.abort();
    // A detach still uploading stops here; the volume is reopened, attached, at the next start.
    for (const [name, d] of this.ctx.detaching) {
      await this.fills.stop(d.attached);
      // Not waited for: its upload may hang on the store as long as the store's deadline.
      await d.attached.volume.close().catch((err: unknown) => this.ctx.log.error({ volume: name, err }, 'volume close failed'));
    }
    for (const [name, a] of this.ctx.attached) {
      a.confirming?.abort();
      await this.fills.stop(a);
      await a.volume.close().catch((err: unknown) => this.ctx.log.error({ volume: name, err }, 'volume close failed'));
    }
  }
}

/**
 * The chain's end a detach leaves: the final snapshot (the parent of the next one), or
 * nothing when it is not known here (its manifest not read yet since a restart): then no
 * head record is written and the next attach walks the chain.
 */
function finalHead(a: Attached): Manifest | null {
  return a.parentId === undefined ? a.parent : null;
}
