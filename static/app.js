// pgspout's live page: pick a dataset, build a query from the catalog, and watch the rows stream into a
// virtualized table. Served by pgspout at / (this file at /assets/app.js); it uses the same client as any
// other page (/v1/client.js). No framework, no build step.
import { rows, startExport, waitForExport, PgspoutError } from "/v1/client.js";

/** Rows the table keeps for scrolling; counting, progress and downloads go on past it. */
const RETAINED = 100_000;
/** Row height in pixels (the CSS's --row) and rows rendered beyond each edge of the viewport. */
const ROW = 24;
const OVERSCAN = 8;
/** How long the stream may hold the main thread before letting the browser paint and take clicks. */
const SLICE_MS = 25;
const OPERATORS = ["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is"];
const CODINGS = ["identity", "gzip", "zstd", "br"];
/** The output formats as the server describes them (GET /v1/formats), but the event stream: this page's own. */
let formats = [];

const $ = (id) => document.getElementById(id);
const number = new Intl.NumberFormat("en");

function element(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

function select(options, value) {
  const node = element("select");
  for (const option of options) node.append(element("option", { value: option, textContent: option }));
  if (value !== undefined) node.value = value;
  return node;
}

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

const yieldToBrowser = globalThis.scheduler?.yield
  ? () => globalThis.scheduler.yield()
  : () => new Promise((resolve) => setTimeout(resolve, 0));

// ---------------------------------------------------------------------------------------------------------
// The catalog and the query builder

let catalog = [];
let dataset = null;

/** The formats, once: the downloads table and the export panel's choices. */
async function loadFormats() {
  const response = await fetch("/v1/formats");
  if (!response.ok) return;
  formats = (await response.json()).formats.filter((f) => f.media_type !== "text/event-stream");
  const jobs = formats.filter((f) => f.job);
  $("job-format").replaceChildren(...jobs.map((f) => element("option", { value: f.name, textContent: f.name })));
  $("job-format").addEventListener("change", jobFormatChosen);
  jobFormatChosen();
}

/** A job format that compresses itself takes no compression. */
function jobFormatChosen() {
  const format = formats.find((f) => f.name === $("job-format").value);
  const compressible = format?.compressible ?? true;
  for (const option of $("job-compression").options) option.disabled = !compressible && option.value !== "identity";
  if (!compressible) $("job-compression").value = "identity";
}

async function loadCatalog() {
  showProblem(null);
  const response = await fetch("/v1/datasets", { headers: authHeaders() });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ status: response.status, title: response.statusText }));
    showProblem(new PgspoutError(problem, response));
    catalog = [];
  } else {
    catalog = (await response.json()).datasets;
  }
  const picker = $("dataset");
  const wanted = decodeURIComponent(location.hash.slice(1)) || dataset?.name;
  picker.replaceChildren(...catalog.map((d) => element("option", { value: d.name, textContent: d.name })));
  if (catalog.some((d) => d.name === wanted)) picker.value = wanted;
  chooseDataset();
}

function chooseDataset() {
  dataset = catalog.find((d) => d.name === $("dataset").value) || null;
  $("columns").replaceChildren(
    ...(dataset?.columns ?? []).map((column) =>
      element(
        "label",
        { title: `${column.type}${column.nullable ? "" : ", not null"}` },
        element("input", { type: "checkbox", checked: true, value: column.name, onchange: update }),
        ` ${column.name}`,
      ),
    ),
  );
  $("filters").replaceChildren();
  $("aggregates").replaceChildren();
  $("summary").hidden = !dataset?.aggregates;
  $("order").replaceChildren();
  $("estimate").textContent =
    dataset?.estimated_rows != null ? `about ${number.format(dataset.estimated_rows)} rows` : "";
  if (dataset) history.replaceState(null, "", `#${encodeURIComponent(dataset.name)}`);
  update();
}

function columnNames() {
  return dataset.columns.map((c) => c.name);
}

function addFilter() {
  if (!dataset) return;
  const remove = element("button", { type: "button", textContent: "×", title: "Remove", onclick: () => clause.remove() });
  const clause = element(
    "div",
    { className: "clause filter" },
    select(columnNames()),
    element("label", { title: "Negate" }, element("input", { type: "checkbox", className: "not" }), "not"),
    select(OPERATORS),
    element("input", { type: "text", placeholder: "value", className: "value" }),
    remove,
  );
  const [, operator] = clause.querySelectorAll("select");
  operator.addEventListener("change", () => {
    clause.querySelector(".value").placeholder = { in: "a,b,\"c,d\"", is: "null, true or false" }[operator.value] ?? "value";
  });
  remove.addEventListener("click", update);
  clause.addEventListener("input", update);
  clause.addEventListener("change", update);
  $("filters").append(clause);
  update();
}

const FUNCTIONS = ["count", "sum", "avg", "min", "max"];
/** `count` of rows rather than of a column's values. */
const ROWS = "(rows)";

/** The columns whose type has `fn` (from the catalog). */
function columnsFor(fn) {
  const columns = dataset.columns.filter((c) => (c.aggregates ?? []).includes(fn)).map((c) => c.name);
  return fn === "count" ? [ROWS, ...columns] : columns;
}

/** A summary's aggregate: a function, its column, an optional alias. The first one unchecks every column, so
 * that the columns checked afterwards are the groups. */
function addAggregate() {
  if (!dataset) return;
  if ($("aggregates").children.length === 0) {
    for (const box of $("columns").querySelectorAll("input")) box.checked = false;
  }
  const remove = element("button", { type: "button", textContent: "×", title: "Remove", onclick: () => clause.remove() });
  const fn = select(FUNCTIONS);
  const column = select(columnsFor("count"));
  const alias = element("input", { type: "text", placeholder: "count", className: "alias", title: "Name (alias)" });
  fn.addEventListener("change", () => {
    column.replaceChildren(...columnsFor(fn.value).map((name) => element("option", { value: name, textContent: name })));
    alias.placeholder = fn.value;
  });
  const clause = element("div", { className: "clause aggregate" }, fn, column, alias, remove);
  remove.addEventListener("click", update);
  clause.addEventListener("input", update);
  clause.addEventListener("change", update);
  $("aggregates").append(clause);
  update();
}

/** The aggregates chosen: each one's `select` item and output name. */
function aggregates() {
  return [...$("aggregates").children].map((clause) => {
    const [fn, column] = clause.querySelectorAll("select");
    const alias = clause.querySelector(".alias").value.trim();
    const call = column.value === ROWS || !column.value ? `${fn.value}()` : `${column.value}.${fn.value}()`;
    return { item: alias ? `${alias}:${call}` : call, name: alias || fn.value };
  });
}

function addOrder() {
  if (!dataset) return;
  const remove = element("button", { type: "button", textContent: "×", title: "Remove", onclick: () => clause.remove() });
  const names = [...columnNames(), ...aggregates().map((a) => a.name)];
  const clause = element("div", { className: "clause order" }, select(names), select(["asc", "desc"]), remove);
  remove.addEventListener("click", update);
  clause.addEventListener("change", update);
  $("order").append(clause);
  update();
}

/** The query string of the current choices; `job` leaves out what only /rows takes. */
function query({ job = false } = {}) {
  const params = new URLSearchParams();
  const chosen = [...$("columns").querySelectorAll("input:checked")].map((c) => c.value);
  const summary = aggregates();
  if (summary.length) params.set("select", [...chosen, ...summary.map((a) => a.item)].join(","));
  else if (chosen.length !== dataset.columns.length) params.set("select", chosen.join(","));
  for (const clause of $("filters").children) {
    const [column, operator] = clause.querySelectorAll("select");
    let value = clause.querySelector(".value").value;
    if (operator.value === "in" && !value.startsWith("(")) value = `(${value})`;
    const negated = clause.querySelector(".not").checked ? "not." : "";
    params.append(column.value, `${negated}${operator.value}.${value}`);
  }
  const order = [...$("order").children].map((clause) => {
    const [column, direction] = clause.querySelectorAll("select");
    return `${column.value}.${direction.value}`;
  });
  if (order.length) params.set("order", order.join(","));
  if ($("limit").value !== "") params.set("limit", $("limit").value);
  // A summary is read in one snapshot.
  if (!job && !summary.length && $("consistency").value) params.set("consistency", $("consistency").value);
  return params.toString();
}

function chosenColumns() {
  const chosen = new Set([...$("columns").querySelectorAll("input:checked")].map((c) => c.value));
  return dataset.columns.map((c) => c.name).filter((name) => chosen.has(name));
}

/** The columns of the result: the chosen ones, then the aggregates'. */
function outputColumns() {
  return [...chosenColumns(), ...aggregates().map((a) => a.name)];
}

/** Whether a cut transfer can resume with `after`: key order, and the key among the columns. */
function resumable() {
  const order = [...$("order").children].map((clause) => [...clause.querySelectorAll("select")].map((s) => s.value));
  const keyOrder = order.length === 0 || (order.length === 1 && order[0][0] === dataset.key && order[0][1] === "asc");
  const summary = aggregates().length > 0;
  return dataset.key != null && !summary && keyOrder && chosenColumns().includes(dataset.key);
}

function rowsUrl(extra = "") {
  const q = [query(), extra].filter(Boolean).join("&");
  return `/v1/datasets/${encodeURIComponent(dataset.name)}/rows${q ? `?${q}` : ""}`;
}

function update() {
  const ready = dataset != null;
  $("stream").disabled = !ready;
  $("job-start").disabled = !ready;
  if (!ready) {
    $("url").textContent = "";
    $("downloads").replaceChildren();
    return;
  }
  $("url").textContent = decodeURIComponent(rowsUrl());
  const head = element("tr", {}, element("th"), ...CODINGS.map((c) => element("th", { textContent: c === "identity" ? "plain" : c })));
  const body = formats.map((format) =>
    element(
      "tr",
      {},
      element("th", { textContent: format.name }),
      ...CODINGS.map((coding) => {
        // A format that compresses itself (Parquet) has only its plain file.
        if (coding !== "identity" && !format.compressible) return element("td");
        const extra = `format=${format.name}${coding === "identity" ? "" : `&compression=${coding}`}`;
        const suffix = { identity: "", gzip: ".gz", zstd: ".zst", br: ".br" }[coding];
        const file = `${dataset.name}.${format.extension}${suffix}`;
        return element(
          "td",
          {},
          element("a", {
            href: rowsUrl(extra),
            download: file,
            title: file,
            textContent: "↓",
          }),
        );
      }),
    ),
  );
  $("downloads").replaceChildren(head, ...body);
}

function showProblem(error) {
  const box = $("problem");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  const id = error.requestId ? ` (request ${error.requestId})` : "";
  box.textContent =
    error instanceof PgspoutError
      ? `${error.status ? `${error.status} ` : ""}${error.title}: ${error.detail}${id}`
      : String(error);
}

// ---------------------------------------------------------------------------------------------------------
// The stream and the virtualized table

/** The transfer under way or last finished: its rows (up to RETAINED), counts and timings. */
let run = null;
let scheduled = false;

function setStatus(state, text = state) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

async function stream() {
  if (!dataset) return;
  run?.controller.abort();
  const columns = outputColumns();
  const current = {
    controller: new AbortController(),
    columns,
    rows: [],
    count: 0,
    total: null,
    resumed: 0,
    started: performance.now(),
    ended: null,
    samples: [],
    rendered: null,
  };
  run = current;
  showProblem(null);
  setStatus("streaming", "streaming…");
  $("cancel").disabled = false;
  $("viewport").scrollTop = 0;
  $("grid").style.setProperty("--columns", `repeat(${columns.length}, minmax(110px, 1fr))`);
  $("grid-head").replaceChildren(...columns.map((name) => element("div", { textContent: name, role: "columnheader" })));
  $("window").replaceChildren();
  for (const mark of ["pgspout:start", "pgspout:first-row", "pgspout:end"]) performance.clearMarks(mark);
  performance.mark("pgspout:start");
  let slice = performance.now();
  try {
    const options = {
      signal: current.controller.signal,
      prefer: "count=estimated",
      headers: authHeaders(),
      resume: resumable(),
      key: dataset.key ?? undefined,
      onProgress: ({ total }) => (current.total = total),
      onResume: () => (current.resumed += 1),
    };
    for await (const row of rows(rowsUrl(), options)) {
      current.count += 1;
      if (current.rows.length < RETAINED) current.rows.push(row);
      schedule();
      if (performance.now() - slice > SLICE_MS) {
        await yieldToBrowser();
        slice = performance.now();
      }
    }
    current.ended = performance.now();
    performance.mark("pgspout:end");
    if (run === current) setStatus("complete");
  } catch (error) {
    current.ended = performance.now();
    if (run === current) {
      if (current.controller.signal.aborted) {
        setStatus("cancelled");
      } else {
        setStatus("failed");
        showProblem(error);
      }
    }
  } finally {
    if (run === current) $("cancel").disabled = true;
    schedule();
  }
}

function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(render);
}

function cell(value) {
  if (value === null || value === undefined) return element("div", { className: "null", textContent: "null" });
  const text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return element("div", { textContent: text, title: text.length > 40 ? text : "" });
}

function render() {
  scheduled = false;
  if (!run) return;
  const now = performance.now();
  const { count, total } = run;
  const elapsed = ((run.ended ?? now) - run.started) / 1000;
  // Rows per second over the last second while streaming; the average once done.
  run.samples.push([now, count]);
  while (run.samples.length > 2 && now - run.samples[0][0] > 1000) run.samples.shift();
  const [t0, c0] = run.samples[0];
  const rate = run.ended ? count / Math.max(elapsed, 0.001) : ((count - c0) * 1000) / Math.max(now - t0, 1);
  $("count").textContent = number.format(count);
  $("total").textContent = total != null ? ` of about ${number.format(total)}` : "";
  $("rate").textContent = number.format(Math.round(rate));
  $("elapsed").textContent = elapsed.toFixed(1);
  $("resumed").textContent = run.resumed ? `resumed ${run.resumed}×` : "";
  $("retained").textContent =
    count > run.rows.length ? `table keeps the first ${number.format(run.rows.length)} rows` : "";
  const progress = $("progress");
  if (run.ended && $("status").dataset.state === "complete") progress.value = 1;
  else if (total) progress.value = Math.min(count / total, 1);
  else progress.removeAttribute("value");

  // The table: a spacer as tall as every retained row, and only the rows in view (plus a margin) in the DOM.
  const viewport = $("viewport");
  $("spacer").style.height = `${run.rows.length * ROW}px`;
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW) - OVERSCAN);
  const last = Math.min(run.rows.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW) + OVERSCAN);
  const key = `${first}:${last}`;
  if (run.rendered !== key) {
    run.rendered = key;
    const win = $("window");
    win.style.transform = `translateY(${first * ROW}px)`;
    const lines = [];
    for (let i = first; i < last; i += 1) {
      const row = run.rows[i];
      lines.push(element("div", { className: "grid-row", role: "row" }, ...run.columns.map((name) => cell(row[name]))));
    }
    win.replaceChildren(...lines);
    if (lines.length && performance.getEntriesByName("pgspout:first-row").length === 0) {
      performance.mark("pgspout:first-row");
    }
  }
  $("grid-head").scrollLeft = viewport.scrollLeft;
}

// ---------------------------------------------------------------------------------------------------------
// Background exports

async function startJob() {
  if (!dataset) return;
  const format = $("job-format").value;
  const compression = $("job-compression").value;
  const item = element("li", { textContent: `${dataset.name}.${format}: starting…` });
  $("jobs").prepend(item);
  const controller = new AbortController();
  try {
    const statusUrl = await startExport(
      "",
      { dataset: dataset.name, format, compression, query: query({ job: true }) },
      { headers: authHeaders(), signal: controller.signal },
    );
    const label = element("div");
    const bar = element("progress");
    const cancel = element("button", {
      type: "button",
      textContent: "Cancel",
      onclick: async () => {
        cancel.disabled = true;
        await fetch(statusUrl, { method: "DELETE", headers: authHeaders() });
      },
    });
    item.replaceChildren(label, bar, cancel);
    const download = await waitForExport(statusUrl, {
      headers: authHeaders(),
      signal: controller.signal,
      interval: 500,
      onStatus: (status) => {
        label.textContent = `${status.dataset}.${status.format}${compression === "identity" ? "" : ` (${compression})`}: ${status.status}, ${number.format(status.rows_written ?? 0)} rows, ${number.format(status.bytes_written ?? 0)} bytes`;
      },
    });
    cancel.remove();
    bar.value = 1;
    bar.max = 1;
    item.append(element("a", { href: download, download: "", textContent: "Download" }));
  } catch (error) {
    item.append(element("div", { className: "problem", textContent: error.detail || error.message || String(error) }));
  }
}

// ---------------------------------------------------------------------------------------------------------

$("token").value = sessionStorage.getItem("pgspout-token") ?? "";
$("token-form").addEventListener("submit", (event) => event.preventDefault());
$("token").addEventListener("change", () => {
  sessionStorage.setItem("pgspout-token", $("token").value);
  loadCatalog();
});
$("dataset").addEventListener("change", chooseDataset);
$("add-filter").addEventListener("click", addFilter);
$("add-order").addEventListener("click", addOrder);
$("add-aggregate").addEventListener("click", addAggregate);
$("limit").addEventListener("input", update);
$("consistency").addEventListener("change", update);
$("columns").addEventListener("change", update);
$("stream").addEventListener("click", stream);
$("cancel").addEventListener("click", () => run?.controller.abort());
$("job-start").addEventListener("click", startJob);
$("viewport").addEventListener("scroll", schedule, { passive: true });
window.addEventListener("resize", schedule);
loadFormats().then(loadCatalog);
