// PostgreSQL v3 wire protocol codes used by the proxy.

export const PROTOCOL_3_0 = 196608; // 3 << 16
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

// Largest message the proxy accepts; PostgreSQL's own limit for most messages is 1 GB.
export const MAX_MESSAGE_LENGTH = 0x3fffffff;
export const MAX_STARTUP_LENGTH = 10000; // as PostgreSQL's MAX_STARTUP_PACKET_LENGTH
// Largest password / SASL message before authentication (length field), as PostgreSQL's
// PG_MAX_AUTH_TOKEN_LENGTH (src/include/libpq/auth.h): a client that has not logged in
// cannot make the proxy buffer more than this.
export const MAX_AUTH_MESSAGE_LENGTH = 65535;

const c = (s: string): number => s.charCodeAt(0);

// Frontend (client -> server) message types.
export const Frontend = {
  Query: c('Q'),
  Parse: c('P'),
  Bind: c('B'),
  Describe: c('D'),
  Execute: c('E'),
  Sync: c('S'),
  Flush: c('H'),
  Close: c('C'),
  FunctionCall: c('F'),
  CopyData: c('d'),
  CopyDone: c('c'),
  CopyFail: c('f'),
  Terminate: c('X'),
  Password: c('p'), // also SASLInitialResponse / SASLResponse
} as const;

// Backend (server -> client) message types.
export const Backend = {
  Authentication: c('R'),
  BackendKeyData: c('K'),
  ParameterStatus: c('S'),
  ReadyForQuery: c('Z'),
  ErrorResponse: c('E'),
  NoticeResponse: c('N'),
  NotificationResponse: c('A'),
  CommandComplete: c('C'),
  DataRow: c('D'),
  RowDescription: c('T'),
  EmptyQueryResponse: c('I'),
  CopyInResponse: c('G'),
  CopyOutResponse: c('H'),
  CopyBothResponse: c('W'),
  NegotiateProtocolVersion: c('v'),
} as const;

export const AuthCode = {
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

// Transaction status byte of ReadyForQuery.
export type TxStatus = 'I' | 'T' | 'E';

// SQLSTATEs the proxy itself raises.
export const SqlState = {
  ProtocolViolation: '08P01',
  ConnectionFailure: '08006',
  ConnectionException: '08000',
  InvalidAuthorization: '28000',
  InvalidPassword: '28P01',
  InvalidCatalogName: '3D000',
  TooManyConnections: '53300',
  FeatureNotSupported: '0A000',
  AdminShutdown: '57P01',
  CannotConnectNow: '57P03',
  QueryCanceled: '57014',
  IdleInTransactionTimeout: '25P03',
  IdleSessionTimeout: '57P05',
  InternalError: 'XX000',
  InvalidSqlStatementName: '26000',
  DuplicatePreparedStatement: '42P05',
} as const;
