// A minimal DevTools-protocol client for a proxy started with --inspect on a loopback
// port: the idle-clients run uses it to collect garbage in the proxy before reading its
// memory, so a reading counts what the clients keep alive, not garbage not yet collected.
import * as fs from 'node:fs';
// eslint-disable-next-line @typescript-eslint/no-var-requires
const WebSocket = require('ws'); // no type package installed: the few calls below are typed by hand
type WebSocket = { on(ev: string, f: (...a: any[]) => void): void; once(ev: string, f: (...a: any[]) => void): void; send(s: string): void; close(): void };

export interface ProxyMemory {
  rss: number;
  heap_used: number;
  external: number;
  array_buffers: number;
  // Committed bytes per V8 heap space (new_space is the young generation, both halves).
  spaces: Record<string, number>;
}

const MEMORY_EXPR = `JSON.stringify((() => {
  const m = process.memoryUsage();
  const v8 = process.mainModule.require('v8');
  const spaces = {};
  for (const s of v8.getHeapSpaceStatistics()) spaces[s.space_name] = s.physical_space_size;
  return { rss: m.rss, heap_used: m.heapUsed, external: m.external, array_buffers: m.arrayBuffers, spaces };
})())`;

export class Inspector {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();
  private chunkSink: ((s: string) => void) | null = null;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const msg = JSON.parse(String(data));
      if (msg.id !== undefined) {
        const w = this.waiting.get(msg.id);
        this.waiting.delete(msg.id);
        if (msg.error) w?.reject(new Error(msg.error.message));
        else w?.resolve(msg.result);
      } else if (msg.method === 'HeapProfiler.addHeapSnapshotChunk') this.chunkSink?.(msg.params.chunk);
    });
  }

  static async connect(port: number): Promise<Inspector> {
    const list = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()) as Array<{ webSocketDebuggerUrl: string }>;
    const ws = new WebSocket(list[0].webSocketDebuggerUrl, { maxPayload: 1 << 30 });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return new Inspector(ws);
  }

  call(method: string, params: object = {}): Promise<any> {
    const id = this.nextId++;
    this.ws.send(JSON.stringify({ id, method, params }));
    return new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
  }

  // Two full collections (the second frees what the first's finalizers let go), then the
  // process's own figures.
  async memory(): Promise<ProxyMemory> {
    await this.call('HeapProfiler.collectGarbage');
    await this.call('HeapProfiler.collectGarbage');
    const r = await this.call('Runtime.evaluate', { expression: MEMORY_EXPR, returnByValue: true });
    if (r.exceptionDetails) throw new Error(`inspector: ${r.exceptionDetails.text}`);
    return JSON.parse(r.result.value) as ProxyMemory;
  }

  // A heap snapshot written to `file`, summarised: self bytes and count per node type and
  // name (constructor), largest first.
  async snapshotSummary(file: string): Promise<Array<{ what: string; count: number; bytes: number }>> {
    const out = fs.openSync(file, 'w');
    this.chunkSink = (s) => fs.writeSync(out, s);
    try {
      await this.call('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
    } finally {
      this.chunkSink = null;
      fs.closeSync(out);
    }
    const snap = JSON.parse(fs.readFileSync(file, 'utf8'));
    const f: string[] = snap.snapshot.meta.node_fields;
    const types: string[] = snap.snapshot.meta.node_types[0];
    const iType = f.indexOf('type');
    const iName = f.indexOf('name');
    const iSize = f.indexOf('self_size');
    const by = new Map<string, { count: number; bytes: number }>();
    const nodes: number[] = snap.nodes;
    for (let i = 0; i < nodes.length; i += f.length) {
      const type = types[nodes[i + iType]];
      const name = type === 'object' || type === 'native' || type === 'closure' || type === 'hidden' ? String(snap.strings[nodes[i + iName]]).slice(0, 60) : '';
      const key = `${type}:${name}`;
      const e = by.get(key) ?? { count: 0, bytes: 0 };
      e.count++;
      e.bytes += nodes[i + iSize];
      by.set(key, e);
    }
    return [...by.entries()].map(([what, e]) => ({ what, ...e })).sort((a, b) => b.bytes - a.bytes);
  }

  // A CPU profile of `ms` milliseconds (sampled every intervalUs), summarised: self time
  // per function (name, file:line), largest first, as shares of all samples.
  async cpuProfileSummary(ms: number, intervalUs = 200): Promise<Array<{ what: string; share: number }>> {
    await this.call('Profiler.enable');
    await this.call('Profiler.setSamplingInterval', { interval: intervalUs });
    await this.call('Profiler.start');
    await new Promise((r) => setTimeout(r, ms));
    const { profile } = await this.call('Profiler.stop');
    await this.call('Profiler.disable');
    const self = new Map<number, number>();
    for (const id of profile.samples as number[]) self.set(id, (self.get(id) ?? 0) + 1);
    const total = (profile.samples as number[]).length || 1;
    type Node = { id: number; children?: number[]; callFrame: { functionName: string; url: string; lineNumber: number } };
    const nodes = profile.nodes as Node[];
    const parent = new Map<number, Node>();
    for (const n of nodes) for (const c of n.children ?? []) parent.set(c, n);
    const name = (n: Node) => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${n.callFrame.lineNumber + 1}`;
    const by = new Map<string, number>();
    for (const n of nodes) {
      const c = self.get(n.id);
      if (!c) continue;
      // native code (no script): named by the function that called it
      const p = !n.callFrame.url && parent.get(n.id);
      const key = p ? `${name(n)} < ${name(p)}` : name(n);
      by.set(key, (by.get(key) ?? 0) + c);
    }
    return [...by.entries()].map(([what, c]) => ({ what, share: c / total })).sort((a, b) => b.share - a.share);
  }

  close(): void {
    this.ws.close();
  }
}
