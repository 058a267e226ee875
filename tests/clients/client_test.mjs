// Runs pgspout's JavaScript client (as served at /v1/client.js) under Node against a live server.
// Usage: node client_test.mjs BASE_URL. Prints "ok" or throws.
import assert from "node:assert/strict";
import { writeFile, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cuttingProxy } from "./cutting_proxy.mjs";

const base = process.argv[2];
const source = await (await fetch(`${base}/v1/client.js`)).text();
const dir = await mkdtemp(join(tmpdir(), "pgspout-client-"));
await writeFile(join(dir, "client.mjs"), source);
const { rows, pages, startExport, waitForExport, PgspoutError } = await import(join(dir, "client.mjs"));
const expected = Array.from({ length: 3000 }, (_, i) => i + 1);

// Every row, in order, with progress against the exact count.
const seen = [];
let progress;
for await (const row of rows(`${base}/v1/datasets/numbers/rows`, { prefer: "count=exact", onProgress: (p) => (progress = p) })) {
  seen.push(row.id);
}
assert.deepEqual(seen, expected);
assert.deepEqual(progress, { rows: 3000, total: 3000 });

// A proxy whose first connection drops mid-body: the client resumes after the last key, every row once.
// Only the first 3000 bytes (headers and some compressed rows: fetch asks for gzip or br) get through.
const proxy = await cuttingProxy(base);
proxy.cutNext(3000);
const resumed = [];
for await (const row of rows(`${proxy.url}/v1/datasets/numbers/rows`)) resumed.push(row.id);
assert.equal(proxy.state.cuts, 1);
assert.ok(proxy.state.requests.length >= 2, "the client reconnected after the cut");
assert.deepEqual(resumed, expected);
// Without resume, the cut is an error, never a short result.
proxy.cutNext(3000);
await assert.rejects(async () => {
  for await (const _ of rows(`${proxy.url}/v1/datasets/numbers/rows`, { resume: false }));
}, (error) => error instanceof PgspoutError && error.status === 0);
assert.equal(proxy.state.cuts, 2);
proxy.close();

// problem+json becomes a typed error.
await assert.rejects(async () => {
  for await (const _ of rows(`${base}/v1/datasets/nope/rows`));
}, (error) => error instanceof PgspoutError && error.status === 404 && error.type === "urn:pgspout:problem:unknown-dataset" && Boolean(error.requestId));

// Abort stops the iteration.
const controller = new AbortController();
let before = 0;
await assert.rejects(async () => {
  for await (const _ of rows(`${base}/v1/datasets/numbers/rows`, { signal: controller.signal })) {
    before += 1;
    if (before === 10) controller.abort();
  }
}, (error) => error.name === "AbortError");

// Pages follow their cursors.
const paged = [];
for await (const page of pages(`${base}/v1/datasets/numbers/page?limit=1000`)) paged.push(...page.rows.map((r) => r.id));
assert.deepEqual(paged, expected);

// A background export: start, follow, download.
const statusUrl = await startExport(base, { dataset: "numbers", format: "csv" });
const download = await waitForExport(statusUrl, { interval: 100 });
const file = await (await fetch(download)).text();
assert.equal(file.trim().split("\n").length, 3001);
console.log("ok");
// Idle keep-alive connections would hold the process open for seconds.
process.exit(0);
