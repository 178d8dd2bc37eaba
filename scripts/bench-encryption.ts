/**
 * The cost of encryption per 64 KiB cluster on this machine, in one run: frame encoding
 * (hash, compress, seal) and decoding (open, decompress, verify the id), encrypted against
 * unencrypted, on one thread.
 *
 *   npx tsx scripts/bench-encryption.ts [--mib N] [--rounds R]
 *
 * Corpora (N MiB each): binary (the node executable), random (incompressible), halfzero
 * (first half of each block zero). MB/s of plain bytes, best of R interleaved passes so
 * background load hits both paths alike.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { RepositoryKeys } from '../src/crypto/keys.js';
import { decodeBlob, encodeBlob } from '../src/format/blob.js';
import { decodeEncryptedBlob, encodeEncryptedBlob } from '../src/format/encrypted-frame.js';

const BLOCK = 64 * 1024;
function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : dflt;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} needs a positive number`);
  return v;
}
const MIB = arg('--mib', 16);
const ROUNDS = arg('--rounds', 10);
const N = (MIB * 1024 * 1024) / BLOCK;

function binaryBlocks(): Buffer[] {
  const size = statSync(process.execPath).size;
  const fd = openSync(process.execPath, 'r');
  const out: Buffer[] = [];
  for (let i = 0; i < N; i++) {
    const b = Buffer.alloc(BLOCK);
    readSync(fd, b, 0, BLOCK, Math.floor(((size - BLOCK) * i) / N));
    out.push(b);
  }
  closeSync(fd);
  return out;
}

const corpora: Record<string, Buffer[]> = {
  binary: binaryBlocks(),
  random: Array.from({ length: N }, () => randomBytes(BLOCK)),
  halfzero: binaryBlocks().map((b) => Buffer.concat([Buffer.alloc(BLOCK / 2), b.subarray(0, BLOCK / 2)])),
};
const keys = RepositoryKeys.generate();

function rate(bytes: number, ms: number): number {
  return Math.round(bytes / 1e6 / (ms / 1000));
}

console.log(`${MIB} MiB per corpus, 64 KiB blocks, best of ${ROUNDS}; MB/s of plain bytes (node ${process.version})`);
console.log('corpus    | encode plain | encode encrypted | cost | decode plain | decode encrypted | cost | tag-only read | cost');
for (const [name, blocks] of Object.entries(corpora)) {
  const best = { ep: Infinity, ee: Infinity, dp: Infinity, de: Infinity, dn: Infinity };
  for (let r = 0; r < ROUNDS; r++) {
    let t0 = performance.now();
    const plainFrames = blocks.map((b) => encodeBlob(b, 'data'));
    best.ep = Math.min(best.ep, performance.now() - t0);
    t0 = performance.now();
    const pk = keys.newPackKey('data');
    let off = 0;
    const encFrames = blocks.map((b, i) => {
      const e = encodeEncryptedBlob(b, pk, keys.idKey, i, off);
      const at = off;
      off += e.frame.length;
      return { e, at };
    });
    best.ee = Math.min(best.ee, performance.now() - t0);
    t0 = performance.now();
    for (const f of plainFrames) decodeBlob(f.frame, f.id);
    best.dp = Math.min(best.dp, performance.now() - t0);
    t0 = performance.now();
    for (const { e, at } of encFrames) decodeEncryptedBlob(e.frame, keys, e.id, { frameOffset: at });
    best.de = Math.min(best.de, performance.now() - t0);
    t0 = performance.now();
    for (const { e, at } of encFrames) decodeEncryptedBlob(e.frame, keys, e.id, { frameOffset: at, verifyId: false });
    best.dn = Math.min(best.dn, performance.now() - t0);
  }
  const bytes = blocks.length * BLOCK;
  const cost = (a: number, b: number): string => `${Math.round((1 - a / b) * 100)}%`;
  const [ep, ee, dp, de, dn] = [rate(bytes, best.ep), rate(bytes, best.ee), rate(bytes, best.dp), rate(bytes, best.de), rate(bytes, best.dn)];
  console.log(`${name.padEnd(9)} | ${String(ep).padStart(12)} | ${String(ee).padStart(16)} | ${cost(ee, ep).padStart(4)} | ${String(dp).padStart(12)} | ${String(de).padStart(16)} | ${cost(de, dp).padStart(4)} | ${String(dn).padStart(13)} | ${cost(dn, dp).padStart(4)}`);
}
