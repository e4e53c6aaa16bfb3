// A small, strict XML reader (no DTDs, no namespaces processing): enough to check
// that the BenchBase configs and the SVG chart are well-formed and to read elements.
export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string; // concatenated character data directly inside this element
}

const NAME = /^[A-Za-z_:][-A-Za-z0-9_:.]*/;

function decode(s: string, at: number): string {
  return s.replace(/&([^;]*);/g, (m, e: string) => {
    if (e === 'amp') return '&';
    if (e === 'lt') return '<';
    if (e === 'gt') return '>';
    if (e === 'quot') return '"';
    if (e === 'apos') return "'";
    if (/^#x[0-9a-fA-F]+$/.test(e)) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (/^#\d+$/.test(e)) return String.fromCodePoint(Number(e.slice(1)));
    throw new Error(`unknown entity ${m} near offset ${at}`);
  });
}

// Parses a document; throws with an offset on the first well-formedness error.
export function parseXml(src: string): XmlElement {
  let i = 0;
  const fail = (msg: string): never => {
    const line = src.slice(0, i).split('\n').length;
    throw new Error(`${msg} at line ${line}`);
  };
  const skipMisc = () => {
    for (;;) {
      while (i < src.length && /\s/.test(src[i])) i++;
      if (src.startsWith('<?', i)) {
        const e = src.indexOf('?>', i);
        if (e < 0) fail('unterminated processing instruction');
        i = e + 2;
      } else if (src.startsWith('<!--', i)) {
        const e = src.indexOf('-->', i + 4);
        if (e < 0) fail('unterminated comment');
        if (src.slice(i + 4, e).includes('--')) fail("'--' inside a comment");
        i = e + 3;
      } else return;
    }
  };
  const parseElement = (): XmlElement => {
    if (src[i] !== '<') fail('expected an element');
    i++;
    const nm = NAME.exec(src.slice(i));
    if (!nm) return fail('bad element name');
    const name = nm[0];
    i += name.length;
    const el: XmlElement = { name, attrs: {}, children: [], text: '' };
    for (;;) {
      const ws = /^\s*/.exec(src.slice(i))![0].length;
      i += ws;
      if (src.startsWith('/>', i)) {
        i += 2;
        return el;
      }
      if (src[i] === '>') {
        i++;
        break;
      }
      if (!ws) fail(`expected whitespace, '>' or '/>' in <${name}>`);
      const an = NAME.exec(src.slice(i));
      if (!an) fail(`bad attribute in <${name}>`);
      i += an![0].length;
      const eq = /^\s*=\s*(["'])/.exec(src.slice(i));
      if (!eq) fail(`attribute ${an![0]} without a quoted value`);
      i += eq![0].length;
      const end = src.indexOf(eq![1], i);
      if (end < 0) fail('unterminated attribute value');
      const raw = src.slice(i, end);
      if (raw.includes('<')) fail(`'<' in attribute ${an![0]}`);
      if (an![0] in el.attrs) fail(`duplicate attribute ${an![0]}`);
      el.attrs[an![0]] = decode(raw, i);
      i = end + 1;
    }
    for (;;) {
      if (i >= src.length) fail(`<${name}> not closed`);
      if (src.startsWith('</', i)) {
        i += 2;
        if (!src.startsWith(name, i)) fail(`</...> does not match <${name}>`);
        i += name.length;
        const m = /^\s*>/.exec(src.slice(i));
        if (!m) fail(`bad closing tag for <${name}>`);
        i += m![0].length;
        return el;
      }
      if (src.startsWith('<!--', i)) {
        const e = src.indexOf('-->', i + 4);
        if (e < 0) fail('unterminated comment');
        if (src.slice(i + 4, e).includes('--')) fail("'--' inside a comment");
        i = e + 3;
      } else if (src.startsWith('<![CDATA[', i)) {
        const e = src.indexOf(']]>', i);
        if (e < 0) fail('unterminated CDATA');
        el.text += src.slice(i + 9, e);
        i = e + 3;
      } else if (src.startsWith('<?', i)) {
        const e = src.indexOf('?>', i);
        if (e < 0) fail('unterminated processing instruction');
        i = e + 2;
      } else if (src[i] === '<') {
        el.children.push(parseElement());
      } else {
        const e = src.indexOf('<', i);
        const raw = src.slice(i, e < 0 ? src.length : e);
        if (raw.includes(']]>')) fail("']]>' in text");
        el.text += decode(raw, i);
        i = e < 0 ? src.length : e;
      }
    }
  };
  skipMisc();
  if (src.startsWith('<!DOCTYPE', i)) fail('DOCTYPE not supported');
  const root = parseElement();
  skipMisc();
  if (i < src.length) fail('content after the root element');
  return root;
}

export function child(el: XmlElement, name: string): XmlElement | undefined {
  return el.children.find((c) => c.name === name);
}
export function childrenNamed(el: XmlElement, name: string): XmlElement[] {
  return el.children.filter((c) => c.name === name);
}
