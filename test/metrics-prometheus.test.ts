// The Prometheus endpoint: scraped over HTTP through a real proxy and PostgreSQL, parsed
// with a small text-format parser, counters checked to move with the traffic the test
// makes; the kernel path's counters through ProxyControl.bypassCounters (in process).
import t from 'tap';
import { BYPASS_MODES } from './helpers/modes';
import { startProxy } from './helpers/proxy';
import { startCluster, proxyConfig, pgClient, freePort, waitUntil, run, libpqEnv } from './helpers/cluster';
import { parseConfig } from '../src/config/load';
import { Pooler } from '../src/pooling/pooler';
import { UserSpaceOnly } from '../src/pooling/kernel-host';
import { MetricsServer } from '../src/observe/prometheus';
import type { ProxyControl } from '../src/admin/console';
import { FALLBACK_NAMES } from '../src/kernel/kernel-abi';
import { readDoc, section, tableRows, backticked } from './helpers/docs';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Scrape {
  samples: Sample[];
  types: Map<string, string>;
  help: Map<string, string>;
}

// Prometheus text exposition format 0.0.4: # HELP, # TYPE, name{labels} value [timestamp].
function parseExposition(text: string): Scrape {
  const out: Scrape = { samples: [], types: new Map(), help: new Map() };
  const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$/;
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?/g;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# HELP ')) {
      const [name, ...rest] = line.slice(7).split(' ');
      out.help.set(name, rest.join(' '));
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const [name, type] = line.slice(7).split(' ');
      out.types.set(name, type);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = lineRe.exec(line);
    if (!m) throw new Error(`bad exposition line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    if (m[3]) {
      let consumed = 0;
      for (const lm of m[3].matchAll(labelRe)) {
        labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
        consumed += lm[0].length;
      }
      if (consumed !== m[3].length) throw new Error(`bad labels in: ${line}`);
    }
    // Go's ParseFloat, which Prometheus uses, takes NaN and Inf in any case (prom-client writes "Nan").
    const lower = m[4].toLowerCase();
    const v = /^\+?inf$/.test(lower) ? Infinity : lower === '-inf' ? -Infinity : lower === 'nan' ? NaN : Number(m[4]);
    if (Number.isNaN(v) && lower !== 'nan') throw new Error(`bad value in: ${line}`);
    out.samples.push({ name: m[1], labels, value: v });
  }
  return out;
}

function sum(s: Scrape, name: string, match: Record<string, string> = {}): number {
  return s.samples
    .filter((x) => x.name === name && Object.entries(match).every(([k, v]) => x.labels[k] === v))
    .reduce((n, x) => n + x.value, 0);
}

function has(s: Scrape, name: string): boolean {
  return s.samples.some((x) => x.name === name);
}

// docs/metrics.md's families by type (from the section a table is in, or its type column),
// and its kernel counters with when they are there ('always' or 'loaded'), the fallback
// reasons spelled out from the kernel's own list.
function documentedMetrics(): { families: Map<string, string>; kernel: Array<[string, string]> } {
  const md = readDoc('docs/metrics.md');
  const families = new Map<string, string>();
  for (const [title, type] of [['Pools (gauges)', 'gauge'], ['Traffic (counters)', 'counter'], ['Latency (histograms)', 'histogram'], ['Mirrors', '']]) {
    for (const row of tableRows(section(md, title))) for (const name of backticked(row[0]!)) families.set(name, type || row[1]!);
  }
  const kernel: Array<[string, string]> = [];
  for (const row of tableRows(section(md, 'Kernel path'))) {
    for (const name of backticked(row[0]!)) {
      if (!name.includes('<reason>')) kernel.push([name, row[1]!]);
      else for (const r of Object.values(FALLBACK_NAMES)) kernel.push([name.replace('<reason>', r), row[1]!]);
    }
  }
  return { families, kernel };
}

async function scrape(url: string): Promise<Scrape> {
  // One retry: a kept-alive connection may be closed by the server (keepAliveTimeout) just as fetch reuses it.
  const res = await fetch(url).catch(() => fetch(url));
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status}`);
  if (!/^text\/plain/.test(res.headers.get('content-type') ?? '')) throw new Error(`content-type ${res.headers.get('content-type')}`);
  return parseExposition(await res.text());
}

t.test('prometheus endpoint', async (t) => {
  const c = await startCluster(t);
  for (const bypass of BYPASS_MODES) {
    const B = `[bypass=${bypass}]`;
    // The kernel path counts per pool (sums), not per transaction or per ErrorResponse: the
    // histograms and pgsplice_errors_total see only what user space forwards (docs/metrics.md).
    const H_TODO = bypass === 'on' ? { todo: 'kernel path: no per-transaction observations (histograms count user-space transactions)' } : {};
    const E_TODO = bypass === 'on' ? { todo: 'kernel path: ErrorResponses it carries are not seen by user space' } : {};
    const mport = await freePort();
    const cfg = await proxyConfig(c, { bypass, metrics: { host: '127.0.0.1', port: mport }, default_pool_size: 4 });
    const proxy = await startProxy(t, cfg, { logLevel: 'info' });
    const url = `http://127.0.0.1:${mport}/metrics`;

    t.test(`families, types and process metrics ${B}`, async (t) => {
      const s = await scrape(url);
      for (const [name, type] of [
        ['pgsplice_info', 'gauge'],
        ['pgsplice_pool_clients', 'gauge'],
        ['pgsplice_pool_servers', 'gauge'],
        ['pgsplice_pool_max_wait_seconds', 'gauge'],
        ['pgsplice_pool_paused', 'gauge'],
        ['pgsplice_client_connections', 'gauge'],
        ['pgsplice_transactions_total', 'counter'],
        ['pgsplice_queries_total', 'counter'],
        ['pgsplice_client_received_bytes_total', 'counter'],
        ['pgsplice_client_sent_bytes_total', 'counter'],
        ['pgsplice_transaction_time_seconds_total', 'counter'],
        ['pgsplice_query_time_seconds_total', 'counter'],
        ['pgsplice_client_wait_time_seconds_total', 'counter'],
        ['pgsplice_client_logins_total', 'counter'],
        ['pgsplice_errors_total', 'counter'],
        ['pgsplice_client_wait_duration_seconds', 'histogram'],
        ['pgsplice_transaction_duration_seconds', 'histogram'],
        ['pgsplice_query_duration_seconds', 'histogram'],
        ['process_cpu_user_seconds_total', 'counter'],
        ['process_resident_memory_bytes', 'gauge'],
        ['nodejs_eventloop_lag_seconds', 'gauge'],
      ]) {
        t.equal(s.types.get(name), type, `${name} is a ${type}`);
        t.ok(s.help.get(name), `${name} has HELP`);
      }
      t.equal(s.samples.find((x) => x.name === 'pgsplice_info')?.value, 1);
      // docs/metrics.md: each family it lists has the documented type, no pgsplice_ family is
      // left out, and the kernel counters are the documented ones (bypass on: the kernel path loaded).
      const docs = documentedMetrics();
      for (const [name, type] of docs.families) t.equal(s.types.get(name), type, `documented ${name}: a ${type}`);
      for (const name of s.types.keys()) {
        if (name.startsWith('pgsplice_') && !name.startsWith('pgsplice_kernel_')) t.ok(docs.families.has(name), `${name} is documented`);
      }
      const kernel = [...s.types.keys()].filter((n) => n.startsWith('pgsplice_kernel_')).sort();
      t.same(kernel, docs.kernel.filter(([, when]) => when === 'always' || bypass === 'on').map(([n]) => n).sort(), 'the documented kernel counters');
      const other = await fetch(`http://127.0.0.1:${mport}/nothing`);
      t.equal(other.status, 404);
    });

    t.test(`counters move with traffic; pool gauges follow state ${B}`, async (t) => {
      const before = await scrape(url);
      const cl = await pgClient(t, proxy);
      for (let i = 0; i < 10; i++) await cl.query('SELECT pg_sleep(0.002)');
      await cl.query('SELECT 1/0').catch(() => undefined);
      await cl.query('BEGIN');
      await cl.query('SELECT 1');
      const mid = await scrape(url);
      const L = { database: 'app', user: 'app' };
      t.ok(sum(mid, 'pgsplice_pool_clients', { ...L, state: 'active' }) >= 1, 'a client counted active');
      t.ok(sum(mid, 'pgsplice_pool_servers', { ...L, state: 'active' }) >= 1, 'a server counted active during the transaction');
      t.ok(sum(mid, 'pgsplice_client_connections') >= 1);
      await cl.query('COMMIT');
      await cl.end();

      const after = await waitUntil(async () => {
        const s = await scrape(url);
        return sum(s, 'pgsplice_pool_clients', L) === 0 ? s : null;
      }, 5000, 'client gone from the pool gauges');
      const d = (name: string, labels: Record<string, string> = L) => sum(after, name, labels) - sum(before, name, labels);
      // 10 sleeps, the failed 1/0 and BEGIN, SELECT, COMMIT: 14 queries, 12 transactions, each
      // counted once by the path that carried it (the kernel's per-pool counters are read at scrape).
      t.equal(d('pgsplice_queries_total'), 14, 'queries');
      t.equal(d('pgsplice_transactions_total'), 12, 'transactions');
      t.ok(d('pgsplice_client_received_bytes_total') > 100, 'bytes received');
      t.ok(d('pgsplice_client_sent_bytes_total') > 100, 'bytes sent');
      t.ok(d('pgsplice_query_time_seconds_total') >= 0.02, `query time +${d('pgsplice_query_time_seconds_total')}s`);
      t.ok(d('pgsplice_transaction_time_seconds_total') > 0, 'transaction time');
      if (bypass === 'on') {
        const kx = d('pgsplice_kernel_transactions_total', {});
        t.ok(kx > 0, `the kernel carried ${kx} of them, and they are in the pool's counters`);
      }
      t.ok(d('pgsplice_client_logins_total', { database: 'app' }) >= 1, 'a login');
      t.ok(d('pgsplice_errors_total', { source: 'server', sqlstate: '22012' }) >= 1, 'division_by_zero counted by SQLSTATE', E_TODO);
      const H = { database: 'app' };
      t.ok(d('pgsplice_query_duration_seconds_count', H) >= 14, 'query histogram observed', H_TODO);
      t.ok(d('pgsplice_transaction_duration_seconds_count', H) >= 12, 'transaction histogram observed', H_TODO);
      // With bypass on, the requests here find an idle server in the kernel: none waits.
      t.ok(d('pgsplice_client_wait_duration_seconds_count', H) >= 1, 'wait histogram observed', bypass === 'on' ? { todo: 'kernel path: no request waited' } : {});
      const inf = after.samples.find((x) => x.name === 'pgsplice_query_duration_seconds_bucket' && x.labels.le === '+Inf' && x.labels.database === 'app');
      t.equal(inf?.value ?? 0, sum(after, 'pgsplice_query_duration_seconds_count', H), '+Inf bucket equals count');
      // Counters never go down, also after the client closed (its counts are kept).
      for (const x of before.samples.filter((x) => before.types.get(x.name) === 'counter' && x.name.startsWith('pgsplice_') && !x.name.startsWith('pgsplice_process'))) {
        const now = sum(after, x.name, x.labels);
        if (now < x.value) t.fail(`${x.name}${JSON.stringify(x.labels)} went down: ${x.value} -> ${now}`);
      }
    });

    t.test(`PAUSE shows in pgsplice_pool_paused ${B}`, async (t) => {
      const r = await run('psql', ['-X', '-At', '-c', 'PAUSE app'], { env: libpqEnv(proxy, 'pgsplice', 'app', c.password) });
      t.not(r.code, 0, 'app is no admin');
      t.ok(has(await scrape(url), 'pgsplice_pool_paused'));
      t.equal(sum(await scrape(url), 'pgsplice_pool_paused', { database: 'app', user: 'app' }), 0);
    });
  }

  t.test('kernel path counters come from bypassCounters()', async (t) => {
    const config = parseConfig('databases:\n  app: {}\n', 'inline.yaml');
    const pooler = new Pooler(config, new UserSpaceOnly({ mode: 'off', loaded: false, reason: 'bypass: off' }), () => {});
    t.teardown(() => pooler.close());
    let xacts = 5n;
    const control = {
      bypassCounters: () => ({ transactions: xacts, bytes_client_to_server: 1234, 'fallback.no-bpf': 2 }),
    } as unknown as ProxyControl;
    const m = new MetricsServer(pooler, control);
    t.teardown(() => m.close());
    let s = parseExposition(await m.text());
    t.equal(s.types.get('pgsplice_kernel_transactions_total'), 'counter');
    t.equal(sum(s, 'pgsplice_kernel_transactions_total'), 5);
    t.equal(sum(s, 'pgsplice_kernel_bytes_client_to_server_total'), 1234);
    t.equal(sum(s, 'pgsplice_kernel_fallback_no_bpf_total'), 2, 'names are sanitized');
    xacts = 9n;
    s = parseExposition(await m.text());
    t.equal(sum(s, 'pgsplice_kernel_transactions_total'), 9, 'follows the kernel counter');
  });

  t.test('docs/metrics.md lists every fallback reason of the kernel, and only those', async (t) => {
    const para = section(readDoc('docs/metrics.md'), 'Kernel path').split('The fallback reasons:')[1]!.split('What each reason means')[0]!;
    const named = backticked(para).filter((w) => /^[a-z_]+$/.test(w));
    t.same([...named].sort(), Object.values(FALLBACK_NAMES).sort());
  });

  t.test('metrics are off unless configured', async (t) => {
    const cfg = await proxyConfig(c, { bypass: 'off' });
    const proxy = await startProxy(t, cfg, { logLevel: 'info' });
    t.notMatch(proxy.logs(), /metrics on/);
  });
});
