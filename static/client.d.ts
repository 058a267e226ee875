// Types of pgspout's JavaScript client (/v1/client.js).

/** A problem+json answer (RFC 9457), or a transfer that broke and could not be resumed (status 0). */
export class PgspoutError extends Error {
  readonly status: number;
  readonly type: string;
  readonly title: string;
  readonly detail: string;
  readonly requestId: string | null;
  readonly problem: Record<string, unknown>;
}

export interface Progress {
  /** Rows received so far. */
  rows: number;
  /** X-Total-Count, when the request asked for a count; else null. */
  total: number | null;
}

export interface RowsOptions {
  signal?: AbortSignal;
  onProgress?: (progress: Progress) => void;
  /** Called before each reconnection, with the key it resumes after (undefined: starts over). */
  onResume?: (resume: { after: unknown; attempt: number }) => void;
  /** Reconnect after a network failure with `after=<last key>` (key-ordered exports). Default true. */
  resume?: boolean;
  /** Reconnections allowed. Default 5. */
  retries?: number;
  /** The key column, for resuming. Default "id". */
  key?: string;
  /** The Prefer header, e.g. "count=estimated". */
  prefer?: string;
  headers?: Record<string, string>;
}

/** The rows of an export URL, as they stream. */
export function rows<Row = Record<string, unknown>>(url: string, options?: RowsOptions): AsyncGenerator<Row, void>;

export interface Page<Row> {
  rows: Row[];
  next: string | null;
}

/** The pages of a /page URL, following `next` cursors. */
export function pages<Row = Record<string, unknown>>(
  url: string,
  options?: { signal?: AbortSignal; headers?: Record<string, string> },
): AsyncGenerator<Page<Row>, void>;

export interface ExportRequest {
  dataset: string;
  format?: "ndjson" | "csv";
  compression?: "identity" | "gzip" | "zstd";
  query?: string;
}

/** Starts a background export; resolves to its status URL. */
export function startExport(
  base: string,
  body: ExportRequest,
  options?: { signal?: AbortSignal; headers?: Record<string, string> },
): Promise<string>;

/** Follows an export until completed; resolves to its download URL. */
export function waitForExport(
  statusUrl: string,
  options?: {
    signal?: AbortSignal;
    headers?: Record<string, string>;
    interval?: number;
    onStatus?: (status: Record<string, unknown>) => void;
  },
): Promise<string>;
