// Makes the README's demo screenshot (docs/demo.png) with the bundled default model: the real
// server binary, a collection of the held-out OpenMoji sample (every picture, a few items of
// each other modality, a few texts) and a text search in headless Chromium.
//
//   cargo build --locked && cd tests/e2e && npm ci && npm run screenshot
//
// Environment: OMNIBIND_BIN (default: the debug binary under CARGO_TARGET_DIR or target/),
// CHROMIUM (default /usr/bin/chromium), DEMO_SCREENSHOT (default docs/demo.png).

import fs from "node:fs";
import path from "node:path";
import { repo, launchChromium, startServer } from "./harness.mjs";

const sample = path.join(repo, "tests/fixtures/openmoji-heldout-sample");
const out = path.resolve(process.env.DEMO_SCREENSHOT || path.join(repo, "docs/demo.png"));

const COLLECTION = "emoji";
const QUERY = "a picture of a person surfing";
const MAX_BYTES = 300 * 1024;
// A few items of the other modalities, by hexcode.
const AUDIO = ["1F415", "1F6A4", "1F3C4"];
const DEPTH = ["1F3E0", "1F695"];
const THERMAL = ["1F99D", "1F3C3-200D-2640-FE0F"];
const IMU = ["1F9D7", "1F683"];
// Text items: annotations.
const TEXTS = ["1F415", "1F6A4", "1F3E0"];

const manifest = fs.readFileSync(path.join(sample, "manifest.jsonl"), "utf8")
  .split("\n").filter(Boolean).map((l) => JSON.parse(l));
const byHex = new Map(manifest.map((m) => [m.hexcode, m]));

let stopServer;
let browser;

async function waitReady(base) {
  const deadline = Date.now() + 300_000;
  for (;;) {
    try {
      if ((await fetch(`${base}/readyz`)).ok) return;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error("the server never became ready");
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function call(base, route, init) {
  const resp = await fetch(`${base}${route}`, init);
  const body = await resp.text();
  if (!resp.ok) throw new Error(`${init?.method || "GET"} ${route}: ${resp.status} ${body}`);
  return body ? JSON.parse(body) : null;
}

// One multipart upload: fields in order file, id, modality, metadata per item.
async function upload(base, items) {
  const form = new FormData();
  for (const it of items) {
    const bytes = fs.readFileSync(path.join(sample, it.file));
    form.append("file", new Blob([bytes]), path.basename(it.file));
    form.append("id", it.id);
    if (it.modality) form.append("modality", it.modality);
    form.append("metadata", JSON.stringify(it.metadata));
  }
  const res = await call(base, `/v1/collections/${COLLECTION}/items`, { method: "POST", body: form });
  return res.items.length;
}

async function fill(base) {
  await call(base, "/v1/collections", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: COLLECTION, model: "default" }),
  });
  const meta = (m) => ({ annotation: m.annotation });
  let n = await upload(base, manifest.map((m) => ({ file: m.image, id: m.hexcode, metadata: meta(m) })));
  n += await upload(base, [
    ...AUDIO.map((h) => byHex.get(h)).map((m) =>
      ({ file: m.audio[0].path, id: `${m.hexcode}-audio`, modality: "audio", metadata: meta(m) })),
    ...DEPTH.map((h) => byHex.get(h)).map((m) =>
      ({ file: m.depth, id: `${m.hexcode}-depth`, modality: "depth", metadata: meta(m) })),
    ...THERMAL.map((h) => byHex.get(h)).map((m) =>
      ({ file: m.thermal, id: `${m.hexcode}-thermal`, modality: "thermal", metadata: meta(m) })),
    ...IMU.map((h) => byHex.get(h)).map((m) =>
      ({ file: m.imu[0], id: `${m.hexcode}-imu`, modality: "imu", metadata: meta(m) })),
  ]);
  const res = await call(base, `/v1/collections/${COLLECTION}/items`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ items: TEXTS.map((h) => byHex.get(h)).map((m) =>
      ({ id: `${m.hexcode}-text`, text: m.annotation, metadata: meta(m) })) }),
  });
  return n + res.items.length;
}

async function main() {
  const started = await startServer({
    tmpPrefix: "omnibind-shot-",
    name: "default",
    modelPath: path.join(repo, "models/default"),
    timeoutMs: 300_000,
  });
  stopServer = started.stop;
  const { base } = started;
  await waitReady(base);
  const count = await fill(base);
  console.log(`${count} items in collection ${COLLECTION}`);

  browser = await launchChromium();
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(180_000);
  await page.goto(base);
  await page.waitForSelector(`#collection option[value="${COLLECTION}"]`, { state: "attached" });
  await page.selectOption("#collection", COLLECTION);
  await page.waitForSelector("#counts .model");
  await page.fill("#q", QUERY);
  await page.click("#search-button");
  await page.waitForSelector("#status:not(.loading)");
  await page.locator("#results .card").first().waitFor();
  await page.waitForFunction(() => !document.querySelector("#results .loading")
    && [...document.querySelectorAll("#results .card img")].every((i) => i.complete && i.naturalWidth > 0));
  const first = await page.locator("#results .card").first().getAttribute("data-id");
  if (first !== "1F3C4") console.warn(`warning: the first result is ${first}, not 1F3C4 (person surfing)`);
  await page.evaluate(() => document.activeElement?.blur());

  fs.mkdirSync(path.dirname(out), { recursive: true });
  await page.screenshot({ path: out, fullPage: true });
  if (fs.statSync(out).size > MAX_BYTES) {
    await page.screenshot({ path: out, type: "png", clip: { x: 0, y: 0, width: 1280, height: 1000 } });
  }
  console.log(`screenshot saved to ${out} (${fs.statSync(out).size} bytes)`);
}

try {
  await main();
} finally {
  await browser?.close();
  await stopServer?.();
}
