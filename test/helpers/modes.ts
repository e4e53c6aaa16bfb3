// Which data paths the pooling tests run against. Every pooling test loops over
// this list; the kernel path joins with PGSPLICE_TEST_MODES=off,on.
export const BYPASS_MODES: string[] = (process.env.PGSPLICE_TEST_MODES ?? 'off,on')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
