// Drives Debian's chromium (playwright-core, never a downloaded browser) against a live pgspout serving a
// 1M-row `numbers` dataset (ids 1..1000000) and `slow_numbers`, the same rows from a view that sleeps per row.
//
// Usage: node browser_test.mjs BASE_URL ALLOWED_PORT BLOCKED_PORT
//   pgspout must allow the origin http://127.0.0.1:ALLOWED_PORT (and not BLOCKED_PORT); psql must reach the
//   dataset's database through the PG* environment (for pg_stat_activity).
// Prints one JSON line of figures, then "ok"; any failed check throws (exit code 1).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import http from "node:http";
import { chromium } from "playwright-core";
import { cuttingProxy } from "../clients/cutting_proxy.mjs";

const [base, allowedPort, blockedPort] = process.argv.slice(2);
const TOTAL = 1_000_000;
const RETAINED = 100_000;
const figures = {};

/** pgspout's backends in the test database that are doing something (not idle), its reload listener aside. */
function busyBackends() {
  const sql =
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " +
    "AND application_name LIKE 'pgspout%' AND application_name <> 'pgspout listener' AND state <> 'idle'";
  return Number(execFileSync("psql", ["-XAtc", sql], { encoding: "utf8" }).trim());
}

/** Polls `check` every `every` ms until it returns a truthy value; fails after `limit` ms. */
async function until(what, check, limit = 30_000, every = 50) {
  const start = Date.now();
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() - start > limit) throw new Error(`timed out after ${limit} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

/** Rejects if `promise` takes longer than `limit` ms. */
function bounded(what, promise, limit = 60_000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${limit} ms`)), limit);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A page server for another origin: an empty page. */
async function origin(port) {
  const server = http.createServer((request, response) => {
    response.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    response.end("<!doctype html><title>another origin</title><p>another origin</p>");
  });
  await new Promise((resolve) => server.listen(Number(port), "127.0.0.1", resolve));
  return server;
}

const browser = await chromium.launch({
  executablePath: process.env.PGSPOUT_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-precise-memory-info",
    "--js-flags=--expose-gc",
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
context.setDefaultTimeout(30_000);
const uncaught = [];

async function open(url) {
  const page = await context.newPage();
  page.on("pageerror", (error) => uncaught.push(`${url}: ${error.message}`));
  await page.goto(url);
  return page;
}

/** The live page at `url`, its catalog loaded and `dataset` chosen. */
async function livePage(url, dataset) {
  const page = await open(`${url}/#${dataset}`);
  await page.waitForSelector(`#dataset option[value="${dataset}"]`, { state: "attached" });
  assert.equal(await page.inputValue("#dataset"), dataset);
  return page;
}

const count = async (page) => Number((await page.textContent("#count")).replaceAll(",", ""));
const state = (page) => page.getAttribute("#status", "data-state");

// -----------------------------------------------------------------------------------------------------------
// 1. The live page renders rows while they stream, with a bounded DOM.
{
  const page = await livePage(base, "numbers");
  await page.click("#stream");
  await page.waitForSelector("#window .grid-row");
  const atFirstRow = await count(page);
  let domRows = 0;
  let domNodes = 0;
  await until("the stream to complete", async () => {
    const sample = await page.evaluate(() => ({
      rows: document.querySelectorAll("#window .grid-row").length,
      nodes: document.getElementsByTagName("*").length,
      state: document.getElementById("status").dataset.state,
    }));
    domRows = Math.max(domRows, sample.rows);
    domNodes = Math.max(domNodes, sample.nodes);
    assert.notEqual(sample.state, "failed");
    return sample.state === "complete";
  }, 120_000, 100);
  assert.equal(await count(page), TOTAL);
  const marks = await page.evaluate(() =>
    Object.fromEntries(performance.getEntriesByType("mark").map((m) => [m.name, m.startTime])),
  );
  const firstRow = marks["pgspout:first-row"] - marks["pgspout:start"];
  const total = marks["pgspout:end"] - marks["pgspout:start"];
  assert.ok(atFirstRow < TOTAL, "rows were on screen before the transfer ended");
  assert.ok(firstRow < total / 10, `first row after ${firstRow} ms of ${total} ms`);
  // Scrolled to the bottom of what the table keeps: still a bounded window, ending at the last kept row.
  await page.evaluate(() => {
    const viewport = document.getElementById("viewport");
    viewport.scrollTop = viewport.scrollHeight;
  });
  await until("the last kept row at the bottom", async () => {
    const last = await page.evaluate(() => document.querySelector("#window .grid-row:last-child > div")?.textContent);
    return Number(last) === RETAINED;
  });
  domRows = Math.max(domRows, await page.$$eval("#window .grid-row", (rows) => rows.length));
  assert.ok(domRows <= 80, `at most 80 rows in the DOM, saw ${domRows}`);
  Object.assign(figures, {
    first_row_ms: Math.round(firstRow),
    total_ms: Math.round(total),
    rows_on_screen_at_first_row: atFirstRow,
    max_dom_rows: domRows,
    max_dom_nodes: domNodes,
  });

  // The download links: a gzip-compressed CSV file, a plain JSON array of the filtered rows, and an Arrow
  // stream that begins with a message and ends with the end-of-stream marker.
  await page.click("#add-filter");
  await page.selectOption("#filters .clause select >> nth=0", "id");
  await page.selectOption("#filters .clause select >> nth=1", "lte");
  await page.fill("#filters .value", "5000");
  const downloads = await page.evaluate(async () => {
    const link = (format, coding) =>
      document.querySelector(`#downloads a[download="numbers.${format}${coding}"]`).href;
    const gzip = await fetch(link("csv", ".gz"));
    const csv = await new Response(gzip.body.pipeThrough(new DecompressionStream("gzip"))).text();
    const json = await (await fetch(link("json", ""))).json();
    const arrow = await fetch(link("arrows", ""));
    const bytes = new Uint8Array(await arrow.arrayBuffer());
    const parquet = await fetch(link("parquet", ""));
    const file = new Uint8Array(await parquet.arrayBuffer());
    const hex = (part) => Array.from(part, (b) => b.toString(16).padStart(2, "0")).join("");
    return {
      type: gzip.headers.get("content-type"),
      lines: csv.trimEnd().split("\n").length,
      json: json.length,
      arrow: [arrow.headers.get("content-type"), hex(bytes.slice(0, 4)), hex(bytes.slice(-8))],
      // "PAR1" at both ends; Parquet compresses itself, so it has no compressed links.
      parquet: [parquet.headers.get("content-type"), hex(file.slice(0, 4)), hex(file.slice(-4))],
      compressedParquet: document.querySelectorAll('#downloads a[download^="numbers.parquet."]').length,
    };
  });
  assert.deepEqual(downloads, {
    type: "application/gzip",
    lines: 5001,
    json: 5000,
    arrow: ["application/vnd.apache.arrow.stream", "ffffffff", "ffffffff00000000"],
    parquet: ["application/vnd.apache.parquet", "50415231", "50415231"],
    compressedParquet: 0,
  });

  // The background export panel: start one with the page's filter, follow it, download its file.
  await page.selectOption("#job-compression", "gzip");
  await page.click("#job-start");
  const href = await page.waitForSelector("#jobs a", { timeout: 60_000 }).then((a) => a.getAttribute("href"));
  const exported = await page.evaluate(async (href) => {
    const response = await fetch(href);
    const text = await new Response(response.body.pipeThrough(new DecompressionStream("gzip"))).text();
    const ids = text.trimEnd().split("\n").map((line) => JSON.parse(line).id);
    return { count: ids.length, last: ids.at(-1) };
  }, href);
  assert.deepEqual(exported, { count: 5000, last: 5000 });
  // The panel offers what jobs can write (from GET /v1/formats); a Parquet job takes no compression.
  const offered = await page.$$eval("#job-format option", (options) => options.map((o) => o.value));
  assert.deepEqual(offered, ["ndjson", "csv", "arrow", "parquet"]);
  await page.selectOption("#job-format", "parquet");
  assert.equal(await page.inputValue("#job-compression"), "identity");
  await page.click("#job-start");
  const parquetHref = await page
    .waitForSelector("#jobs li:first-child a", { timeout: 60_000 })
    .then((a) => a.getAttribute("href"));
  const parquetJob = await page.evaluate(async (href) => {
    const response = await fetch(href);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const text = (part) => String.fromCharCode(...part);
    return [response.headers.get("content-type"), text(bytes.slice(0, 4)), text(bytes.slice(-4))];
  }, parquetHref);
  assert.deepEqual(parquetJob, ["application/vnd.apache.parquet", "PAR1", "PAR1"]);
  await page.close();
}

// -----------------------------------------------------------------------------------------------------------
// 1b. A summary from the query builder: a count and an aliased sum of the filtered rows, as Postgres has them.
{
  const page = await livePage(base, "numbers");
  assert.ok(await page.isVisible("#summary"), "the aggregates panel shows for a dataset with aggregates on");
  await page.click("#add-filter");
  await page.selectOption("#filters .clause select >> nth=0", "id");
  await page.selectOption("#filters .clause select >> nth=1", "lte");
  await page.fill("#filters .value", "5000");
  await page.click("#add-aggregate");
  await page.click("#add-aggregate");
  const second = page.locator("#aggregates .clause").nth(1);
  await second.locator("select").nth(0).selectOption("sum");
  await second.locator("select").nth(1).selectOption("amount");
  await second.locator(".alias").fill("total");
  assert.equal(
    await page.textContent("#url"),
    "/v1/datasets/numbers/rows?select=count(),total:amount.sum()&id=lte.5000",
  );
  await page.click("#stream");
  await until("the summary to stream", async () => (await state(page)) === "complete");
  const head = await page.$$eval("#grid-head > div", (cells) => cells.map((c) => c.textContent));
  assert.deepEqual(head, ["count", "total"]);
  const cells = await page.$$eval("#window .grid-row > div", (cells) => cells.map((c) => c.textContent));
  const expected = execFileSync("psql", ["-XAtc", "SELECT count(*), sum(amount) FROM numbers WHERE id <= 5000"], {
    encoding: "utf8",
  })
    .trim()
    .split("|");
  assert.deepEqual(cells.map(Number), expected.map(Number));
  await page.close();
}

// -----------------------------------------------------------------------------------------------------------
// 2. From another origin: the allowed one reads (preflighted too, with exposed headers); the other is blocked.
const allowed = await origin(allowedPort);
const blocked = await origin(blockedPort);
async function crossOrigin(port) {
  const page = await open(`http://127.0.0.1:${port}/`);
  const result = await page.evaluate(async (base) => {
    const url = `${base}/v1/datasets/numbers/rows?limit=3&format=json`;
    const attempt = async (init) => {
      try {
        const response = await fetch(url, init);
        return { status: response.status, total: response.headers.get("x-total-count"), rows: (await response.json()).length };
      } catch (error) {
        return { blocked: error.name };
      }
    };
    return { simple: await attempt({}), preflighted: await attempt({ headers: { Prefer: "count=exact" } }) };
  }, base);
  await page.close();
  return result;
}
assert.deepEqual(await crossOrigin(allowedPort), {
  simple: { status: 200, total: null, rows: 3 },
  preflighted: { status: 200, total: String(TOTAL), rows: 3 },
});
assert.deepEqual(await crossOrigin(blockedPort), {
  simple: { blocked: "TypeError" },
  preflighted: { blocked: "TypeError" },
});

// -----------------------------------------------------------------------------------------------------------
// 3. A page (on the allowed origin) that only counts the client's rows keeps its JS heap flat.
{
  const page = await open(`http://127.0.0.1:${allowedPort}/`);
  const result = await bounded(
    "counting a million rows",
    page.evaluate(async (base) => {
      const { rows } = await import(`${base}/v1/client.js`);
      const heap = [];
      let count = 0;
      let previous = 0;
      let inOrder = true;
      for await (const row of rows(`${base}/v1/datasets/numbers/rows`)) {
        count += 1;
        inOrder &&= row.id === previous + 1;
        previous = row.id;
        if (count % 100_000 === 0) {
          globalThis.gc();
          heap.push(performance.memory.usedJSHeapSize);
        }
      }
      return { count, inOrder, heap };
    }, base),
    120_000,
  );
  assert.equal(result.count, TOTAL);
  assert.ok(result.inOrder);
  const mib = (bytes) => Math.round((bytes / 2 ** 20) * 100) / 100;
  // Flat, not constant: what sits in the body's stream queue when a sample is taken varies (by up to ~15 MiB
  // on a loaded machine), but nothing accumulates. Keeping even one row object in two over the 900,000 rows
  // between the first sample and the last would add over 40 MiB.
  const spread = Math.max(...result.heap) - Math.min(...result.heap);
  assert.ok(spread < 24 * 2 ** 20, `the heap moved ${mib(spread)} MiB: ${result.heap}`);
  Object.assign(figures, {
    heap_at_100k_mib: mib(result.heap[0]),
    heap_at_1m_mib: mib(result.heap.at(-1)),
    heap_spread_mib: mib(spread),
    heap_samples_mib: result.heap.map(mib),
  });
  await page.close();
}

// -----------------------------------------------------------------------------------------------------------
// 4. Cancel frees the Postgres backend at once: the export would run for a minute more (0.05 ms a row over a
// million rows). Here it takes well under a second; the bound allows a loaded machine twenty times that, and
// still tells a cancelled query from one left to run.
{
  const page = await livePage(base, "slow_numbers");
  await page.click("#stream");
  await page.waitForSelector("#window .grid-row");
  await until("the export's backend", () => busyBackends() > 0);
  const clicked = Date.now();
  await page.click("#cancel");
  await until("the backend to be freed", () => busyBackends() === 0, 20_000, 20);
  const freed = Date.now() - clicked;
  assert.ok(freed < 20_000, `backend freed ${freed} ms after Cancel`);
  assert.equal(await state(page), "cancelled");
  assert.ok((await count(page)) < TOTAL);
  figures.cancel_freed_backend_ms = freed;
  await page.close();
}

// -----------------------------------------------------------------------------------------------------------
// 5. A connection cut mid-stream: the client and the live page resume, every row exactly once.
const cutter = await cuttingProxy(base);
{
  const page = await livePage(cutter.url, "numbers");
  cutter.cutNext(1 << 20);
  const result = await bounded(
    "the client through a cut",
    page.evaluate(async () => {
      const { rows } = await import("/v1/client.js");
      let count = 0;
      let previous = 0;
      let inOrder = true;
      let resumed = 0;
      for await (const row of rows("/v1/datasets/numbers/rows", { onResume: () => (resumed += 1) })) {
        count += 1;
        inOrder &&= row.id === previous + 1;
        previous = row.id;
      }
      return { count, inOrder, resumed };
    }),
    120_000,
  );
  assert.equal(cutter.state.cuts, 1);
  assert.deepEqual(result, { count: TOTAL, inOrder: true, resumed: 1 });

  cutter.cutNext(1 << 20);
  await page.click("#stream");
  await until("the live page to complete", async () => (await state(page)) === "complete", 120_000, 100);
  assert.equal(cutter.state.cuts, 2);
  assert.equal(await count(page), TOTAL);
  assert.equal(await page.textContent("#resumed"), "resumed 1×");
  const kept = await page.evaluate(() => document.querySelector("#window .grid-row > div").textContent);
  assert.equal(kept, "1");
  await page.close();
}

// -----------------------------------------------------------------------------------------------------------
// 6. EventSource over format=sse, with a forced reconnect: every row once, and it stops at `end`.
{
  const page = await open(`${cutter.url}/healthz`);
  const before = cutter.state.requests.length;
  cutter.cutNext(1 << 20);
  const result = await bounded(
    "the event stream",
    page.evaluate(
      () =>
        new Promise((resolve, reject) => {
          const source = new EventSource("/v1/datasets/numbers/rows?format=sse");
          let count = 0;
          let previous = 0;
          let inOrder = true;
          let errors = 0;
          let progress = 0;
          source.onmessage = (event) => {
            for (const line of event.data.split("\n")) {
              const row = JSON.parse(line);
              count += 1;
              inOrder &&= row.id === previous + 1;
              previous = row.id;
            }
          };
          source.addEventListener("progress", () => (progress += 1));
          source.onerror = () => {
            errors += 1;
            if (errors > 3) {
              source.close();
              reject(new Error(`${errors} errors`));
            }
          };
          source.addEventListener("end", () => {
            source.close();
            resolve({ count, inOrder, reconnects: errors, sawProgress: progress > 0 });
          });
        }),
    ),
    120_000,
  );
  assert.deepEqual(result, { count: TOTAL, inOrder: true, reconnects: 1, sawProgress: true });
  // Closed at `end`: no further request comes.
  await new Promise((resolve) => setTimeout(resolve, 2500));
  const requests = cutter.state.requests.slice(before);
  assert.equal(requests.length, 2, JSON.stringify(requests));
  assert.equal(requests[0].headers["last-event-id"], undefined);
  // The id is a signed resume token; its payload (base64url JSON) says how many rows came before the cut.
  const token = requests[1].headers["last-event-id"] ?? "";
  assert.match(token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
  const payload = JSON.parse(Buffer.from(token.split(".")[0], "base64url").toString());
  assert.ok(payload.n > 0 && payload.n < TOTAL, JSON.stringify(payload));
  figures.sse_resumed_after_rows = payload.n;
  await page.close();
}

assert.deepEqual(uncaught, []);
cutter.close();
allowed.close();
blocked.close();
await browser.close();
console.log(JSON.stringify(figures));
console.log("ok");
process.exit(0);
