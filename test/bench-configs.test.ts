// BenchBase YCSB configs: well-formed XML with the elements BenchBase's YCSB needs.
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { child, childrenNamed, parseXml } from '../bench/xml-lite';

const DIR = path.join(__dirname, '..', 'benchbase-configs');
const FILES = ['ycsb_pgsplice_transaction.xml', 'ycsb_pgsplice_session.xml', 'ycsb_direct.xml'];
const PROCEDURES = ['ReadRecord', 'InsertRecord', 'ScanRecord', 'UpdateRecord', 'DeleteRecord', 'ReadModifyWriteRecord'];
const ISOLATIONS = ['TRANSACTION_READ_UNCOMMITTED', 'TRANSACTION_READ_COMMITTED', 'TRANSACTION_REPEATABLE_READ', 'TRANSACTION_SERIALIZABLE'];

t.test('the XML reader rejects what is not well-formed', async (t) => {
  t.throws(() => parseXml('<a><b></a></b>'));
  t.throws(() => parseXml('<a>x &nbsp; y</a>'));
  t.throws(() => parseXml('<a x="1" x="2"/>'));
  t.throws(() => parseXml('<a></a><b></b>'));
  t.throws(() => parseXml('<a>'));
  t.throws(() => parseXml('<a><!-- run with --flag --></a>'), /inside a comment/);
  const r = parseXml('<?xml version="1.0"?>\n<!-- c --><a k="v&amp;w"><b>1 &lt; 2</b><c/></a>\n');
  t.equal(r.name, 'a');
  t.equal(r.attrs.k, 'v&w');
  t.equal(child(r, 'b')?.text, '1 < 2');
});

for (const f of FILES) {
  t.test(f, async (t) => {
    const root = parseXml(fs.readFileSync(path.join(DIR, f), 'utf8'));
    t.equal(root.name, 'parameters', 'root is <parameters>');
    const text = (n: string) => child(root, n)?.text.trim();
    t.equal(text('type'), 'POSTGRES');
    t.equal(text('driver'), 'org.postgresql.Driver');
    const url = text('url') ?? '';
    t.match(url, /^jdbc:postgresql:\/\/[^/:]+:\d+\/\w+/, 'JDBC URL with host, port and database');
    t.ok(text('username'), 'username');
    t.ok(child(root, 'password'), 'password');
    t.ok(ISOLATIONS.includes(text('isolation') ?? ''), 'a JDBC isolation level');
    t.match(text('batchsize') ?? '', /^\d+$/);
    t.match(text('scalefactor') ?? '', /^\d+(\.\d+)?$/);
    t.match(text('terminals') ?? '', /^\d+$/);
    const works = child(root, 'works');
    t.ok(works, '<works>');
    const ws = childrenNamed(works!, 'work');
    t.ok(ws.length > 0, 'at least one <work>');
    for (const w of ws) {
      t.match(child(w, 'time')?.text.trim() ?? '', /^\d+$/, 'work time');
      t.match(child(w, 'rate')?.text.trim() ?? '', /^(\d+|unlimited|disabled)$/, 'work rate');
      const weights = (child(w, 'weights')?.text ?? '').split(',').map((x) => Number(x.trim()));
      t.equal(weights.length, PROCEDURES.length, 'one weight per transaction type');
      t.ok(weights.every((x) => Number.isFinite(x) && x >= 0), 'weights are numbers');
      t.equal(weights.reduce((a, b) => a + b, 0), 100, 'weights add up to 100');
    }
    const tts = child(root, 'transactiontypes');
    t.ok(tts, '<transactiontypes>');
    t.same(childrenNamed(tts!, 'transactiontype').map((x) => child(x, 'name')?.text.trim()), PROCEDURES, 'the six YCSB procedures in order');
    if (f.includes('pgsplice')) t.notMatch(url, /:5432\//, 'points at the proxy, not PostgreSQL');
    if (f.includes('transaction')) t.match(url, /prepareThreshold=0/, 'no named server-side statements through a transaction pool');
  });
}

t.test('the pgsplice configs next to them name the ports the XML files use', async (t) => {
  for (const [yaml, xml] of [['pgsplice-transaction.yaml', 'ycsb_pgsplice_transaction.xml'], ['pgsplice-session.yaml', 'ycsb_pgsplice_session.xml']]) {
    const port = /port: (\d+) }/.exec(fs.readFileSync(path.join(DIR, yaml), 'utf8'))?.[1];
    const url = child(parseXml(fs.readFileSync(path.join(DIR, xml), 'utf8')), 'url')!.text;
    t.ok(port && url.includes(`:${port}/`), `${xml} uses the port of ${yaml}`);
  }
});
