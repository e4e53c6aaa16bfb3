// Decides when a server may leave its client (invariant 4, docs/invariants.md): only at
// ReadyForQuery 'I' with no Sync, Query or FunctionCall outstanding and nothing of a
// next request already sent to it. The kernel keeps the same state per client
// (ebpf/pgsplice.h: outstanding, tail_open).
import { Frontend, TxStatus } from '../protocol/constants';

export class TransactionTracker {
  outstanding = 0; // requests sent that will each end with one ReadyForQuery
  tailOpen = false; // bytes of a next request sent after the last sync point
  status: TxStatus = 'I';

  // A complete client message was forwarded to the server.
  onClientMessage(type: number): void {
    switch (type) {
      case Frontend.Sync:
      case Frontend.Query:
      case Frontend.FunctionCall:
        this.outstanding++;
        this.tailOpen = false;
        break;
      case Frontend.CopyData:
      case Frontend.CopyDone:
      case Frontend.CopyFail:
        break; // part of the request in progress, not a new one
      default:
        this.tailOpen = true;
    }
  }

  // Part of a message was forwarded (its end is still to come).
  onClientPartial(type: number): void {
    if (type !== Frontend.CopyData) this.tailOpen = true;
  }

  onReadyForQuery(status: TxStatus): void {
    if (this.outstanding > 0) this.outstanding--;
    this.status = status;
  }

  // True when the server can be given to another client.
  get idle(): boolean {
    return this.outstanding === 0 && this.status === 'I' && !this.tailOpen;
  }

  reset(): void {
    this.outstanding = 0;
    this.tailOpen = false;
    this.status = 'I';
  }
}
