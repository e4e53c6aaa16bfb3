// The YCSB usertable and the pgbench scripts that play YCSB's core workloads.
// Shared by the benchmark (bench/run.ts) and the demo (scripts/demo.ts).
//
// Keys follow a Zipfian distribution like YCSB's request distribution. pgbench 15
// accepts a Zipfian parameter only in [1.001, 1000]; YCSB's default constant is
// 0.99, so 1.001 is the closest pgbench allows. As in YCSB's "scrambled zipfian",
// the drawn rank is scattered over the key space with permute(), so the hot keys
// are not neighbours on the same index pages.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ScratchPostgres } from './scratch-postgres';

export const ZIPF_THETA = 1.001;
export const FIELD_COUNT = 10;
export const FIELD_LENGTH = 100;
export const FIELDS = Array.from({ length: FIELD_COUNT }, (_, i) => `field${i}`);

export function createTableSql(): string {
  return `CREATE TABLE usertable (ycsb_key int PRIMARY KEY, ${FIELDS.map((f) => `${f} text`).join(', ')})`;
}

// Fills rows 1..rows with 100-character fields. One statement; ~3 s per 100k rows.
export function loadTableSql(rows: number): string {
  const values = FIELDS.map((f, i) => `lpad(md5(i::text || '${i}'), ${FIELD_LENGTH}, 'x')`).join(', ');
  return `INSERT INTO usertable SELECT i, ${values} FROM generate_series(1, ${Math.floor(rows)}) AS i`;
}

// The SQL sequence that (re)creates and loads the table, for any SQL executor.
export function setupStatements(rows: number): string[] {
  return ['DROP TABLE IF EXISTS usertable', createTableSql(), loadTableSql(rows), 'VACUUM ANALYZE usertable'];
}

// A scratch cluster's bench database: user, password and database `bench`, owning a
// loaded usertable of `rows` rows. Returns how to reach it.
export function loadBenchDatabase(pg: ScratchPostgres, rows: number): { host: string; port: number; user: string; password: string; db: string } {
  pg.createUserAndDb('bench', 'bench', 'bench');
  for (const st of setupStatements(rows)) pg.psql(st, 'bench');
  pg.psql('ALTER TABLE usertable OWNER TO bench', 'bench');
  return { host: '127.0.0.1', port: pg.port, user: 'bench', password: 'bench', db: 'bench' };
}

const KEY = `\\set k 1 + permute(random_zipfian(0, :rows - 1, ${ZIPF_THETA}), :rows, 5432)`;
const VALUE = `\\set v random(1, 1000000000)`;

// One pgbench script = one YCSB operation = one transaction.
export const SCRIPTS: Record<string, string> = {
  read: [KEY, 'SELECT * FROM usertable WHERE ycsb_key = :k;'].join('\n'),
  update: [KEY, VALUE, `UPDATE usertable SET field0 = lpad(:v::text, ${FIELD_LENGTH}, 'x') WHERE ycsb_key = :k;`].join('\n'),
  scan: [KEY, '\\set n random(1, 100)', 'SELECT * FROM usertable WHERE ycsb_key >= :k ORDER BY ycsb_key LIMIT :n;'].join('\n'),
  insert: [
    '\\set k :rows + random(1, 1000000000)',
    VALUE,
    `INSERT INTO usertable VALUES (:k, ${FIELDS.map(() => `lpad(:v::text, ${FIELD_LENGTH}, 'y')`).join(', ')}) ON CONFLICT DO NOTHING;`,
  ].join('\n'),
  // A multi-statement read-modify-write transaction (YCSB's ReadModifyWrite as one transaction).
  rmw: [
    KEY,
    VALUE,
    'BEGIN;',
    'SELECT * FROM usertable WHERE ycsb_key = :k;',
    `UPDATE usertable SET field1 = lpad(:v::text, ${FIELD_LENGTH}, 'z') WHERE ycsb_key = :k;`,
    'COMMIT;',
  ].join('\n'),
};

export interface Workload {
  name: string;
  description: string;
  mix: Array<{ script: keyof typeof SCRIPTS; weight: number }>;
}

export const WORKLOADS: Record<string, Workload> = {
  a: { name: 'a', description: 'YCSB A: 50% read, 50% update', mix: [{ script: 'read', weight: 50 }, { script: 'update', weight: 50 }] },
  b: { name: 'b', description: 'YCSB B: 95% read, 5% update', mix: [{ script: 'read', weight: 95 }, { script: 'update', weight: 5 }] },
  c: { name: 'c', description: 'YCSB C: 100% read', mix: [{ script: 'read', weight: 100 }] },
  e: { name: 'e', description: 'YCSB E: 95% short scan, 5% insert', mix: [{ script: 'scan', weight: 95 }, { script: 'insert', weight: 5 }] },
  rmw: { name: 'rmw', description: 'read-modify-write: BEGIN; SELECT; UPDATE; COMMIT', mix: [{ script: 'rmw', weight: 100 }] },
};

// Writes the workload's scripts into dir; returns pgbench's -f arguments.
export function pgbenchScriptArgs(dir: string, workload: string): string[] {
  const w = WORKLOADS[workload];
  if (!w) throw new Error(`unknown workload '${workload}' (known: ${Object.keys(WORKLOADS).join(', ')})`);
  fs.mkdirSync(dir, { recursive: true });
  const args: string[] = [];
  for (const { script, weight } of w.mix) {
    const file = path.join(dir, `ycsb-${script}.sql`);
    fs.writeFileSync(file, SCRIPTS[script] + '\n');
    args.push('-f', `${file}@${weight}`);
  }
  return args;
}
