// Rejoins byte ranges that were cut from one chunk and are still adjacent in it, so that
// what passed through unchanged goes out as the one write it came in as (no cork, no
// writev of many small buffers, no copy).
export function joinAdjacent(parts: Buffer[]): Buffer[] {
  if (parts.length < 2) return parts;
  let out: Buffer[] | null = null; // allocated only once two parts do not touch
  let cur = parts[0];
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i];
    if (p.length === 0) continue;
    if (cur.length === 0) {
      cur = p;
    } else if (p.buffer === cur.buffer && p.byteOffset === cur.byteOffset + cur.length) {
      cur = Buffer.from(cur.buffer, cur.byteOffset, cur.length + p.length); // a view, not a copy
    } else {
      (out ??= []).push(cur);
      cur = p;
    }
  }
  if (!out) return [cur];
  out.push(cur);
  return out;
}
