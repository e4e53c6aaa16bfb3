// Malformed requests of a logged-in client, shared by the hostile-input tests: each must
// end only its own connection (08P01), whatever path carried it.
import { Msg, RawConn, int16, int32, message, parseFields } from './pgwire';

export const errorsOf = (msgs: Msg[]) => msgs.filter((m) => m.type === 'E').map((m) => parseFields(m.body));

// Everything the proxy sends until it closes the connection (or until ReadyForQuery).
export async function readToEnd(conn: RawConn, timeoutMs = 10000): Promise<{ msgs: Msg[]; closed: boolean }> {
  const msgs: Msg[] = [];
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      const m = await conn.readMessage(Math.max(1, deadline - Date.now()));
      msgs.push(m);
      if (m.type === 'Z') return { msgs, closed: false };
    }
  } catch {
    return { msgs, closed: conn.closed };
  }
}

// The malformed bodies a logged-in client sends; each must end with 08P01 naming the problem.
export const MALFORMED: Array<{ label: string; bytes: Buffer; closes: boolean }> = [
  { label: 'Parse body "x" (no NUL terminators)', bytes: message('P', Buffer.from('x')), closes: true },
  { label: 'Bind body "x"', bytes: message('B', Buffer.from('x')), closes: true },
  { label: 'Parse with a negative parameter count', bytes: message('P', Buffer.concat([Buffer.from('s1\0SELECT 1\0'), int16(-3)])), closes: true },
  { label: 'Parse with 2 parameter types announced, 1 sent', bytes: message('P', Buffer.concat([Buffer.from('\0SELECT $1\0'), int16(2), int32(23)])), closes: true },
  { label: 'Bind whose parameter length runs past the body', bytes: message('B', Buffer.concat([Buffer.from('\0\0'), int16(0), int16(1), int32(1000), Buffer.from('ab'), int16(0)])), closes: true },
  { label: 'Bind with trailing garbage', bytes: message('B', Buffer.concat([Buffer.from('\0\0'), int16(0), int16(0), int16(0), Buffer.from('zz')])), closes: true },
  { label: 'Describe with subtype Z', bytes: message('D', Buffer.from('Zname\0')), closes: true },
  { label: 'Describe with an empty body', bytes: message('D'), closes: true },
  { label: 'Close "S" without a NUL', bytes: message('C', Buffer.from('Sname')), closes: true },
  { label: 'Query without a NUL', bytes: message('Q', Buffer.from('SELECT 1')), closes: true },
  // Execute is not read by the proxy: PostgreSQL itself answers it (ERROR 08P01, then Sync).
  { label: 'Execute body "x" (PostgreSQL answers)', bytes: message('E', Buffer.from('x')), closes: false },
];
