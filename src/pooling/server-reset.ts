// Statements the proxy runs on a server to make it clean, one Query each: a Query with
// several statements runs as one implicit transaction block, where DISCARD ALL (and any
// statement that must not run in a transaction) fails.
export async function runEach(server: { runInternal(sql: string): Promise<void> }, sqls: readonly string[]): Promise<void> {
  for (const sql of sqls) await server.runInternal(sql);
}
