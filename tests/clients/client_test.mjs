// Runs pgspout's JavaScript client (as served at /v1/client.js) under Node against a live server.
// Usage: node client_test.mjs BASE_URL. Prints "ok" or throws.
import assert from "node:assert/strict";
import { writeFile, mkdtemp } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

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
const target = new URL(base);
async function cuttingProxy() {
  let connections = 0;
  const server = net.createServer((client) => {
    connections += 1;
    const first = connections === 1;
    const upstream = net.connect(Number(target.port), target.hostname);
    let forwarded = 0;
    client.pipe(upstream);
    upstream.on("data", (chunk) => {
      if (first && forwarded + chunk.length > 3000) {
        // Only the first 3000 bytes (headers and some compressed rows: fetch asks for gzip or br) get
        // through, then the connection drops mid-body.
        client.end(chunk.subarray(0, 3000 - forwarded), () => client.destroy());
        upstream.destroy();
        forwarded = 3000;
        return;
      }
      forwarded += chunk.length;
      client.write(chunk);
    });
    upstream.on("end", () => client.end());
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, connections: () => connections, server };
}
const proxy = await cuttingProxy();
const resumed = [];
for await (const row of rows(`${proxy.url}/v1/datasets/numbers/rows`)) resumed.push(row.id);
assert.ok(proxy.connections() >= 2, "the first connection was cut and the client reconnected");
assert.deepEqual(resumed, expected);
proxy.server.close();
// Without resume, the cut is an error, never a short result.
const strict = await cuttingProxy();
await assert.rejects(async () => {
  for await (const _ of rows(`${strict.url}/v1/datasets/numbers/rows`, { resume: false }));
}, (error) => error instanceof PgspoutError && error.status === 0);
strict.server.close();

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
