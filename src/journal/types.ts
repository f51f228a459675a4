/**
 * The contract between the proxy and the connection journal (see ../shared/LEGAL.md).
 * The journal knows nothing of HTTP: it stores the fields below and nothing else.
 * Never a path, a query, a header or a body.
 */

/** 'https': one request inside an intercepted CONNECT tunnel (stored as text like the others). */
export type JournalProtocol = 'http' | 'connect' | 'https';
/** allow: forwarded; block: refused by policy; refused: refused by the proxy itself (ACL, port,
 *  destination, bad request, journal down); error: forwarded but upstream failed. */
export type JournalDecision = 'allow' | 'block' | 'refused' | 'error';

/** What is known when a connection or request starts. */
export interface JournalOpen {
  /** short reference id shown on block pages; unique */
  ref: string;
  startMs: number;
  clientIp: string;
  clientPort: number;
  user: string | null;
  workstation: string | null;
  protocol: JournalProtocol;
  /** HTTP method, or 'CONNECT' */
  method: string;
  destHost: string;
  destPort: number;
  decision: JournalDecision;
  /** reason code of the decision (policy Reason or a proxy refusal code) */
  reason: string;
  profile: string | null;
  category: string | null;
  listSerial: string | null;
}

/** What is known when it ends. */
export interface JournalClose {
  endMs: number;
  destIp: string | null;
  egressIp: string | null;
  egressPort: number | null;
  status: number | null;
  bytesIn: number;
  bytesOut: number;
  /** final decision when it changed (e.g. 'error' when the upstream failed) */
  decision?: JournalDecision;
  reason?: string;
}

export interface JournalWriter {
  /**
   * Records the start of a request or tunnel. Resolves once the record is durable (committed
   * with its batch), so the caller opens the upstream connection only after; rejects when the
   * journal cannot be written. The hot path does not block on disk: commits are batched.
   */
  begin(open: JournalOpen): Promise<JournalHandle>;
  /** Whether the last commit succeeded; false means refuse new traffic (fail-closed). */
  readonly healthy: boolean;
  /** Flush everything pending and close the store. */
  close(): Promise<void>;
}

export interface JournalHandle {
  /** The upstream socket is open: egress ip/port are known (queued, batched like the rest). */
  connected(info: { destIp: string | null; egressIp: string | null; egressPort: number | null }): void;
  /** Completes the record; never throws (errors are reported through healthy and the log). */
  finish(close: JournalClose): void;
}
