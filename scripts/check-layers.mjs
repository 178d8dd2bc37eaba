#!/usr/bin/env node
// Checks that imports in src/ point down the layers, never up or sideways.
// Usage: node scripts/check-layers.mjs [srcDir]   (exit 1 and one line per violation)
//
// A module may import from its own layer folder and from any layer below it.
// Folders of the same rank are siblings and may not import each other.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, dirname, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Rank of each top-level entry of src/: lower is more basic. */
export const LAYERS = {
  'errors.ts': 0, // stable error codes: imports nothing of island's
  util: 1, // small helpers (sleep, seeded random): may throw island errors
  format: 2,
  store: 2,
  config: 3, // config.ts / config folder: reads settings, may use store config types
  'config.ts': 3,
  crypto: 3, // key files, the repository's encryption record and the refusal to mix keys
  repo: 4, // object keys, records on the store, protocols (commit, pins, tombstones, latest)
  workers: 4, // piscina tasks: format only (checked below)
  volume: 5,
  snapshot: 6,
  fsck: 7,
  fuse: 8,
  qmp: 8,
  libvirt: 8, // virsh: the libvirt domain of attach --domain
  daemon: 9,
  cli: 10,
};
/** Extra rules: a layer that may import only the listed layers (besides itself). */
const ONLY = { workers: ['errors.ts', 'util', 'format'], format: ['errors.ts', 'util'], store: ['errors.ts', 'util'] };
/** The native addon is loaded by exactly one module. */
const NATIVE_LOADER = 'volume/native.ts';

function layerOf(srcDir, file) {
  const top = relative(srcDir, file).split(sep)[0];
  return top;
}

function* walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* walk(p);
    else if (p.endsWith('.ts') || p.endsWith('.mts')) yield p;
  }
}

export function check(srcDir) {
  const problems = [];
  const importRe = /(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|(?:^|\n)\s*import\s+['"]([^'"]+)['"]/g;
  for (const file of walk(srcDir)) {
    const from = layerOf(srcDir, file);
    if (!(from in LAYERS)) {
      problems.push(`${relative(srcDir, file)}: top-level entry "${from}" has no layer in scripts/check-layers.mjs`);
      continue;
    }
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(importRe)) {
      const spec = m[1] ?? m[2] ?? m[3];
      if (!spec) continue;
      if (/native\/|\.node$|build\/Release/.test(spec) && relative(srcDir, file) !== NATIVE_LOADER) {
        problems.push(`${relative(srcDir, file)}: loads the native addon (${spec}); only src/${NATIVE_LOADER} may`);
      }
      if (!spec.startsWith('.')) continue;
      const target = resolve(dirname(file), spec);
      const rel = relative(srcDir, target);
      if (rel.startsWith('..')) {
        if (!/native/.test(spec)) problems.push(`${relative(srcDir, file)}: imports outside src/ (${spec})`);
        continue;
      }
      const to = rel.split(sep)[0].replace(/\.js$/, '.ts');
      if (to === from) continue;
      if (!(to in LAYERS)) {
        problems.push(`${relative(srcDir, file)}: imports unknown layer "${to}" (${spec})`);
        continue;
      }
      const only = ONLY[from];
      if (only && !only.includes(to)) problems.push(`${relative(srcDir, file)}: ${from}/ may import only ${only.join(', ')}; it imports ${to} (${spec})`);
      else if (LAYERS[to] >= LAYERS[from]) problems.push(`${relative(srcDir, file)}: ${from} (layer ${LAYERS[from]}) imports ${to} (layer ${LAYERS[to]}): imports must point down (${spec})`);
    }
  }
  return problems;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const srcDir = resolve(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'src'));
  const problems = check(srcDir);
  for (const p of problems) console.log(p);
  if (problems.length) process.exit(1);
  console.log('layers: ok');
}
