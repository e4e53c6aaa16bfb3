// The session-state classifier, table-driven: what each statement leaves in the session.
// test/fixtures/session-state-cases.json (shared with the kernel's classifier) adds more.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { classifySql, mayAffectSession } from '../src/session/sql-classifier';

const kinds = (sql: string): string => classifySql(sql).map((e) => {
  switch (e.kind) {
    case 'parameter': return `parameter:${e.names.join('+')}`;
    case 'listen': return `listen:${e.channel}`;
    case 'unlisten': return `unlisten:${e.channel ?? '*'}`;
    case 'prepare': return `prepare:${e.name}`;
    case 'deallocate': return `deallocate:${e.name ?? 'ALL'}`;
    case 'hold_cursor': return `hold_cursor:${e.name}`;
    case 'close_cursor': return `close_cursor:${e.name ?? 'ALL'}`;
    case 'advisory_lock': return `advisory_lock:${e.delta}`;
    default: return e.kind;
  }
}).join(' ');

const CASES: Array<[string, string]> = [
  ['SELECT 1', ''],
  ['UPDATE t SET a = 1 WHERE id = 2', ''],
  ["SELECT 'set search_path = x'", ''],
  ['SELECT settings, reset_val FROM t', ''],
  ['select temp_c from temperatures', ''],
  ['/* SET x = 1 */ SELECT 1', ''],
  ['-- LISTEN x\nSELECT 1', ''],
  ['SELECT $$ LISTEN x $$', ''],
  ['SELECT $tag$ SET x = 1; $tag$', ''],
  ['SET search_path = a, b', 'parameter:search_path'],
  ['set Search_Path TO a', 'parameter:search_path'],
  ['SET SESSION statement_timeout = 5', 'parameter:statement_timeout'],
  ['SET LOCAL statement_timeout = 5', ''],
  ['SET TRANSACTION ISOLATION LEVEL SERIALIZABLE', ''],
  ['SET TIME ZONE UTC', 'parameter:TimeZone'],
  ['SET ROLE other', 'parameter:role'],
  ['SET SESSION AUTHORIZATION other', 'parameter:session_authorization'],
  ['SET SCHEMA \'x\'', 'parameter:search_path'],
  ['SET plpgsql.extra_warnings = \'all\'', 'parameter:plpgsql.extra_warnings'],
  ['SET "Work_Mem" = 1', 'parameter:Work_Mem'],
  ['RESET work_mem', 'parameter:work_mem'],
  ['RESET ALL', 'reset_all'],
  ['DISCARD ALL', 'discard_all'],
  ['DISCARD TEMP', 'discard_temp'],
  ['DISCARD PLANS', ''],
  ["SELECT set_config('search_path', 'x', false)", 'parameter:search_path'],
  ["SELECT pg_catalog.set_config('a.b', 'x', true)", ''],
  ['SELECT set_config(name, v, false) FROM t', 'other'],
  ['LISTEN chan', 'listen:chan'],
  ['UNLISTEN chan', 'unlisten:chan'],
  ['UNLISTEN *', 'unlisten:*'],
  ['NOTIFY chan', ''],
  ['SELECT pg_advisory_lock(1)', 'advisory_lock:1'],
  ['SELECT pg_try_advisory_lock(1), pg_advisory_unlock(1)', 'advisory_lock:1 advisory_lock:-1'],
  ['SELECT pg_advisory_xact_lock(1)', ''],
  ['SELECT pg_advisory_unlock_all()', 'advisory_unlock_all'],
  ['CREATE TEMP TABLE x (a int)', 'temp_table'],
  ['CREATE GLOBAL TEMPORARY TABLE x (a int)', 'temp_table'],
  ['CREATE TABLE temp (a int)', ''],
  ['SELECT * INTO TEMP x FROM t', 'temp_table'],
  ['PREPARE p (int) AS SELECT $1', 'prepare:p'],
  ["PREPARE TRANSACTION 'x'", ''],
  ['DEALLOCATE p', 'deallocate:p'],
  ['DEALLOCATE PREPARE ALL', 'deallocate:ALL'],
  ['DECLARE c CURSOR WITH HOLD FOR SELECT 1', 'hold_cursor:c'],
  ['DECLARE c CURSOR FOR SELECT 1', ''],
  ['CLOSE c', 'close_cursor:c'],
  ['CLOSE ALL', 'close_cursor:ALL'],
  ['LOAD \'auto_explain\'', 'other'],
  ['BEGIN; SET search_path = x; COMMIT', 'parameter:search_path'],
  ["SELECT 'unterminated", 'other'],
  ["SELECT E'it\\'s; SET x = 1'", ''],
];

t.test('classifySql', async (t) => {
  for (const [sql, want] of CASES) t.equal(kinds(sql), want, JSON.stringify(sql));
});

// An unlock releases only a lock of its own key: the key is the mode and the literal arguments.
t.test('advisory lock keys', async (t) => {
  const keys = (sql: string): string => classifySql(sql).map((e) => (e.kind === 'advisory_lock' ? `${e.delta}/${e.key}` : e.kind)).join(' ');
  t.equal(keys('SELECT pg_advisory_lock(42)'), '1/x:42');
  t.equal(keys('SELECT pg_advisory_unlock( 1 , -2 )'), '-1/x:1,-2');
  t.equal(keys('SELECT pg_try_advisory_lock_shared(7), pg_advisory_unlock_shared(7)'), '1/s:7 -1/s:7');
  t.equal(keys('SELECT pg_advisory_lock($1)'), '1/x:?', 'a parameter: not a literal');
  t.equal(keys('SELECT pg_advisory_lock(id) FROM t'), '1/x:?', 'a column');
  t.equal(keys("SELECT pg_advisory_lock(hashtext('a'))"), '1/x:?', 'an expression');
  t.equal(keys('SELECT pg_advisory_lock(1 + 1)'), '1/x:?', 'arithmetic');
});

t.test('mayAffectSession never misses a statement with an effect', async (t) => {
  // (text the lexer cannot follow is a syntax error on the server anyway)
  for (const [sql, want] of CASES) if (want && !sql.includes("'unterminated")) t.ok(mayAffectSession(sql), JSON.stringify(sql));
});

const shared = path.join(__dirname, 'fixtures', 'session-state-cases.json');
t.test('the shared cases (kernel and user space agree on them)', { skip: fs.existsSync(shared) ? false : 'no shared fixture' }, async (t) => {
  const { cases } = JSON.parse(fs.readFileSync(shared, 'utf8')) as { cases: Array<{ sql: string; state: boolean }> };
  // Releasing advisory locks needs no user space: a client holding one is pinned there.
  const state = (sql: string) => classifySql(sql).some((e) => e.kind !== 'advisory_unlock_all' && !(e.kind === 'advisory_lock' && e.delta < 0));
  for (const c of cases) t.equal(state(c.sql), c.state, `${JSON.stringify(c.sql)} changes session state: ${c.state}`);
});
