// End-to-end test of the browser demo: the real server binary with the ImageBind test model
// (random weights, every modality), driven in headless Chromium by playwright-core.
//
//   cargo build --locked && cd tests/e2e && npm ci && npm test
//
// Environment: OMNIBIND_BIN (default: the debug binary under CARGO_TARGET_DIR or target/),
// CHROMIUM (default /usr/bin/chromium), E2E_SCREENSHOTS (default tests/e2e/screenshots).
// Rankings are made deterministic by querying with stored content: a stored item's own vector
// scores 1 and comes first whatever the weights.
//
// What each step covers:
//   collections     pick/create with a model of /v1/models, counts per modality: steps 1-3, 10
//   upload          many files with progress and per-file status, metadata, modality override: 2;
//                   text items: 3; files dropped at once and a whole folder (paths, duplicates,
//                   .npy sent as IMU or depth): 13; per-file server error: 11
//   search          typed text: 5; a file (the same stored file first): 6; more like this,
//                   weighted terms with a negative weight, modality and metadata filters: 7;
//                   a microphone recording encoded as WAV (Chromium's fake microphone): 8
//   results         previews per modality (image, audio player + waveform, depth/thermal colour
//                   maps, IMU plots, text snippet, video first frame), score and badge: 4, 13
//   detail          original link, metadata, zero-shot labels against typed labels: 9
//   delete          an item from its card, counts updated: 10
//   states          loading / empty / server error shown in the page: 11, 12; phone width: 14
//   browsing        the collection a page at a time: 4, 15
//   API keys        the server runs with an admin and a read-only key: the page asks for a key
//                   on the first 401, says when one is wrong, sends it on every call (uploads,
//                   previews and the original's link included): 1, 9; the read-only key
//                   searches but its uploads are refused with the server's message: 16; a
//                   server without keys never asks: the last test

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { here, repo, launchChromium, startServer } from "./harness.mjs";

const fixtures = path.join(repo, "tests/fixtures");
const shots = path.resolve(process.env.E2E_SCREENSHOTS || path.join(here, "screenshots"));

const files = {
  image: path.join(fixtures, "clip/images/webp_lossy_333x333.webp"),
  audio: path.join(fixtures, "imagebind/audio/speech_16k_mono_s16_0.9s.wav"),
  imu: path.join(fixtures, "imagebind/imu/walk1_t_1000x7.csv"),
  depth: path.join(fixtures, "imagebind/depth/room1_291x240_mm.png"),
  thermal: path.join(fixtures, "imagebind/thermal/person0_224x224_16bit.png"),
  video: path.join(fixtures, "imagebind/video/squares_320x240_24fps.zip"),
};
const CAPTION = "a red bicycle leaning against a brick wall";
const KEYS = { admin: "e2e-admin-key-0123456789", read: "e2e-read-key-0123456789" };

let tmp;
let stopServer;
let base;
let browser;
let page;
const pageErrors = [];

async function shot(name) {
  const file = path.join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

const firstCard = () => page.locator("#results .card").first();

async function search({ text = "", terms = [] } = {}) {
  await page.fill("#q", text);
  await page.click("#search-button");
  await page.waitForSelector("#status:not(.loading)");
  await page.locator("#results .card").first().waitFor();
}

before(async () => {
  fs.mkdirSync(shots, { recursive: true });
  console.log(`screenshots: ${shots}`);
  ({ base, tmp, stop: stopServer } = await startServer({
    tmpPrefix: "omnibind-e2e-",
    name: "imagebind",
    modelPath: path.join(fixtures, "imagebind/models/imagebind-tiny"),
    device: "cpu",
    keys: KEYS,
    timeoutMs: 120_000,
  }));
  browser = await launchChromium([
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
  ]);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(["microphone"], { origin: base });
  page = await context.newPage();
  page.setDefaultTimeout(60_000);
  page.on("pageerror", (e) => pageErrors.push(e.message));
});

after(async () => {
  await browser?.close();
  await stopServer?.();
});

test("browser demo", async (t) => {
  await t.test("asks for the API key, and again when it is wrong", async () => {
    await page.goto(base);
    await page.waitForSelector("#key-dialog[open]");
    assert.match(await page.textContent("#key-message"), /needs an API key/);
    await page.fill("#key-input", "not-a-valid-key-000000");
    await page.click("#key-form button[type=submit]");
    await page.waitForFunction(() =>
      /not valid/.test(document.querySelector("#key-message").textContent)
      && document.querySelector("#key-dialog").open);
    await shot("00-key");
    await page.fill("#key-input", KEYS.admin);
    await page.click("#key-form button[type=submit]");
    await page.waitForSelector("#key-dialog:not([open])", { state: "attached" });
    assert.equal(await page.isVisible("#key-button"), true);
  });

  await t.test("creates a collection with a model of /v1/models", async () => {
    await page.waitForSelector("#create-form:not([hidden])");
    await shot("01-first-visit");
    await page.fill("#create-name", "demo");
    await page.selectOption("#create-model", "imagebind");
    await page.click("#create-form button[type=submit]");
    await page.waitForSelector("#counts .model:text('imagebind')");
    assert.equal(await page.inputValue("#collection"), "demo");
  });

  await t.test("uploads image, audio, IMU, depth, thermal and video files with progress", async () => {
    await page.setInputFiles("#file-input", [files.image, files.audio, files.imu]);
    await page.waitForFunction(() => document.querySelectorAll('#uploads li[data-state="done"]').length === 3);
    await page.selectOption("#upload-modality", "depth");
    await page.setInputFiles("#file-input", [files.depth]);
    await page.waitForFunction(() => document.querySelectorAll('#uploads li[data-state="done"]').length === 4);
    await page.selectOption("#upload-modality", "thermal");
    await page.fill("#upload-meta", '{"camera": "lwir"}');
    await page.setInputFiles("#file-input", [files.thermal]);
    await page.waitForFunction(() => document.querySelectorAll('#uploads li[data-state="done"]').length === 5);
    await page.selectOption("#upload-modality", "");
    await page.fill("#upload-meta", "");
    await page.setInputFiles("#file-input", [files.video]);
    await page.waitForFunction(() => document.querySelectorAll('#uploads li[data-state="done"]').length === 6);
    for (const m of ["image", "audio", "imu", "depth", "thermal", "video"]) {
      assert.equal(await page.textContent(`#counts .chip[data-modality=${m}] b`), "1", m);
    }
  });

  await t.test("adds a text item", async () => {
    await page.fill("#text-item", CAPTION);
    await page.click("#text-form button[type=submit]");
    await page.waitForSelector("#counts .chip[data-modality=text]");
    assert.equal(await page.textContent("#total"), "7");
  });

  await t.test("browses the collection with a preview per modality", async () => {
    await page.click("#browse");
    await page.waitForFunction(() => document.querySelectorAll("#results .card").length === 7);
    await page.waitForFunction(() => !document.querySelector("#results .loading"));
    assert.equal(await page.locator("#results .card[data-modality=audio] canvas.wave").count(), 1);
    assert.equal(await page.locator("#results .card[data-modality=audio] audio").count(), 1);
    assert.equal(await page.locator("#results .card[data-modality=imu] canvas.imu").count(), 1);
    assert.equal(await page.locator("#results .card[data-modality=depth] canvas.map").count(), 1);
    assert.equal(await page.locator("#results .card[data-modality=thermal] canvas.map").count(), 1);
    assert.equal(await page.locator("#results .card[data-modality=image] img").count(), 1);
    assert.equal(await page.locator("#results .card[data-modality=video] img").count(), 1);
    assert.match(await page.textContent("#results .card[data-modality=text] .snippet"), /red bicycle/);
    await shot("02-browse");
  });

  await t.test("text search ranks the stored text first", async () => {
    await search({ text: CAPTION });
    assert.equal(await firstCard().getAttribute("data-modality"), "text");
    assert.equal(await firstCard().locator(".score").textContent(), "1.000");
    assert.match(await firstCard().locator(".snippet").textContent(), /red bicycle/);
    await shot("03-text-search");
  });

  await t.test("search by an uploaded file ranks the same stored file first", async () => {
    await page.click("#clear-terms");
    await page.setInputFiles("#term-file", [files.audio]);
    await search();
    assert.equal(await firstCard().getAttribute("data-modality"), "audio");
    assert.equal(await firstCard().locator(".score").textContent(), "1.000");
    await shot("04-file-search");
  });

  await t.test("more like this, weighted terms and filters", async () => {
    await page.click("#clear-terms");
    await page.click("#results .card[data-modality=imu] button.more");
    await page.waitForSelector("#status:not(.loading)");
    await page.waitForFunction(() => document.querySelector("#results .card")?.dataset.modality === "imu");
    assert.equal(await firstCard().locator(".score").textContent(), "1.000");
    // IMU item (weight 1) + the caption with a negative weight: two terms, one query.
    await page.click("#add-text-term");
    await page.fill("#terms li:last-child input.grow", CAPTION);
    await search();
    assert.match(await page.textContent("#status"), /for 2 terms/);
    assert.equal(await firstCard().getAttribute("data-modality"), "imu");
    // Only images and thermal maps, then only the thermal map by its metadata.
    await page.$eval("details.filters", (d) => { d.open = true; });
    await page.check("#modality-filter input[value=image]");
    await page.check("#modality-filter input[value=thermal]");
    await search();
    const mods = await page.locator("#results .card").evaluateAll((els) => els.map((e) => e.dataset.modality));
    assert.deepEqual([...mods].sort(), ["image", "thermal"]);
    await page.fill("#meta-filter", '{"camera": "lwir"}');
    await search();
    assert.equal(await page.locator("#results .card").count(), 1);
    assert.equal(await firstCard().getAttribute("data-modality"), "thermal");
    await shot("05-weighted-filtered");
    await page.fill("#meta-filter", "");
    await page.uncheck("#modality-filter input[value=image]");
    await page.uncheck("#modality-filter input[value=thermal]");
  });

  await t.test("microphone recording becomes a WAV query", async () => {
    await page.click("#clear-terms");
    await page.click("#record");
    await page.waitForSelector("#record.recording");
    await page.waitForTimeout(1500);
    await page.click("#record");
    await page.waitForSelector("#terms li:has-text('recording-1.wav')");
    await search();
    assert.doesNotMatch(await page.getAttribute("#status", "class"), /error/);
    assert.ok((await page.locator("#results .card").count()) > 0);
  });

  await t.test("opens an item with its metadata and classifies it against typed labels", async () => {
    await page.click("#clear-terms");
    await page.click("#browse");
    await page.waitForFunction(() => document.querySelectorAll("#results .card").length === 7);
    await page.click("#results .card[data-modality=thermal] .preview");
    await page.waitForSelector("#detail[open] #detail-preview canvas.map");
    assert.match(await page.textContent("#detail-meta"), /"camera": "lwir"/);
    // The original, fetched with the key, behind an object URL; a PNG is shown, not downloaded.
    await page.waitForFunction(() => document.querySelector("#detail-open").href.startsWith("blob:"));
    const original = await page.$eval("#detail-open", async (a) => {
      const img = new Image();
      img.src = a.href;
      await img.decode();
      return { width: img.naturalWidth, height: img.naturalHeight, download: a.hasAttribute("download") };
    });
    assert.deepEqual(original, { width: 224, height: 224, download: false });
    await page.fill("#labels", "a person, a car, a dog");
    await page.click("#classify-form button[type=submit]");
    await page.waitForFunction(() => document.querySelectorAll("#classify-result li.bar").length === 3);
    const total = await page.locator("#classify-result .p").evaluateAll((els) =>
      els.reduce((s, e) => s + parseFloat(e.textContent), 0));
    assert.ok(Math.abs(total - 100) < 0.5, `probabilities sum to ${total} %`);
    await shot("06-detail-labels");
    await page.click("#detail-close");
  });

  await t.test("deletes an item", async () => {
    const card = page.locator("#results .card[data-modality=image]");
    await card.locator("button.delete").click();
    await page.waitForFunction(() => !document.querySelector("#results .card[data-modality=image]"));
    await page.waitForFunction(() => document.querySelector("#total")?.textContent === "6");
    assert.equal(await page.locator("#counts .chip[data-modality=image]").count(), 0);
  });

  await t.test("shows the server's error for a malformed upload", async () => {
    const bad = path.join(tmp, "bad-imu.csv");
    fs.writeFileSync(bad, "1,2,3\n4,5,6\n7,8,9\n");
    await page.setInputFiles("#file-input", [bad]);
    const row = page.locator('#uploads li[data-state="error"]');
    await row.waitFor();
    assert.match(await row.textContent(), /IMU: 3 columns; expected 6/);
    await shot("07-upload-error");
  });

  await t.test("shows the server's error for a bad query and an empty state", async () => {
    await page.$eval("details.filters", (d) => { d.open = true; });
    await page.fill("#meta-filter", '{"year": {"gte": "x"}}');
    await page.fill("#q", "anything");
    await page.click("#search-button");
    await page.waitForSelector("#status.error");
    assert.match(await page.textContent("#status"), /^Error: /);
    await page.fill("#meta-filter", '{"camera": "none such"}');
    await page.click("#search-button");
    await page.waitForSelector("#status.empty");
    await page.fill("#meta-filter", "");
  });

  await t.test("uploads files dropped at once and a whole folder", async () => {
    const done = () => page.locator('#uploads li[data-state="done"]').count();
    const before = await done();
    const png = [...fs.readFileSync(path.join(fixtures, "clip/images/png_tiny_31x17.png"))];
    const dt = await page.evaluateHandle((bytes) => {
      const d = new DataTransfer();
      d.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
      d.items.add(new File(["a note dropped with the picture"], "note.txt", { type: "text/plain" }));
      return d;
    }, png);
    await page.dispatchEvent("#drop", "drop", { dataTransfer: dt });
    await page.waitForFunction((n) =>
      document.querySelectorAll('#uploads li[data-state="done"]').length === n, before + 2);
    const folder = path.join(tmp, "trip");
    fs.mkdirSync(path.join(folder, "day1"), { recursive: true });
    fs.writeFileSync(path.join(folder, "day1", "diary.txt"), "walked along the river at dawn");
    fs.copyFileSync(files.audio, path.join(folder, "voice.wav"));
    // NumPy arrays: the page sends [6, T] as IMU and a map as depth.
    fs.copyFileSync(path.join(fixtures, "imagebind/imu/walk0_6x2000.npy"), path.join(folder, "day1", "walk.npy"));
    fs.copyFileSync(path.join(fixtures, "imagebind/depth/room0_224x224_m.npy"), path.join(folder, "room.npy"));
    await page.setInputFiles("#folder-input", folder);
    await page.waitForFunction((n) =>
      document.querySelectorAll('#uploads li[data-state="done"]').length === n, before + 6);
    assert.equal(await page.locator('#uploads .name[title="trip/day1/diary.txt"]').count(), 1);
    // The folder's audio file holds content already stored: reported as a duplicate.
    assert.match(await page.locator("#uploads li", { hasText: "trip/voice.wav" }).textContent(), /duplicate/);
    await page.waitForFunction(() => document.querySelector("#total")?.textContent === "11");
    await page.click("#browse");
    await page.waitForFunction(() => document.querySelectorAll("#results .card").length === 11);
    await page.waitForFunction(() => !document.querySelector("#results .loading"));
    assert.equal(await page.locator("#results .card[data-modality=imu] canvas.imu").count(), 2);
    assert.equal(await page.locator("#results .card[data-modality=depth] canvas.map").count(), 2);
    assert.equal(await page.locator("#results .placeholder.error").count(), 0);
    await shot("08-folder");
  });

  await t.test("works at phone width", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.click("#browse");
    await page.waitForFunction(() => document.querySelectorAll("#results .card").length === 11);
    await page.waitForFunction(() => !document.querySelector("#results .loading"));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than the screen`);
    await shot("09-phone");
  });

  await t.test("browses a larger collection a page at a time", async () => {
    const texts = Array.from({ length: 55 }, (_, i) => ({ text: `note number ${i}` }));
    const resp = await fetch(`${base}/v1/collections/demo/items`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${KEYS.admin}` },
      body: JSON.stringify({ items: texts }),
    });
    assert.equal(resp.status, 200);
    await page.click("#browse");
    await page.waitForSelector("#results .load-more");
    assert.equal(await page.locator("#results .card").count(), 60);
    await page.click("#results .load-more");
    await page.waitForFunction(() => document.querySelectorAll("#results .card").length === 66);
    assert.equal(await page.locator("#results .load-more").count(), 0);
    assert.match(await page.textContent("#status"), /^66 of \d+ items/);
  });

  await t.test("the read-only key searches, and its uploads are refused", async () => {
    await page.click("#key-button");
    await page.waitForSelector("#key-dialog[open]");
    await page.fill("#key-input", KEYS.read);
    await page.click("#key-form button[type=submit]");
    await page.waitForSelector("#key-dialog:not([open])", { state: "attached" });
    await page.waitForFunction(() => document.querySelector("#total")?.textContent === "66");
    await search({ text: CAPTION });
    assert.equal(await firstCard().getAttribute("data-modality"), "text");
    await page.setInputFiles("#file-input", [files.image]);
    const refused = page.locator('#uploads li[data-state="error"]', { hasText: "webp_lossy_333x333.webp" });
    await refused.waitFor();
    assert.match(await refused.textContent(), /read-only key cannot change data/);
  });

  assert.deepEqual(pageErrors, [], "no script errors in the page");
});

test("a server without keys never asks for one", async () => {
  const open = await startServer({
    tmpPrefix: "omnibind-e2e-open-",
    name: "imagebind",
    modelPath: path.join(fixtures, "imagebind/models/imagebind-tiny"),
    device: "cpu",
    timeoutMs: 120_000,
  });
  try {
    const p = await browser.newPage();
    await p.goto(open.base);
    await p.waitForSelector("#create-form:not([hidden])");
    assert.equal(await p.isVisible("#key-dialog"), false);
    assert.equal(await p.isVisible("#key-button"), false);
    await p.close();
  } finally {
    await open.stop();
  }
});
