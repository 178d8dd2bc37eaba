/**
 * QMP messages: the shapes island accepts and the one function that classifies a parsed
 * line into them. Everything QEMU (or whatever listens on the socket) sends is untrusted:
 * a line is only acted on after `classify` has checked every field island reads.
 *
 * Wire shapes (QEMU's QMP specification):
 *   greeting  {"QMP": {"version": {"qemu": {"major","minor","micro"}, "package"}, "capabilities": [...]}}
 *   success   {"return": <any>, "id": <id>}
 *   error     {"error": {"class": <string>, "desc": <string>}, "id": <id>}
 *   event     {"event": <string>, "data": {...}?, "timestamp": {"seconds", "microseconds"}}
 * The guest agent sends success and error replies only, usually without `id`.
 */
import { IslandError } from '../errors.js';

/** A command id as island sends it and as the peer echoes it. */
export type QmpId = number | string;

export interface QmpGreeting {
  version: { major: number; minor: number; micro: number; package: string };
  capabilities: string[];
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: QmpTimestamp;
}

/** What `SHUTDOWN` carries: who asked and why ("host-qmp-quit", "guest-shutdown", "host-signal"...). */
export interface QmpShutdown {
  guest: boolean;
  reason: string;
}

/** The VM run state from query-status. `running` is false when paused (after `stop`). */
export interface QmpStatus {
  running: boolean;
  status: string;
}

export type QmpMessage =
  | { kind: 'greeting'; greeting: QmpGreeting }
  | { kind: 'return'; id: QmpId | undefined; value: unknown }
  | { kind: 'error'; id: QmpId | undefined; errorClass: string; desc: string }
  | { kind: 'event'; event: QmpEvent }
  /** Valid JSON that is none of the above. `id` is set when one could be read, so a
   * pending command can fail on its malformed reply instead of waiting for its timeout. */
  | { kind: 'invalid'; id: QmpId | undefined; reason: string };

/** Longest text of a peer's message kept in an error or log line. */
export const EXCERPT_CHARS = 200;

export function excerpt(text: string): string {
  return text.length <= EXCERPT_CHARS ? text : `${text.slice(0, EXCERPT_CHARS)}... (${text.length} chars)`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function readId(v: unknown): QmpId | undefined {
  return (typeof v === 'number' && Number.isFinite(v)) || typeof v === 'string' ? v : undefined;
}

function parseGreeting(body: unknown): QmpGreeting | string {
  if (!isRecord(body)) return 'the QMP member is not an object';
  const version = body['version'];
  const qemu = isRecord(version) ? version['qemu'] : undefined;
  if (!isRecord(version) || !isRecord(qemu)) return 'the greeting has no version.qemu object';
  const { major, minor, micro } = qemu;
  if (!isCount(major) || !isCount(minor) || !isCount(micro)) return 'the greeting version numbers are not counts';
  const caps = body['capabilities'];
  if (!Array.isArray(caps) || !caps.every((c) => typeof c === 'string')) return 'the greeting capabilities are not a list of strings';
  const pkg = version['package'];
  return { version: { major, minor, micro, package: typeof pkg === 'string' ? pkg : '' }, capabilities: caps as string[] };
}

/** Classify one parsed JSON line. Never throws. */
export function classify(value: unknown): QmpMessage {
  if (!isRecord(value)) return { kind: 'invalid', id: undefined, reason: `a message must be a JSON object, got ${Array.isArray(value) ? 'an array' : typeof value}` };
  const rawId = value['id'];
  const id = readId(rawId);
  if (rawId !== undefined && id === undefined) return { kind: 'invalid', id: undefined, reason: 'the id is neither a number nor a string' };
  if (Object.hasOwn(value, 'return')) return { kind: 'return', id, value: value['return'] };
  if (Object.hasOwn(value, 'error')) {
    const err = value['error'];
    if (!isRecord(err) || typeof err['class'] !== 'string' || typeof err['desc'] !== 'string') {
      return { kind: 'invalid', id, reason: 'the error member lacks a string class and desc' };
    }
    return { kind: 'error', id, errorClass: err['class'], desc: err['desc'] };
  }
  if (Object.hasOwn(value, 'event')) {
    const name = value['event'];
    const data = Object.hasOwn(value, 'data') ? value['data'] : {};
    const ts = value['timestamp'];
    if (typeof name !== 'string' || name.length === 0) return { kind: 'invalid', id, reason: 'the event name is not a string' };
    if (!isRecord(data)) return { kind: 'invalid', id, reason: `event ${excerpt(name)}: data is not an object` };
    if (!isRecord(ts) || typeof ts['seconds'] !== 'number' || typeof ts['microseconds'] !== 'number') {
      return { kind: 'invalid', id, reason: `event ${excerpt(name)}: the timestamp is missing or malformed` };
    }
    return { kind: 'event', event: { event: name, data, timestamp: { seconds: ts['seconds'], microseconds: ts['microseconds'] } } };
  }
  if (Object.hasOwn(value, 'QMP')) {
    const g = parseGreeting(value['QMP']);
    return typeof g === 'string' ? { kind: 'invalid', id, reason: g } : { kind: 'greeting', greeting: g };
  }
  return { kind: 'invalid', id, reason: 'the object is not a greeting, reply or event' };
}

/** Parse and classify one line of text. Never throws. */
export function parseLine(text: string): QmpMessage {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: 'invalid', id: undefined, reason: 'not JSON' };
  }
  return classify(value);
}

/** The data of a SHUTDOWN event, or undefined when QEMU sent something else. */
export function shutdownInfo(ev: QmpEvent): QmpShutdown | undefined {
  if (ev.event !== 'SHUTDOWN') return undefined;
  const { guest, reason } = ev.data;
  return { guest: guest === true, reason: typeof reason === 'string' ? reason : 'unknown' };
}

/** The result of query-status, checked. */
export function parseStatus(value: unknown): QmpStatus | undefined {
  if (!isRecord(value) || typeof value['running'] !== 'boolean' || typeof value['status'] !== 'string') return undefined;
  return { running: value['running'], status: value['status'] };
}

/** An error reply from QEMU as island's error. */
export function replyError(command: string, errorClass: string, desc: string, details: Record<string, unknown> = {}, label = command): IslandError {
  return new IslandError('QMP_ERROR', `${label}: ${excerpt(desc)}`, {
    details: { ...details, command, class: errorClass, desc: excerpt(desc) },
  });
}
