// Text-format result sets for the admin console: RowDescription, DataRow,
// CommandComplete, notices and errors, built as one buffer per answer.
import { Backend } from '../protocol/constants';
import { ErrorFields, errorResponse, message, noticeResponse, readyForQuery } from '../protocol/messages';

export type ColumnType = 'text' | 'int8' | 'int4' | 'bool' | 'timestamptz';

const TYPE_OID: Record<ColumnType, number> = { text: 25, int8: 20, int4: 23, bool: 16, timestamptz: 1184 };
const TYPE_LEN: Record<ColumnType, number> = { text: -1, int8: 8, int4: 4, bool: 1, timestamptz: 8 };

export interface Column {
  name: string;
  type: ColumnType;
}

export type Cell = string | number | bigint | boolean | null | undefined;

const frame = message;

// A message whose body is an Int16 count, then each item encoded (RowDescription, DataRow).
function countedMessage<T>(type: number, items: T[], encode: (item: T) => Buffer[]): Buffer {
  const n = Buffer.allocUnsafe(2);
  n.writeInt16BE(items.length, 0);
  return frame(type, Buffer.concat([n, ...items.flatMap(encode)]));
}

export function rowDescription(cols: Column[]): Buffer {
  return countedMessage(Backend.RowDescription, cols, (c) => {
    const meta = Buffer.alloc(18);
    // table oid 0, attnum 0, type oid, type len, typmod -1, format 0 (text)
    meta.writeInt32BE(0, 0);
    meta.writeInt16BE(0, 4);
    meta.writeInt32BE(TYPE_OID[c.type], 6);
    meta.writeInt16BE(TYPE_LEN[c.type], 10);
    meta.writeInt32BE(-1, 12);
    meta.writeInt16BE(0, 16);
    return [Buffer.from(c.name + '\0', 'utf8'), meta];
  });
}

export function cellText(v: Cell): string | null {
  if (v === null || v === undefined) return null;
  if (typeof v === 'boolean') return v ? 't' : 'f';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Math.round(v));
  return String(v);
}

export function dataRow(cells: Cell[]): Buffer {
  return countedMessage(Backend.DataRow, cells, (c) => {
    const s = cellText(c);
    const len = Buffer.allocUnsafe(4);
    if (s === null) {
      len.writeInt32BE(-1, 0);
      return [len];
    }
    const b = Buffer.from(s, 'utf8');
    len.writeInt32BE(b.length, 0);
    return [len, b];
  });
}

export function commandComplete(tag: string): Buffer {
  return frame(Backend.CommandComplete, Buffer.from(tag + '\0', 'utf8'));
}

export function emptyQueryResponse(): Buffer {
  return frame(Backend.EmptyQueryResponse, Buffer.alloc(0));
}

// A full answer to one simple query: result set, tag, ReadyForQuery.
export class ResultSet {
  private rows: Buffer[] = [];
  constructor(readonly columns: Column[]) {}

  add(cells: Cell[]): this {
    if (cells.length !== this.columns.length) throw new Error(`row has ${cells.length} cells, expected ${this.columns.length}`);
    this.rows.push(dataRow(cells));
    return this;
  }

  get rowCount(): number {
    return this.rows.length;
  }

  toBuffer(tag = 'SHOW'): Buffer {
    return Buffer.concat([rowDescription(this.columns), ...this.rows, commandComplete(tag)]);
  }
}

// Columns from a compact spec: "name:int8", plain "name" is text.
export function columns(...specs: string[]): Column[] {
  return specs.map((s) => {
    const [name, type] = s.split(':');
    return { name, type: (type as ColumnType | undefined) ?? 'text' };
  });
}

export const ready = (): Buffer => readyForQuery('I');
export const error = (f: ErrorFields): Buffer => errorResponse(f);
export const notice = (message: string, detail?: string): Buffer => noticeResponse({ code: '00000', message, detail });
