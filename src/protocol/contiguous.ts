// Rejoins byte ranges that were cut from one chunk and are still adjacent in it, so that
// what passed through unchanged goes out as the one write it came in as (no cork, no
// writev of many small buffers, no copy).
export function joinAdjacent(parts: Buffer[]): Buffer[] {
  if (parts.length < 2) return parts;
  let out: Buffer[] | null = null; // allocated only once two parts do not touch
  // the run being joined: its first part and its length (one view made per run, at its end)
  let first = parts[0];
  let len = first.length;
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i];
    if (p.length === 0) continue;
    if (len === 0) {
      first = p;
      len = p.length;
    } else if (p.buffer === first.buffer && p.byteOffset === first.byteOffset + len) {
      len += p.length;
    } else {
      (out ??= []).push(span(first, len));
      first = p;
      len = p.length;
    }
  }
  if (!out) return [span(first, len)];
  out.push(span(first, len));
  return out;
}

// len bytes from where first starts: first itself, or a view over the joined run (not a copy).
function span(first: Buffer, len: number): Buffer {
  return len === first.length ? first : Buffer.from(first.buffer, first.byteOffset, len);
}
