// The README's screenshot of the live page: the demo's `orders`, filtered, mid-stream.
// Usage (with scripts/demo.sh running): node tests/browser/screenshot.mjs http://127.0.0.1:8080 docs/live-page.png
import { chromium } from "playwright-core";

const [base, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.PGSPOUT_CHROMIUM || "/usr/bin/chromium",
  args: ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1360, height: 760 } });
await page.goto(`${base}/#orders`);
await page.waitForSelector('#dataset option[value="orders"]', { state: "attached" });
await page.click("#add-filter");
await page.selectOption("#filters .clause select >> nth=0", "amount");
await page.selectOption("#filters .clause select >> nth=1", "gt");
await page.fill("#filters .value", "100");
await page.click("#add-order");
await page.selectOption("#order .clause select >> nth=0", "id");
await page.uncheck('#columns input[value="email"]');
await page.click("#stream");
await page.waitForSelector("#window .grid-row");
await page.waitForTimeout(400);
await page.screenshot({ path: out });
await page.click("#cancel");
await browser.close();
