/**
 * Measure the block codecs island could use for 64 KiB clusters, on this machine.
 *
 *   npx tsx scripts/bench-codecs.ts [--mib N] [--rounds R]
 *
 * Corpora (N MiB each, cut into 64 KiB blocks):
 *   text      source-like: .js / .d.ts files from node_modules, concatenated
 *   binary    an ELF executable (the running node binary), blocks spread over the file
 *   random    incompressible bytes
 *   halfzero  blocks whose first half is zero and second half is binary content
 *             (a partly written cluster)
 *
 * For each codec: compress MB/s and decompress MB/s (of plain bytes, one thread, a fresh
 * output buffer per block as the real code path allocates one; the fastest of R
 * interleaved passes), the ratio plain/compressed, and the share of blocks that would be stored plain
 * because compression saves less than 1/16. The numbers feed the codec choice in docs/formats/packs.md.
 */
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';

const require = createRequire(import.meta.url);
const lz4 = require('lz4-napi') as {
  compressSync(data: Buffer): Buffer;
  uncompressSync(data: Uint8Array): Buffer;
};
const zstd = require('zstd-napi/binding') as {
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  compressBound(size: number): number;
};

const BLOCK = 64 * 1024;

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : dflt;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} needs a positive number`);
  return v;
}
const CORPUS_MIB = arg('--mib', 16);
const ROUNDS = arg('--rounds', 30);
const CORPUS_BYTES = CORPUS_MIB * 1024 * 1024;

// ---- corpora ---------------------------------------------------------------------------

function textCorpus(): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  const stack = [join(process.cwd(), 'node_modules')];
  while (stack.length > 0 && total < CORPUS_BYTES) {
    const dir = stack.pop()!;
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      continue;
    }
    for (const name of names) {
      if (total >= CORPUS_BYTES) break;
      const p = join(dir, name);
      let st;
      try {
        st = statSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) stack.push(p);
      else if (st.isFile() && (name.endsWith('.js') || name.endsWith('.d.ts')) && st.size < 4 * 1024 * 1024) {
        const b = readFileSync(p);
        parts.push(b);
        total += b.length;
      }
    }
  }
  return Buffer.concat(parts).subarray(0, CORPUS_BYTES);
}

function binaryCorpus(): Buffer {
  const path = process.execPath;
  const size = statSync(path).size;
  const blocks = CORPUS_BYTES / BLOCK;
  const out = Buffer.alloc(CORPUS_BYTES);
  const fd = openSync(path, 'r');
  try {
    const stride = Math.max(BLOCK, Math.floor((size - BLOCK) / blocks / BLOCK) * BLOCK);
    for (let i = 0; i < blocks; i++) {
      const at = Math.min(i * stride, size - BLOCK);
      readSync(fd, out, i * BLOCK, BLOCK, at);
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

function halfZeroCorpus(binary: Buffer): Buffer {
  const out = Buffer.from(binary);
  for (let off = 0; off < out.length; off += BLOCK) out.fill(0, off, off + BLOCK / 2);
  return out;
}

function blocksOf(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off + BLOCK <= b.length; off += BLOCK) out.push(b.subarray(off, off + BLOCK));
  return out;
}

// ---- codecs ----------------------------------------------------------------------------

interface Codec {
  name: string;
  compress(plain: Buffer): Buffer;
  decompress(data: Buffer, plainLength: number): Buffer;
}

const cctx = new zstd.CCtx();
const dctx = new zstd.DCtx();
const zstdScratch = Buffer.alloc(zstd.compressBound(BLOCK));

function zstdCodec(level: number): Codec {
  return {
    name: `zstd-${level}`,
    compress(plain) {
      const n = cctx.compress(zstdScratch, plain, level);
      return Buffer.from(zstdScratch.subarray(0, n));
    },
    decompress(data, plainLength) {
      const out = Buffer.allocUnsafe(plainLength);
      const n = dctx.decompress(out, data);
      if (n !== plainLength) throw new Error('zstd length mismatch');
      return out;
    },
  };
}

const CODECS: Codec[] = [
  {
    name: 'lz4',
    compress: (plain) => lz4.compressSync(plain),
    decompress: (data) => lz4.uncompressSync(data),
  },
  zstdCodec(1),
  zstdCodec(3),
];

// ---- measurement -----------------------------------------------------------------------

interface Row {
  corpus: string;
  codec: string;
  compMBs: number;
  decompMBs: number;
  ratio: number;
  /** Share of blocks that would be stored plain (saving < 1/16). */
  plainShare: number;
}

interface Cell {
  row: Row;
  blocks: Buffer[];
  compressed: Buffer[];
  codec: Codec;
  bestComp: number;
  bestDecomp: number;
}

function prepare(corpus: string, blocks: Buffer[], codec: Codec): Cell {
  const compressed = blocks.map((b) => codec.compress(b));
  for (let i = 0; i < blocks.length; i++) {
    if (!codec.decompress(compressed[i]!, BLOCK).equals(blocks[i]!)) throw new Error(`${codec.name} round trip failed on ${corpus}`);
  }
  const stored = compressed.reduce((s, c) => s + c.length, 0);
  const plainCount = compressed.filter((c) => c.length > BLOCK - BLOCK / 16).length;
  return {
    row: { corpus, codec: codec.name, compMBs: 0, decompMBs: 0, ratio: (blocks.length * BLOCK) / stored, plainShare: plainCount / blocks.length },
    blocks,
    compressed,
    codec,
    bestComp: Infinity,
    bestDecomp: Infinity,
  };
}

function seconds(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * Rounds of one compress pass and one decompress pass per cell, cells interleaved, the
 * fastest pass of each cell kept: other work on a shared machine slows some passes, and
 * interleaving spreads that over every codec instead of the one measured at the time.
 */
function measure(cells: Cell[]): void {
  for (let round = 0; round < ROUNDS; round++) {
    for (const c of cells) {
      c.bestComp = Math.min(c.bestComp, seconds(() => c.blocks.forEach((b) => c.codec.compress(b))));
      c.bestDecomp = Math.min(c.bestDecomp, seconds(() => c.compressed.forEach((d) => c.codec.decompress(d, BLOCK))));
    }
  }
  for (const c of cells) {
    const bytes = c.blocks.length * BLOCK;
    c.row.compMBs = bytes / c.bestComp / 1e6;
    c.row.decompMBs = bytes / c.bestDecomp / 1e6;
  }
}

function main(): void {
  const binary = binaryCorpus();
  const corpora: [string, Buffer][] = [
    ['text', textCorpus()],
    ['binary', binary],
    ['random', randomBytes(CORPUS_BYTES)],
    ['halfzero', halfZeroCorpus(binary)],
  ];
  console.log(`node ${process.version}, ${process.arch}, block ${BLOCK} B, ${CORPUS_MIB} MiB per corpus, best of ${ROUNDS} interleaved passes, one thread`);
  const cells: Cell[] = [];
  for (const [name, bytes] of corpora) {
    const blocks = blocksOf(bytes);
    for (const codec of CODECS) cells.push(prepare(name, blocks, codec));
  }
  measure(cells);
  const rows = cells.map((c) => c.row);
  const header = ['corpus', 'codec', 'compress MB/s', 'decompress MB/s', 'ratio', 'stored plain'];
  const lines = rows.map((r) => [
    r.corpus,
    r.codec,
    r.compMBs.toFixed(0),
    r.decompMBs.toFixed(0),
    r.ratio.toFixed(2),
    `${(r.plainShare * 100).toFixed(0)}%`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]): string => `| ${cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  console.log(fmt(header));
  console.log(`| ${widths.map((w, i) => (i < 2 ? '-'.repeat(w) : `${'-'.repeat(w - 1)}:`)).join(' | ')} |`);
  for (const l of lines) console.log(fmt(l));

  // The comparison the codec choice rests on (docs/formats/packs.md): compressible corpora only.
  console.log('\nlz4 against zstd on compressible corpora (decompression first, ratio second):');
  for (const corpus of ['text', 'binary', 'halfzero']) {
    const lz = rows.find((r) => r.corpus === corpus && r.codec === 'lz4')!;
    for (const z of rows.filter((r) => r.corpus === corpus && r.codec.startsWith('zstd'))) {
      const fewer = (1 - lz.ratio / z.ratio) * 100;
      console.log(`  ${corpus.padEnd(8)} ${z.codec}: lz4 decompresses ${(lz.decompMBs / z.decompMBs).toFixed(1)}x as fast; ${z.codec} stores ${fewer.toFixed(0)}% fewer bytes`);
    }
  }
}

main();
