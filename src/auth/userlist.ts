// PgBouncer's auth_file (userlist.txt): one user per line, `"name" "secret"`, each a
// double-quoted string in which "" stands for one ". The secret is a plain password, an
// md5 hash or a SCRAM verifier, as under users:. Anything after the second string is
// ignored, as are lines that do not start with a quote (comments, blank lines).

export interface UserlistEntry {
  name: string;
  password: string;
  line: number;
}

export class UserlistError extends Error {
  constructor(message: string, readonly line: number) {
    super(message);
    this.name = 'UserlistError';
  }
}

// Reads one quoted string at s[i] (a "); returns the text and the index after it.
function quoted(s: string, i: number, line: number): [string, number] {
  let out = '';
  for (let j = i + 1; j < s.length; j++) {
    if (s[j] !== '"') {
      out += s[j];
      continue;
    }
    if (s[j + 1] === '"') {
      out += '"';
      j++;
      continue;
    }
    return [out, j + 1];
  }
  throw new UserlistError('unterminated quoted string', line);
}

export function parseUserlist(text: string): UserlistEntry[] {
  const out: UserlistEntry[] = [];
  text.split(/\r?\n/).forEach((raw, idx) => {
    const line = idx + 1;
    const s = raw.trimStart();
    if (!s.startsWith('"')) return;
    const [name, after] = quoted(s, 0, line);
    const rest = s.slice(after).trimStart();
    if (!rest.startsWith('"')) throw new UserlistError(`user "${name}": expected its password as a second quoted string`, line);
    const [password] = quoted(rest, 0, line);
    if (name === '') throw new UserlistError('empty user name', line);
    out.push({ name, password, line });
  });
  return out;
}
