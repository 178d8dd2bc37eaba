/**
 * Retention policy: which snapshots of a volume to keep (restic's `forget` rules).
 *
 * Snapshots are ordered newest first (by creation time, then by id: ULIDs of one
 * millisecond sort in creation order, so a tie is broken the same way everywhere).
 *
 *   last N     keeps the N newest snapshots;
 *   hourly N   keeps the newest snapshot of each of the last N hours that have snapshots;
 *   daily N    the same per calendar day;
 *   weekly N   the same per ISO 8601 week (weeks start on Monday).
 *
 * Hours, days and weeks are UTC, so the answer does not depend on the daemon's time zone.
 * An hour without snapshots does not count against N: `hourly 24` on a volume snapshotted
 * every other hour reaches back two days. A snapshot kept by several rules lists every
 * reason; a snapshot no rule keeps is deleted. Any rule with N >= 1 keeps the newest
 * snapshot, and a policy without one is refused (it would delete every snapshot).
 *
 * Pure: no I/O.
 */
import { IslandError } from '../errors.js';

export const RETENTION_RULES = ['last', 'hourly', 'daily', 'weekly'] as const;
export type RetentionRule = (typeof RETENTION_RULES)[number];

export type RetentionPolicy = Partial<Record<RetentionRule, number>>;

/** Largest N a rule accepts: a million buckets is far past any history and keeps counts exact. */
export const MAX_KEEP = 1_000_000;

export interface RetentionInput {
  readonly id: string;
  /** Creation time, ms since the Unix epoch. */
  readonly created: number;
}

export interface KeepReason {
  readonly rule: RetentionRule;
  /** The bucket the snapshot is the newest of: "2024-05-06T13" (hour), "2024-05-06" (day), "2024-W19" (week), "1" (last: its rank). */
  readonly bucket: string;
}

export interface RetentionDecision {
  readonly id: string;
  readonly created: number;
  readonly keep: boolean;
  /** Why it is kept (empty when it is deleted). */
  readonly reasons: readonly KeepReason[];
}

const pad = (n: number, w = 2): string => String(n).padStart(w, '0');

/** The ISO 8601 week of a UTC time: "YYYY-Www" (the year is the week-numbering year). */
export function isoWeek(ms: number): string {
  const d = new Date(ms);
  const day = (d.getUTCDay() + 6) % 7; // Monday = 0
  // The Thursday of this week decides the year.
  const thursday = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - day + 3);
  const year = new Date(thursday).getUTCFullYear();
  const week = 1 + Math.floor((thursday - Date.UTC(year, 0, 1)) / (7 * 86_400_000));
  return `${year}-W${pad(week)}`;
}

function bucketOf(rule: Exclude<RetentionRule, 'last'>, ms: number): string {
  const d = new Date(ms);
  const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  if (rule === 'hourly') return `${day}T${pad(d.getUTCHours())}`;
  if (rule === 'daily') return day;
  return isoWeek(ms);
}

/** Check a policy from outside (the API): each rule an integer 0..MAX_KEEP, at least one >= 1. */
export function parseRetentionPolicy(raw: Record<string, unknown>): RetentionPolicy {
  const policy: RetentionPolicy = {};
  for (const rule of RETENTION_RULES) {
    const v = raw[rule];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_KEEP) {
      throw new IslandError('INVALID_ARGUMENT', `keep ${rule} must be an integer from 0 to ${MAX_KEEP}, got ${JSON.stringify(v)?.slice(0, 40)}`);
    }
    policy[rule] = v;
  }
  for (const k of Object.keys(raw)) {
    if (!(RETENTION_RULES as readonly string[]).includes(k)) throw new IslandError('INVALID_ARGUMENT', `unknown retention rule ${JSON.stringify(k).slice(0, 40)} (rules: ${RETENTION_RULES.join(', ')})`);
  }
  if (!RETENTION_RULES.some((r) => (policy[r] ?? 0) >= 1)) {
    throw new IslandError('INVALID_ARGUMENT', 'a retention policy needs at least one of keep-last, keep-hourly, keep-daily, keep-weekly of 1 or more (without one, every snapshot would be deleted)');
  }
  return policy;
}

/** Newest first: by creation time, then by id. */
function newestFirst(a: RetentionInput, b: RetentionInput): number {
  if (a.created !== b.created) return b.created - a.created;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/** Decide for each snapshot whether the policy keeps it, and why; newest first. */
export function applyRetention(snapshots: readonly RetentionInput[], policy: RetentionPolicy): RetentionDecision[] {
  const p = parseRetentionPolicy(policy as Record<string, unknown>);
  const left: Record<RetentionRule, number> = { last: p.last ?? 0, hourly: p.hourly ?? 0, daily: p.daily ?? 0, weekly: p.weekly ?? 0 };
  const lastBucket: Partial<Record<RetentionRule, string>> = {};
  let rank = 0;
  return [...snapshots].sort(newestFirst).map((s) => {
    rank++;
    const reasons: KeepReason[] = [];
    for (const rule of RETENTION_RULES) {
      if (left[rule] <= 0) continue;
      const bucket = rule === 'last' ? String(rank) : bucketOf(rule, s.created);
      // Newest first: the first snapshot seen in a bucket is that bucket's newest.
      if (rule !== 'last' && lastBucket[rule] === bucket) continue;
      lastBucket[rule] = bucket;
      left[rule]--;
      reasons.push({ rule, bucket });
    }
    return { id: s.id, created: s.created, keep: reasons.length > 0, reasons };
  });
}

/** "last #1, hourly 2024-05-06T13, daily 2024-05-06" */
export function describeReasons(reasons: readonly KeepReason[]): string {
  return reasons.map((r) => (r.rule === 'last' ? `last #${r.bucket}` : `${r.rule} ${r.bucket}`)).join(', ');
}
