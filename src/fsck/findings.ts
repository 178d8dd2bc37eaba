/**
 * What fsck finds: typed findings, each about one object (or one blob inside a pack), with
 * the snapshots it affects and what a repair would do. A finding is recorded once per
 * (type, key) however many references lead to it; the references add affected snapshots.
 */

/** The kinds of finding, in the order the report prints them. */
export const FINDING_TYPES = [
  'missing-object', // a referenced object does not exist
  'checksum-mismatch', // bytes fail their hash or checksum
  'undecodable', // bytes that do not parse as what they should be
  'dangling-reference', // a reference to a place where the target is not (pack exists, blob does not)
  'damaged-snapshot', // a snapshot marked damaged by an earlier repair
  'qcow2-corruption', // qemu-img check found corruption in a snapshot's image
  'fork', // two snapshots of one volume with the same parent (two hosts believed they held it)
  'stale-pin', // a pin past its expiry: its holder is presumed dead
  'orphan', // an object nothing references
] as const;
export type FindingType = (typeof FINDING_TYPES)[number];

/**
 * error: a snapshot may not restore (exit status 4 unless repaired).
 * warning: nothing is lost, but an operator should know (forks, stale pins, orphans).
 */
export type Severity = 'error' | 'warning';

export const SEVERITY: Readonly<Record<FindingType, Severity>> = {
  'missing-object': 'error',
  'checksum-mismatch': 'error',
  undecodable: 'error',
  'dangling-reference': 'error',
  'damaged-snapshot': 'error',
  'qcow2-corruption': 'error',
  fork: 'warning',
  'stale-pin': 'warning',
  orphan: 'warning',
};

/** Where in the image a damaged blob sat, for repair from a local copy. */
export interface BlobSite {
  readonly volume: string;
  readonly cluster: number;
  readonly clusterSize: number;
}

export interface Finding {
  readonly type: FindingType;
  readonly severity: Severity;
  /** The object key, with `@offset` for one blob inside a pack. */
  readonly key: string;
  readonly message: string;
  /** Snapshot ids that cannot be fully restored because of this (sorted in the report). */
  readonly snapshots: Set<string>;
  /** What --repair does (or would do) about it. */
  repair: string;
  /** Set by the repair pass: true when fixed, false when it tried and could not. */
  repaired?: boolean;
  /** Bytes the object takes (orphans). */
  bytes?: number;
  /** Places of a damaged blob, for repair from local copies (bounded). */
  readonly sites: BlobSite[];
}

/** Sites kept per finding: enough to find one local copy. */
const MAX_SITES = 8;

export class Findings {
  private readonly byKey = new Map<string, Finding>();

  /** Record a finding (or return the one already recorded for its type and key). */
  add(type: FindingType, key: string, message: string, repair: string): Finding {
    const id = `${type} ${key}`;
    let f = this.byKey.get(id);
    if (!f) {
      f = { type, severity: SEVERITY[type], key, message, snapshots: new Set(), repair, sites: [] };
      this.byKey.set(id, f);
    }
    return f;
  }

  /** Attribute a finding to a snapshot (and a blob site, when known). */
  affect(f: Finding, snapshot: string | undefined, site?: BlobSite): void {
    if (snapshot !== undefined) f.snapshots.add(snapshot);
    if (site && f.sites.length < MAX_SITES) f.sites.push(site);
  }

  get(type: FindingType, key: string): Finding | undefined {
    return this.byKey.get(`${type} ${key}`);
  }

  all(): Finding[] {
    const order = new Map(FINDING_TYPES.map((t, i) => [t, i]));
    return [...this.byKey.values()].sort((a, b) => (order.get(a.type) ?? 0) - (order.get(b.type) ?? 0) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  get size(): number {
    return this.byKey.size;
  }
}

/** A finding as the report and --json show it. */
export interface FindingView {
  type: FindingType;
  severity: Severity;
  key: string;
  message: string;
  snapshots: string[];
  repair: string;
  repaired?: boolean;
  bytes?: number;
}

export function findingView(f: Finding): FindingView {
  const v: FindingView = { type: f.type, severity: f.severity, key: f.key, message: f.message, snapshots: [...f.snapshots].sort(), repair: f.repair };
  if (f.repaired !== undefined) v.repaired = f.repaired;
  if (f.bytes !== undefined) v.bytes = f.bytes;
  return v;
}
