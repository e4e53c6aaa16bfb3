#!/usr/bin/env node
// Generates src/kernel/kernel-abi.generated.ts from the BTF of the BPF object: struct sizes,
// field offsets and widths, enum values (flags and limits are enums in ebpf/pgsplice.h so
// BTF carries them) and the key/value types of the maps. src/kernel/kernel-abi.ts reads the
// kernel's structs only through these numbers, so the layout has one source: the C header.
//
//   node scripts/gen-kernel-abi.mjs [object] [output]
//
// Run by ebpf/Makefile after every build of the object. The output is committed so that
// `tsc` works on machines without clang or bpftool (bypass: off); test/kernel-abi.test.ts
// regenerates it from the built object and fails when the two differ.
// Plain JavaScript (no build step): the Makefile runs it before TypeScript is compiled.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const objPath = process.argv[2] ?? join(root, 'ebpf/pgsplice.bpf.o');
const outPath = process.argv[3] ?? join(root, 'src/kernel/kernel-abi.generated.ts');

/** The struct whose members name every type user space reads (ebpf/pgsplice.h). */
const ANCHOR = 'pgs_abi';
/** Kernel enums user space needs besides our own (from the anchor function's signature). */
const KERNEL_ENUMS = { bpf_map_type: ['BPF_MAP_TYPE_STACK'] };

export function generate(obj) {
  const btf = JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', obj], { maxBuffer: 64 << 20 }).toString());
  const byId = new Map(btf.types.map((t) => [t.id, t]));
  const strip = (id) => {
    let t = byId.get(id);
    while (t && (t.kind === 'TYPEDEF' || t.kind === 'CONST' || t.kind === 'VOLATILE')) t = byId.get(t.type_id);
    return t;
  };
  const sizeOf = (t) => {
    if (t.kind === 'ARRAY') return t.nr_elems * sizeOf(strip(t.type_id));
    return t.size;
  };
  const kindOf = (t) => {
    if (t.kind === 'INT') return t.encoding === 'SIGNED' ? 's' : 'u';
    if (t.kind === 'ENUM') return 'u';
    if (t.kind === 'ARRAY') return 'array';
    if (t.kind === 'STRUCT') return 'struct';
    throw new Error(`unexpected member kind ${t.kind}`);
  };

  const anchor = btf.types.find((t) => t.kind === 'STRUCT' && t.name === ANCHOR);
  if (!anchor) throw new Error(`${obj}: no struct ${ANCHOR} in BTF (is pgs_abi_anchor still in pgsplice.bpf.c?)`);

  const enums = {};
  const structs = {};
  const addStruct = (t) => {
    if (structs[t.name]) return;
    const fields = {};
    for (const m of t.members) {
      if (m.bits_offset % 8) throw new Error(`${t.name}.${m.name}: bit fields are not supported`);
      const mt = strip(m.type_id);
      const field = { offset: m.bits_offset / 8, size: sizeOf(mt), kind: kindOf(mt) };
      if (mt.kind === 'STRUCT') {
        field.type = mt.name;
        addStruct(mt);
      }
      fields[m.name] = field;
    }
    structs[t.name] = { size: t.size, fields };
  };
  const addEnum = (t, only) => {
    const values = {};
    for (const v of t.values) if (!only || only.includes(v.name)) values[v.name] = v.val;
    enums[t.name] = values;
  };
  for (const m of anchor.members) {
    const t = strip(m.type_id);
    if (t.kind === 'ENUM') addEnum(t);
    else if (t.kind === 'STRUCT') addStruct(t);
    else throw new Error(`${ANCHOR}.${m.name}: expected an enum or a struct`);
  }
  for (const [name, only] of Object.entries(KERNEL_ENUMS)) {
    const t = btf.types.find((x) => x.kind === 'ENUM' && x.name === name);
    if (!t) throw new Error(`${obj}: no enum ${name} in BTF`);
    addEnum(t, only);
  }

  // Maps: libbpf's BTF map definitions are anonymous structs of pointers (`__uint(x, n)` is
  // a pointer to an array of n elements, `__type(key, T)` a pointer to T).
  const maps = {};
  const sec = btf.types.find((t) => t.kind === 'DATASEC' && t.name === '.maps');
  for (const v of sec ? sec.vars : []) {
    const variable = byId.get(v.type_id);
    const def = strip(variable.type_id);
    const map = {};
    for (const m of def.members) {
      const target = strip(strip(m.type_id).type_id);
      if (m.name === 'type' || m.name === 'max_entries') map[m.name === 'type' ? 'type' : 'maxEntries'] = target.nr_elems;
      else if (m.name === 'key' || m.name === 'value') {
        map[m.name] = target.kind === 'STRUCT' ? target.name : `${target.kind === 'INT' && target.encoding === 'SIGNED' ? 's' : 'u'}${target.size * 8}`;
        map[`${m.name}Size`] = sizeOf(target);
      }
    }
    maps[variable.name] = map;
  }
  // One line per struct, enum member or map: the generated file diffs like the header it
  // comes from, without a column of same-shaped field lines per struct.
  const flat = (v) => (v === null || typeof v !== 'object' ? JSON.stringify(v) : `{ ${Object.entries(v).map(([k, x]) => `${k}: ${flat(x)}`).join(', ')} }`);
  const format = (v, indent = '') => {
    if (v === null || typeof v !== 'object') return JSON.stringify(v);
    const entries = Object.entries(v);
    if (typeof v.size === 'number' && v.fields) return flat(v); // a struct
    if (entries.every(([, x]) => x === null || typeof x !== 'object')) {
      const line = flat(v);
      if (line.length <= 100) return line;
    }
    const inner = indent + '  ';
    return `{\n${entries.map(([k, x]) => `${inner}${k}: ${format(x, inner)},`).join('\n')}\n${indent}}`;
  };
  const sorted = (o) => Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]]));

  const rel = relative(root, obj).startsWith('..') ? obj.split('/').pop() : relative(root, obj);
  return [
    `// Generated by scripts/gen-kernel-abi.mjs from the BTF of ${rel}: do not edit.`,
    '// Change ebpf/pgsplice.h and rebuild (make -C ebpf); test/kernel-abi.test.ts checks it.',
    '',
    '/** Enum values by C name (flags and limits are enums so BTF carries them). */',
    `export const ENUMS = ${format(enums)} as const;`,
    '',
    '/** Struct sizes and, per field, its byte offset, byte size and kind (u/s integer, struct, array). */',
    `export const STRUCTS = ${format(structs)} as const;`,
    '',
    '/** The BPF maps: map type, max entries, key and value types (C struct name, or u32/u64...). */',
    `export const MAPS = ${format(sorted(maps))} as const;`,
    '',
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = generate(objPath);
  // Write only on change: an unchanged mtime keeps make and tsc incremental.
  if (!existsSync(outPath) || readFileSync(outPath, 'utf8') !== text) {
    writeFileSync(outPath, text);
    console.log(`gen-kernel-abi: wrote ${relative(process.cwd(), outPath)}`);
  }
}
