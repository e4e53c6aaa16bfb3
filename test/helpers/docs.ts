// Reading the user docs (docs/*.md, README.md) in tests that keep them true: sections by
// heading, the rows of their tables, the backticked names in a text.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const ROOT = join(__dirname, '..', '..');

export function readDoc(rel: string): string {
  return readFileSync(join(ROOT, rel), 'utf8');
}

/** The text under the heading whose title is `title` (any level), up to the next heading of
 * the same or a higher level. Throws when there is no such heading, so a renamed section
 * fails the test instead of being skipped. */
export function section(md: string, title: string): string {
  const lines = md.split('\n');
  const start = lines.findIndex((l) => /^#+ /.test(l) && l.replace(/^#+ /, '').trim() === title);
  if (start < 0) throw new Error(`no heading "${title}"`);
  const level = /^#+/.exec(lines[start]!)![0].length;
  let end = start + 1;
  while (end < lines.length && !(/^#+ /.test(lines[end]!) && /^#+/.exec(lines[end]!)![0].length <= level)) end++;
  return lines.slice(start + 1, end).join('\n');
}

/** The body rows of every table in a text, as trimmed cells (`\|` inside a cell kept as `|`). */
export function tableRows(text: string): string[][] {
  const rows: string[][] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (!l.startsWith('|')) continue;
    if (/^\|[\s:|-]+\|$/.test(l)) continue; // the separator row
    if (lines[i + 1] !== undefined && /^\|[\s:|-]+\|$/.test(lines[i + 1]!)) continue; // the header row
    const cells = l.slice(1, l.endsWith('|') ? -1 : undefined).split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, '|'));
    rows.push(cells);
  }
  return rows;
}

/** Backticked words of a text, in order (`a`, `b c` -> ['a', 'b c']). */
export function backticked(text: string): string[] {
  return [...text.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
}
