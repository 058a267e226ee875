// pgspout's JavaScript client: a dependency-free ES module, served by pgspout at /v1/client.js. No build step.
//
//   import { rows, pages, startExport, waitForExport, PgspoutError } from "/v1/client.js";
//   for await (const row of rows("/v1/datasets/orders/rows?status=eq.paid", { signal, onProgress })) { … }
//
// Types: client.d.ts next to this file.

/** A problem+json answer (RFC 9457), or a transfer that broke and could not be resumed. */
export class PgspoutError extends Error {
  constructor(problem, response) {
    super(problem.detail || problem.title || `HTTP ${problem.status}`);
    this.name = "PgspoutError";
    /** The HTTP status (0 when the transfer itself failed). */
    this.status = problem.status || 0;
    /** The problem type URI, e.g. urn:pgspout:problem:unknown-dataset. */
    this.type = problem.type || "about:blank";
    this.title = problem.title || "";
    this.detail = problem.detail || "";
    /** The request id, as in the server's logs. */
    this.requestId = problem.request_id || response?.headers.get("x-request-id") || null;
    this.problem = problem;
  }
}

async function failure(response) {
  let problem;
  try {
    problem = await response.json();
  } catch {
    problem = { status: response.status, title: response.statusText };
  }
  if (!problem.status) problem.status = response.status;
  return new PgspoutError(problem, response);
}

async function fetchOk(url, init) {
  const response = await fetch(url, init);
  if (!response.ok) throw await failure(response);
  return response;
}

/** Splits a byte stream into lines of text as they arrive (UTF-8, split characters included). */
async function* lines(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      rest += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = rest.indexOf("\n")) >= 0) {
        yield rest.slice(0, newline);
        rest = rest.slice(newline + 1);
      }
    }
    rest += decoder.decode();
    if (rest) yield rest;
  } finally {
    // Not awaited: cancelling a body whose fetch was aborted may never settle.
    if (signal?.aborted) reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

function withParam(url, name, value) {
  const absolute = new URL(url, globalThis.location?.href ?? "http://localhost/");
  absolute.searchParams.set(name, value);
  return typeof url === "string" && !/^[a-z]+:/i.test(url) ? absolute.pathname + absolute.search : absolute.href;
}

/**
 * The rows of an export URL (`/v1/datasets/{name}/rows?…`, NDJSON), as objects, while they stream.
 *
 * - `signal`: an AbortSignal; aborting cancels the request, and pgspout cancels the query.
 * - `onProgress({ rows, total })`: after every chunk; `total` is `X-Total-Count` (ask with
 *   `prefer: "count=estimated"` or `"count=exact"`), else null.
 * - `resume` (default true): after a network failure mid-stream, reconnect with `after=<key of the last row>`
 *   (`key` names the key column, default `id`), up to `retries` times, so every row comes exactly once. Only
 *   for exports in key order (no `order`, or the key ascending).
 * - `onResume({ after, attempt })`: before each reconnection.
 * - `headers`: sent with every request (e.g. `Authorization`).
 */
export async function* rows(url, options = {}) {
  const { signal, onProgress, onResume, resume = true, retries = 5, key = "id", prefer, headers = {} } = options;
  const sent = { ...headers, Accept: "application/x-ndjson" };
  if (prefer) sent.Prefer = prefer;
  let count = 0;
  let total = null;
  let last;
  let attempts = 0;
  for (;;) {
    const target = last === undefined ? url : withParam(url, "after", String(last));
    try {
      const response = await fetchOk(target, { headers: sent, signal });
      const header = response.headers.get("x-total-count");
      if (header !== null && total === null) total = Number(header);
      for await (const line of lines(response.body, signal)) {
        if (!line) continue;
        const row = JSON.parse(line);
        count += 1;
        if (row[key] !== undefined) last = row[key];
        yield row;
        // Rows already received must not outlive an abort.
        signal?.throwIfAborted();
        if (onProgress && count % 1000 === 0) onProgress({ rows: count, total });
      }
      onProgress?.({ rows: count, total });
      return;
    } catch (error) {
      const fatal = error instanceof SyntaxError || (error instanceof PgspoutError && error.status !== 0);
      // Nothing received yet: start again. Rows received but no key to resume after: give up.
      const stuck = last === undefined && count > 0;
      if (signal?.aborted || fatal || !resume || attempts >= retries || stuck) {
        if (error instanceof PgspoutError || signal?.aborted) throw error;
        throw new PgspoutError({ status: 0, title: "Transfer failed", detail: String(error) });
      }
      attempts += 1;
      await new Promise((resolve) => setTimeout(resolve, Math.min(200 * 2 ** attempts, 5000)));
      onResume?.({ after: last, attempt: attempts });
    }
  }
}

/** Pages of `/v1/datasets/{name}/page?…` in turn: each `{ rows, next }`, following `next` cursors. */
export async function* pages(url, options = {}) {
  const { signal, headers = {} } = options;
  let target = url;
  for (;;) {
    const page = await (await fetchOk(target, { headers, signal })).json();
    yield page;
    if (!page.next) return;
    target = withParam(url, "cursor", page.next);
  }
}

/** Starts a background export: `{ dataset, format, compression, query }`; resolves to its status URL. */
export async function startExport(base, body, options = {}) {
  const { signal, headers = {} } = options;
  const response = await fetchOk(`${base}/v1/exports`, {
    method: "POST",
    headers: { ...headers, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  const created = await response.json();
  return new URL(created.status_url, response.url).href;
}

/**
 * Follows an export's status until it is completed (resolves to its download URL) or failed or cancelled
 * (rejects). `onStatus(status)` sees every poll.
 */
export async function waitForExport(statusUrl, options = {}) {
  const { signal, headers = {}, interval = 1000, onStatus } = options;
  for (;;) {
    const status = await (await fetchOk(statusUrl, { headers, signal })).json();
    onStatus?.(status);
    if (status.status === "completed") return new URL(status.download_url, statusUrl).href;
    if (status.status === "failed" || status.status === "cancelled") {
      throw new PgspoutError({ status: 0, title: `Export ${status.status}`, detail: status.error || "" });
    }
    await new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, interval);
      signal?.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(signal.reason);
      });
    });
  }
}
